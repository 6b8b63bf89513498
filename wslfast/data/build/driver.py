"""The build's driver: `write_shards`, images + hashtags -> a folder of shards (the format: ../format.py).

Each sample is `<key>.jpg` (the original JPEG bytes; other image formats re-encoded to JPEG, quality 95),
`<key>.labels` (label ids, little-endian int32) and `<key>.json` ({"tags": as given, "image", "labels"}).
Each `shard-NNNNNN.tar` has a DALI index `shard-NNNNNN.idx` (format v1.2) and `manifest.json` describes
the whole set. Steps: read TAGS -> map tags to labels (images with none are dropped) -> read, check and, if
needed, re-encode every image under one guard (images.py; failures skipped and counted by reason, with
examples) -> drop near-duplicates of `dedup_against` ->
label noise -> resampling copies -> shuffle keys -> shards.

Streaming, at any size: the work goes by the source's blocks (passes.py), and the global numbers the
steps need come from counting passes, so no process ever holds all records: pass 1 checks every block and
counts skips and the label marginal; a noise pass counts the noisy-label marginal (label noise > 0); a
weight pass sums the resampling weights (sqrt / uniform); a plan pass counts the samples of each shard;
the write pass writes the missing shards. Every random draw (noise, copies, the shuffle key) is a hash of
(seed, record key), and a sample's shard is the bucket of its shuffle key among S = ceil(images /
shard_size) buckets, so each shard is a uniform random sample of the corpus, of about shard_size samples
(Poisson-spread; empty buckets get no shard), sorted by shuffle key. The output bytes are a pure function
of the inputs and settings: 1 worker, N workers or a Ray cluster write the same shards.

Publishing (publish.py): the shards go into a version folder named by the build's fingerprint (a hash of
the settings and of the checked records, hash-streamed), out/shards-<fp>/, and out/manifest.json, which names
the current version, is swapped in with one os.replace when every shard is whole; then the other versions
are removed. So the last good dataset stays whole and readable through any failure or kill, and a lock
(out/.build.lock) keeps a second build out of the same folder. Resume: a shard's .idx is written first
and its .tar renamed into place last; a re-run with the same inputs and settings finds its version folder
(the published one, or one a killed build left), keeps each shard `verify_shard` accepts and writes only
the others; anything changed writes a new version. Decode-check results are cached per block in
out/.work (by path, size and mtime), so a re-run decodes only new or changed images.

write_shards reads top to bottom as its steps: `_inputs` (check the arguments), the lock,
`_reference_index` (dedup), `_check_pass`, `stage_version` (this build's folder), `_counting_passes`,
`_layout` (which shards to write), the write pass, `_manifest`, `publish`. Time: one decode per image (cached
across runs) plus a few cheap passes over the checked records; driver memory: the label marginal, the
per-bucket counts and one block's results (times the engine's tasks in flight).

What becomes labels (`kind`, labelling.py): "tags" (the hashtags; senses from the other tags when the
vocabulary is WordNet's, `tag_senses="first"` for the plain most-frequent-sense lookup) or "caption" (the
record's text, e.g. a webdataset caption); default: caption for webdataset inputs, tags otherwise. Target
weights (`target_weights`): "uniform" (1/k) or "idf" (SuperClass: the manifest's `class_weights`, ln(N /
df_j), which the loaders turn into per-sample weights); they change the manifest, not the shards. Sampling
"cap" (MetaCLIP: `cap` = t) keeps each image of a label above t images with probability t / n.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ..format import MANIFEST_FORMAT, shard_stem, verify_shard
from ..labels.vocab import HashtagVocabulary
from ..sources import Source, TagFiles, WebDataset, expand_inputs
from ..sources.webdataset import KINDS as WEB_KINDS
from . import dedup as _dedup
from . import images as _images
from .engines import make_engine
from .labelling import RecordLabeller, release_taggers
from .passes import SKIP_KINDS, Job, noise_block, plan_block, weight_block
from .publish import BuildLock, publish, stage_version
from .targets import DEFAULT_CAP, SAMPLING_MODES, TARGET_WEIGHTS, idf_class_weights

__all__ = ["write_shards", "dataset_name"]

_WORK = ".work"
_VERSION = 2


def dataset_name(role: str, source: str, num_images: int, num_labels: int) -> str:
    """The paper's role-source-I-L name, e.g. train-IG-1M-17k."""
    def short(n: int) -> str:
        for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
            if n >= div:
                return f"{n / div:.1f}".rstrip("0").rstrip(".") + suffix
        return str(n)
    return f"{role}-{source}-{short(num_images)}-{short(num_labels)}"


def _progress(it, progress: bool, desc: str, total=None):
    if not progress:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="block" if total is None or desc != "write" else "shard",
                mininterval=2.0)


