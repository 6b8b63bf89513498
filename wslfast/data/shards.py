"""Webdataset tar shards from images + hashtags, for DALI's webdataset reader and the `webdataset` library.

Each sample is `<key>.jpg` (the original JPEG bytes; other image formats re-encoded to JPEG, quality 95),
`<key>.labels` (label ids, little-endian int32) and `<key>.json` ({"tags": as given, "image", "labels"}).
Each `shard-NNNNNN.tar` has a DALI index `shard-NNNNNN.idx` (format v1.2) and `manifest.json` describes
the whole set. Steps: read TAGS -> map tags to labels (images with none are dropped) -> decode-check every
image (unreadable or non-image files skipped and counted) -> drop near-duplicates of `dedup_against` ->
label noise -> resampling copies -> shuffle keys -> shards.

Streaming, at any size: the work goes by blocks of TAGS lines (pipeline.py), and the global numbers the
steps need come from counting passes, so no process ever holds all records: pass 1 checks every block and
counts skips and the label marginal; a noise pass counts the noisy-label marginal (label noise > 0); a
weight pass sums the resampling weights (sqrt / uniform); a plan pass counts the samples of each shard;
the write pass writes the missing shards. Every random draw (noise, copies, the shuffle key) is a hash of
(seed, record key), and a sample's shard is the bucket of its shuffle key among S = ceil(images /
shard_size) buckets, so each shard is a uniform random sample of the corpus, of about shard_size samples
(Poisson-spread; empty buckets get no shard), sorted by shuffle key. The output bytes are a pure function
of the inputs and settings: 1 worker, N workers or a Ray cluster write the same shards.

Resume: a shard's .idx is written first and its .tar renamed into place last. A re-run with the same inputs
and settings (a fingerprint hash-streamed over the checked records) keeps each finished shard that
`verify_shard` accepts and writes only the others; anything changed rebuilds from scratch. Decode-check
results are cached per block in out/.work (by path, size and mtime), so a re-run decodes only new or
changed images.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from . import dedup as _dedup
from .engines import make_engine
from .pipeline import SKIP_KINDS, Job, check_image, noise_block, plan_block, stem_of, weight_block
from .shardio import verify_shard
from .tagfiles import expand_inputs
from .targets import SAMPLING_MODES
from .vocab import HashtagVocabulary

__all__ = ["write_shards", "list_shards", "read_manifest", "check_image", "dataset_name", "verify_shard",
           "MANIFEST"]

MANIFEST = "manifest.json"
_STATE = ".build-state.json"
_WORK = ".work"
_FORMAT = "wslfast-shards"
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


def _clear(out: Path) -> None:
    (out / MANIFEST).unlink(missing_ok=True)
    for p in out.glob("shard-*"):
        p.unlink()
    for p in out.glob(".shard-*.tmp"):
        p.unlink()


def write_shards(images_dir, tags_path, vocab, out_dir, shard_size: int = 1000, label_noise: float = 0.0,
                 sampling: str = "natural", dedup_against=None, workers: int = 1, seed: int = 0,
                 name: str | None = None, dedup_radius: int = _dedup.DEFAULT_RADIUS, role: str = "train",
                 source: str | None = None, progress: bool = False, ray_address: str | None = None,
                 engine=None) -> dict:
    """Build the shards (see module docstring); returns the manifest (also out_dir/manifest.json).
    tags_path: a TAGS file, a glob, or a list of them (compressed ones too). workers > 1 or ray_address
    (or RAY_ADDRESS) run on Ray; out_dir must then be a folder every Ray node sees."""
    if isinstance(vocab, (str, os.PathLike)):
        vocab = HashtagVocabulary.load(vocab)
    if not isinstance(vocab, HashtagVocabulary):
        raise TypeError("write_shards: vocab must be a HashtagVocabulary or the path of a saved one")
    if shard_size < 1:
        raise ValueError(f"write_shards: shard_size must be >= 1, got {shard_size}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"write_shards: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"write_shards: label_noise must be in [0, 1], got {label_noise}")
    if workers < 1:
        raise ValueError(f"write_shards: workers must be >= 1, got {workers}")
    images_dir, out = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"write_shards: images folder {images_dir} does not exist")
    paths = expand_inputs(tags_path)
    out.mkdir(parents=True, exist_ok=True)
    work = out / _WORK
    work.mkdir(exist_ok=True)
    vocab_dict = vocab.to_dict()
    vocab_digest = hashlib.sha256(json.dumps(vocab_dict, sort_keys=True).encode()).hexdigest()

    index, ref_unreadable, ref_digest = None, 0, None
    if dedup_against is not None:
        ref, ref_unreadable = _dedup.hash_directory(dedup_against, workers)
        ref_digest = hashlib.sha256(np.sort(ref).tobytes()).hexdigest()
        index = _dedup.HashIndex(ref, dedup_radius)
    job = Job(images_dir=str(images_dir), work_dir=str(work), out_dir=str(out), vocab=vocab,
              vocab_digest=vocab_digest, num_classes=len(vocab), seed=seed, label_noise=label_noise,
              sampling=sampling, index=index)

    with (engine or make_engine(workers, ray_address, progress)) as eng:
        eng.put(job)
        # Pass 1: check every block; the driver only adds up counts.
        skipped = dict.fromkeys(SKIP_KINDS, 0)
        marginal = np.zeros(len(vocab), dtype=np.int64)
        records = num_images = reencoded = 0
        acc, blocks, fmts, seen = 0, [], set(), set()  # acc: order-free sum of the blocks' digests
        for s in _progress(eng.check(paths), progress, "check"):
            records += s["records"]
            num_images += s["good"]
            reencoded += s["reencoded"]
            fmts.add(s["fmt"])
            for k, v in s["skipped"].items():
                skipped[k] += v
            np.add.at(marginal, np.asarray(s["marginal"][0], dtype=np.int64), np.asarray(s["marginal"][1]))
            acc = (acc + int(hashlib.sha256(f"{s['block']}:{s['digest']}".encode()).hexdigest(), 16)) % (1 << 256)
            seen.add("{:04d}-{:06d}".format(*s["block"]))
            if s["good"]:
                blocks.append(tuple(s["block"]))
        blocks.sort()
        for p in work.glob("*-*-*.json"):  # blocks of inputs that are gone (e.g. a shorter TAGS file)
            if p.stem.split("-", 1)[-1] not in seen:
                p.unlink()
        if not num_images:
            raise ValueError(f"write_shards: no usable image left (skipped: {skipped})")
        num_buckets = max(1, math.ceil(num_images / shard_size))
        if num_buckets >= 1 << 31:
            raise ValueError("write_shards: shard_size too small for this many images")

        settings = {"version": _VERSION, "images": str(images_dir.resolve()), "vocab": vocab_digest,
                    "shard_size": shard_size, "noise": label_noise, "sampling": sampling, "seed": seed,
                    "dedup": ref_digest, "radius": dedup_radius if index is not None else None,
                    "num_buckets": num_buckets}
        fp = hashlib.sha256((json.dumps(settings, sort_keys=True) + f":{acc:064x}").encode()).hexdigest()[:16]
        state_path = out / _STATE
        try:
            resume = json.loads(state_path.read_text()).get("fingerprint") == fp
        except (OSError, ValueError, AttributeError):
            resume = False
        if not resume:  # a different build: clear what an earlier one left
            _clear(out)
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(json.dumps({"fingerprint": fp}))
            os.replace(tmp, state_path)

        # Counting passes: noisy-label marginal, resampling weight total, samples per bucket.
        job.clean_marginal, job.num_images, job.num_buckets = marginal, num_images, num_buckets
        job.noisy_marginal = marginal
        if label_noise > 0:
            eng.put(job)
            job.noisy_marginal = sum(_progress(eng.map(noise_block, blocks), progress, "noise", len(blocks)))
        if sampling != "natural":
            eng.put(job)
            job.weight_total = sum(_progress(eng.map(weight_block, blocks), progress, "weights", len(blocks)))
        eng.put(job)
        bucket_counts = np.zeros(num_buckets, dtype=np.int64)
        label_counts = np.zeros(len(vocab), dtype=np.int64)
        for r in _progress(eng.map(plan_block, blocks), progress, "plan", len(blocks)):
            np.add.at(bucket_counts, np.asarray(r["buckets"][0], dtype=np.int64), np.asarray(r["buckets"][1]))
            label_counts += r["labels"]
        nonempty = np.flatnonzero(bucket_counts)
        if nonempty.size == 0:
            raise ValueError("write_shards: resampling left no sample")
        shards, todo = [], np.full(num_buckets, -1, dtype=np.int64)  # bucket -> shard number to write
        for k, b in enumerate(nonempty.tolist()):
            stem, n = stem_of(k), int(bucket_counts[b])
            shards.append({"tar": f"{stem}.tar", "index": f"{stem}.idx", "num_samples": n})
            if not (resume and verify_shard(out / f"{stem}.tar", n)):
                todo[b] = k
        for p in out.glob("shard-*"):  # shards a smaller earlier plan left over
            num = p.name.split(".")[0].split("-")[-1]
            if not num.isdigit() or int(num) >= len(shards):
                p.unlink()

        # Write pass: only the missing shards.
        job.stems = todo
        if (todo >= 0).any():
            eng.put(job)
            for stem, n in _progress(eng.write(blocks), progress, "write", int((todo >= 0).sum())):
                if progress:
                    print(f"wrote {stem}.tar ({n} samples)", flush=True)

    for p in work.glob("part-*.jsonl"):
        p.unlink()
    source = source or ("YFCC" if fmts == {"yfcc"} else "local")
    num_samples = int(bucket_counts.sum())
    manifest = {
        "format": _FORMAT, "version": 1, "name": name or dataset_name(role, source, num_samples, len(vocab)),
        "num_samples": num_samples, "num_images": num_images, "num_classes": len(vocab),
        "tags_format": ",".join(sorted(fmts)), "tags": paths, "records": records, "skipped": skipped,
        "reencoded": reencoded, "dedup_against": str(dedup_against) if dedup_against else None,
        "dedup_radius": dedup_radius, "dedup_reference_unreadable": ref_unreadable, "label_noise": label_noise,
        "sampling": sampling, "seed": seed, "shard_size": shard_size, "shards": shards,
        "label_counts": label_counts.tolist(), "image_label_counts": job.noisy_marginal.tolist(),
        "fingerprint": fp, "vocab": vocab_dict,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(path) -> dict:
    """The manifest of a shard folder (or of the folder holding the given shard)."""
    p = Path(path)
    p = p / MANIFEST if p.is_dir() else (p if p.name == MANIFEST else p.parent / MANIFEST)
    with open(p, encoding="utf-8") as f:
        m = json.load(f)
    if m.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a wslfast shard manifest")
    return m


def list_shards(dir) -> list[str]:
    """Whole shards of a folder, sorted: .tar files with their .idx (temporary files never count)."""
    d = Path(dir)
    if not d.is_dir():
        raise FileNotFoundError(f"list_shards: {d} is not a folder")
    return [str(p) for p in sorted(d.glob("*.tar")) if not p.name.startswith(".") and p.with_suffix(".idx").is_file()]