def write_shards(images_dir, tags_path, vocab, out_dir, shard_size: int = 1000, label_noise: float = 0.0,
                 sampling: str = "natural", dedup_against=None, workers: int = 1, seed: int = 0,
                 name: str | None = None, dedup_radius: int = _dedup.DEFAULT_RADIUS, role: str = "train",
                 source: str | None = None, progress: bool = False, ray_address: str | None = None,
                 engine=None, max_pixels: int = _images.DEFAULT_MAX_PIXELS, follow_symlinks: bool = False,
                 kind: str | None = None, tag_senses: str = "context", target_weights: str = "uniform",
                 cap: int = DEFAULT_CAP) -> dict:
    """Build the shards (see module docstring); returns the published manifest (out_dir/manifest.json).
    tags_path: a TAGS file, a glob, or a list of them (compressed ones too), or any sources.Source.
    images_dir: None for a source whose images are inside its inputs (sources.WebDataset).
    engine: "local", "pool", "ray" or an engine object; by default workers > 1 runs a process pool of this
    machine and ray_address (a cluster's HOST:PORT, or "auto" for $RAY_ADDRESS) runs on Ray, with out_dir a
    folder every Ray node sees. source: the dataset's source in its name (default YFCC, web or local).
    max_pixels: images above it are skipped (from their header); follow_symlinks: let symlinks in the images
    folder lead outside it. RunFolderError when another build is writing into out_dir."""
    vocab, images_dir, out, records = _inputs(images_dir, tags_path, vocab, out_dir, shard_size, label_noise,
                                              sampling, workers)
    labeller = _labeller(vocab, records, kind, tag_senses, target_weights, sampling, cap)
    eng = engine if engine is not None and not isinstance(engine, str) else make_engine(workers, ray_address,
                                                                                         progress, engine)
    with BuildLock(out):  # one build at a time in out (the kernel releases it if this process is killed)
        paths = records.paths
        work = out / _WORK
        work.mkdir(exist_ok=True)
        vocab_dict = vocab.to_dict()
        vocab_digest = hashlib.sha256(json.dumps(vocab_dict, sort_keys=True).encode()).hexdigest()
        index, ref_unreadable, ref_digest = _reference_index(dedup_against, dedup_radius, workers)
        job = Job(source=records, images_dir=str(images_dir) if images_dir is not None else "", work_dir=str(work),
                  out_dir=str(out), vocab=vocab, vocab_digest=vocab_digest, num_classes=len(vocab), seed=seed,
                  label_noise=label_noise, sampling=sampling, index=index,
                  image_policy=_image_policy(max_pixels, follow_symlinks), labeller=labeller, cap=cap)

        with eng:
            checked = _check_pass(eng, job, progress)
            num_buckets = max(1, math.ceil(checked.num_images / shard_size))
            if num_buckets >= 1 << 31:
                raise ConfigError("write_shards: shard_size too small for this many images")
            settings = {"version": _VERSION, "images": str(images_dir.resolve()) if images_dir is not None else None,
                        "vocab": vocab_digest, "shard_size": shard_size, "noise": label_noise, "sampling": sampling,
                        "seed": seed, "dedup": ref_digest, "radius": dedup_radius if index is not None else None,
                        "num_buckets": num_buckets, "labels": labeller.describe(),
                        "cap": cap if sampling == "cap" else None}
            fp = hashlib.sha256((json.dumps(settings, sort_keys=True) + f":{checked.digest:064x}").encode()
                                ).hexdigest()[:16]
            stage, resume = stage_version(out, fp)
            job.out_dir = str(stage)
            job.clean_marginal, job.num_images, job.num_buckets = checked.marginal, checked.num_images, num_buckets
            bucket_counts, label_counts = _counting_passes(eng, job, checked.blocks, progress)
            shards, job.stems = _layout(stage, bucket_counts, resume)
            if (job.stems >= 0).any():  # the write pass: only the missing shards
                eng.put(job)
                for stem, n in _progress(eng.write(checked.blocks), progress, "write", int((job.stems >= 0).sum())):
                    if progress:
                        print(f"wrote {stem}.tar ({n} samples)", flush=True)

        release_taggers()  # the WordNet tables are not needed past the check pass (a demo trains in this process)
        for p in work.glob("part-*.jsonl"):
            p.unlink()
        source = source or ("YFCC" if checked.formats == {"yfcc"} else
                            "web" if checked.formats and checked.formats <= set(WEB_KINDS) else "local")
        num_samples = int(bucket_counts.sum())
        manifest = _manifest(name or dataset_name(role, source, num_samples, len(vocab)), job, checked, paths,
                             shards, bucket_counts, label_counts, fp, vocab_dict,
                             dict(dedup_against=str(dedup_against) if dedup_against else None,
                                  dedup_radius=dedup_radius, dedup_reference_unreadable=ref_unreadable,
                                  label_noise=label_noise, sampling=sampling, seed=seed, shard_size=shard_size,
                                  max_pixels=max_pixels, follow_symlinks=follow_symlinks,
                                  **_label_options(labeller, sampling, cap, target_weights, job, checked)))
        return publish(out, stage, manifest)


def _inputs(images_dir, tags_path, vocab, out_dir, shard_size, label_noise, sampling, workers):
    """The arguments checked: (vocabulary, images folder, out folder (created), the Source of records)."""
    if isinstance(vocab, (str, os.PathLike)):
        vocab = HashtagVocabulary.load(vocab)
    if not isinstance(vocab, HashtagVocabulary):
        raise TypeError("write_shards: vocab must be a HashtagVocabulary or the path of a saved one")
    if shard_size < 1:
        raise ConfigError(f"write_shards: shard_size must be >= 1, got {shard_size}")
    if sampling not in SAMPLING_MODES:
        raise ConfigError(f"write_shards: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise ConfigError(f"write_shards: label_noise must be in [0, 1], got {label_noise}")
    if workers < 1:
        raise ConfigError(f"write_shards: workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if images_dir is None and not isinstance(tags_path, Source):
        raise ConfigError("write_shards: an images folder is needed for TAGS files (only sources whose images "
                          "are inside their inputs, such as webdataset tars, go without)")
    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise FileNotFoundError(f"write_shards: images folder {images_dir} does not exist")
    records = tags_path if isinstance(tags_path, Source) else TagFiles(expand_inputs(tags_path), images_dir)
    out.mkdir(parents=True, exist_ok=True)
    return vocab, images_dir, out, records


def _image_policy(max_pixels, follow_symlinks) -> _images.ImagePolicy:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ConfigError(f"write_shards: max_pixels must be a whole number >= 1, got {max_pixels!r}")
    return _images.ImagePolicy(int(max_pixels), bool(follow_symlinks))


def _labeller(vocab, source, kind, tag_senses, target_weights, sampling, cap) -> RecordLabeller:
    """The record labeller of the build (labelling.py), after the label options are checked."""
    if target_weights not in TARGET_WEIGHTS:
        raise ConfigError(f"write_shards: target_weights must be one of {TARGET_WEIGHTS}, got {target_weights!r}")
    if sampling == "cap" and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
        raise ConfigError(f"write_shards: cap must be a whole number >= 1, got {cap!r}")
    if kind is None:
        kind = "caption" if isinstance(source, WebDataset) else "tags"
    try:
        return RecordLabeller(vocab, kind, tag_senses)
    except ValueError as e:
        raise ConfigError(f"write_shards: {e}") from None


def _label_options(labeller, sampling, cap, target_weights, job, checked) -> dict:
    """The manifest's fields about labels: what they were read from, the cap, the target weights."""
    out = {"labels_from": labeller.describe(), "cap": int(cap) if sampling == "cap" else None,
           "target_weights": target_weights}
    if target_weights == "idf":  # ln(N / df_j) over the images (after noise, before resampling)
        df = np.minimum(job.noisy_marginal, checked.num_images)
        out["class_weights"] = [round(float(w), 6) for w in idf_class_weights(df, checked.num_images)]
    return out


def _reference_index(dedup_against, radius: int, workers: int):
    """(HashIndex of the reference images or None, how many were unreadable, digest of their hashes)."""
    if dedup_against is None:
        return None, 0, None
    ref, unreadable = _dedup.hash_directory(dedup_against, workers)
    return _dedup.HashIndex(ref, radius), unreadable, hashlib.sha256(np.sort(ref).tobytes()).hexdigest()


@dataclass
class _Checked:
    """What pass 1 adds up over the blocks (never the records themselves)."""
    num_classes: int
    records: int = 0
    num_images: int = 0
    reencoded: int = 0
    skipped: dict = field(default_factory=lambda: dict.fromkeys(SKIP_KINDS, 0))
    marginal: np.ndarray = None
    formats: set = field(default_factory=set)
    blocks: list = field(default_factory=list)  # (file, block) of the blocks with usable records, sorted
    examples: dict = field(default_factory=dict)  # skip reason -> its first few cases (images.merge_examples)
    digest: int = 0  # order-free sum of the blocks' digests: the fingerprint of the checked records

    def __post_init__(self):
        self.marginal = np.zeros(self.num_classes, dtype=np.int64)


def _check_pass(eng, job: Job, progress: bool) -> _Checked:
    """Pass 1: every block checked by the engine; the driver only adds up counts. Drops the cached work of
    blocks that no longer exist (e.g. a shorter TAGS file)."""
    eng.put(job)
    c, seen = _Checked(job.num_classes), set()
    for s in _progress(eng.check(job.source), progress, "check"):
        c.records += s["records"]
        c.num_images += s["good"]
        c.reencoded += s["reencoded"]
        if s["fmt"] != "empty":  # an input with no line (counted as skipped.empty_file) has no format
            c.formats.add(s["fmt"])
        for k, v in s["skipped"].items():
            c.skipped[k] += v
        np.add.at(c.marginal, np.asarray(s["marginal"][0], dtype=np.int64), np.asarray(s["marginal"][1]))
        _images.merge_examples(c.examples, s["examples"], s["block"][0], job.source.paths[s["block"][0]])
        c.digest = (c.digest + int(hashlib.sha256(f"{s['block']}:{s['digest']}".encode()).hexdigest(), 16)) % (1 << 256)
        seen.add("{:04d}-{:06d}".format(*s["block"]))
        if s["good"]:
            c.blocks.append(tuple(s["block"]))
    c.blocks.sort()
    for p in Path(job.work_dir).glob("*-*-*.*"):  # check-, good-, enc- files (and temporaries) of the block
        if p.stem.split("-", 1)[-1] not in seen:
            p.unlink()
    if not c.num_images:
        raise DataError(f"write_shards: no usable image left (skipped: {c.skipped})")
    return c


def _counting_passes(eng, job: Job, blocks, progress: bool):
    """The noisy-label marginal (label noise > 0), the resampling weight total (sqrt / uniform), then the
    plan: (samples per bucket, samples per label). Each pass sees the previous one's totals in the job."""
    job.noisy_marginal = job.clean_marginal
    if job.label_noise > 0:
        eng.put(job)
        job.noisy_marginal = sum(_progress(eng.map(noise_block, blocks), progress, "noise", len(blocks)))
    if job.sampling in ("sqrt", "uniform"):
        eng.put(job)
        job.weight_total = sum(_progress(eng.map(weight_block, blocks), progress, "weights", len(blocks)))
    eng.put(job)
    bucket_counts = np.zeros(job.num_buckets, dtype=np.int64)
    label_counts = np.zeros(job.num_classes, dtype=np.int64)
    for r in _progress(eng.map(plan_block, blocks), progress, "plan", len(blocks)):
        np.add.at(bucket_counts, np.asarray(r["buckets"][0], dtype=np.int64), np.asarray(r["buckets"][1]))
        label_counts += r["labels"]
    return bucket_counts, label_counts


def _layout(out: Path, bucket_counts: np.ndarray, resume: bool):
    """The shards (one per non-empty bucket, numbered in bucket order) for the manifest, and bucket ->
    shard number to write (-1: empty, or kept because verify_shard accepts it). out: this build's version
    folder. Removes the shards beyond the plan (none unless someone put them there)."""
    nonempty = np.flatnonzero(bucket_counts)
    if nonempty.size == 0:
        raise DataError("write_shards: resampling left no sample")
    shards, todo = [], np.full(bucket_counts.size, -1, dtype=np.int64)
    for k, b in enumerate(nonempty.tolist()):
        stem, n = shard_stem(k), int(bucket_counts[b])
        shards.append({"tar": f"{stem}.tar", "index": f"{stem}.idx", "num_samples": n})
        if not (resume and _is_whole(out / f"{stem}.tar", n)):
            todo[b] = k
    for p in out.glob("shard-*"):
        num = p.name.split(".")[0].split("-")[-1]
        if not num.isdigit() or int(num) >= len(shards):
            p.unlink()
    return shards, todo


def _is_whole(tar: Path, num_samples: int) -> bool:
    try:
        verify_shard(tar, num_samples, full=True)
    except DataError:
        return False
    return True


def _manifest(name: str, job: Job, checked: _Checked, paths, shards, bucket_counts, label_counts, fingerprint,
              vocab_dict, options: dict) -> dict:
    """The manifest.json of a finished build (the format's fields, in the order a reader meets them);
    options: the build's settings as the user gave them (dedup, noise, sampling, seed, shard size)."""
    return {
        "format": MANIFEST_FORMAT, "version": 1, "name": name, "num_samples": int(bucket_counts.sum()),
        "num_images": checked.num_images, "num_classes": job.num_classes,
        "tags_format": ",".join(sorted(checked.formats)), "tags": paths, "records": checked.records,
        "skipped": checked.skipped, "skip_examples": _images.manifest_examples(checked.examples),
        "reencoded": checked.reencoded, **options, "shards": shards,
        "label_counts": label_counts.tolist(), "image_label_counts": job.noisy_marginal.tolist(),
        "fingerprint": fingerprint, "vocab": vocab_dict,
    }
