"""The per-block steps of the shard build, shared by every engine (see driver.py for the order of passes).

Work is cut into the source's blocks (BLOCK_LINES items of one input), so every step holds one block at a time:
- `check_block`: items -> records -> labels (tags or caption: labelling.py) -> each image read, checked, pHashed and (if needed) re-encoded
  under one guard (images.py; results cached by path, size, mtime in `.work/check-F-B.json`, re-encoded
  JPEGs kept in `.work/enc-F-B.bin`) -> dedup lookup; writes the block's usable records to
  `.work/good-F-B.json` and returns counts (skips by reason with examples, label marginal) for the driver;
- `noise_block`, `weight_block`, `plan_block`: counting passes over the good records (noisy-label marginal,
  resampling weight total, samples per shard bucket);
- `expand_block`: a block's samples (noisy labels, copies), each with its shuffle key and shard bucket;
- `write_bucket`: one shard from its samples, sorted by shuffle key; it copies bytes check_block proved.
All randomness is a hash of (seed, record key), so the output never depends on which process ran what.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..format import shard_stem, write_shard
from ..sources import Block, record_key
from . import images as _images
from .targets import STREAM_SHUFFLE, cap_keep_hashed, copies_hashed, hash64, noisy_labels_hashed, weights_fixed

__all__ = ["Job", "check_block", "noise_block", "weight_block", "plan_block", "expand_block",
           "write_bucket", "SKIP_KINDS"]

SKIP_KINDS = ("bad_record", "video", "missing", "out_of_vocabulary", "not_image", "corrupt", "duplicate",
              "bad_encoding", "empty_file", "not_in_subset")  # the last three: sources' skips (tagfiles, yfcc)
SKIP_KINDS += _images.SKIPS  # the image guard's other reasons (images.py)
SKIP_KINDS += ("not_downloaded", "bad_tar")  # webdataset / img2dataset inputs (sources/webdataset.py)


@dataclass
class Job:
    """Everything a block step needs; pickled once and shared with every worker."""
    source: object  # sources.Source: where the records come from
    images_dir: str
    work_dir: str
    out_dir: str
    vocab: object  # HashtagVocabulary
    vocab_digest: str
    num_classes: int
    seed: int = 0
    label_noise: float = 0.0
    sampling: str = "natural"
    index: object = None  # dedup.HashIndex of the reference hashes, or None
    image_policy: _images.ImagePolicy = _images.ImagePolicy()  # pixel limit, symlinks (images.py)
    labeller: object = None  # labelling.RecordLabeller, or None: the hashtags' plain lookup (vocab.label_of)
    cap: int = 0  # sampling "cap": MetaCLIP's per-label threshold t
    # filled in by the driver between passes
    clean_marginal: np.ndarray | None = None
    noisy_marginal: np.ndarray | None = None
    num_images: int = 0
    weight_total: int = 0
    num_buckets: int = 1
    stems: np.ndarray | None = None  # bucket -> shard number for the buckets to write, -1 for the others


def _bid(fi: int, bi: int) -> str:
    return f"{fi:04d}-{bi:06d}"


def _atomic_json(path: Path, obj) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def _load_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def check_block(job: Job, block: Block) -> dict:
    """Pass 1 over one block (see module docstring); returns its counts."""
    fi, bi, fmt = block.file_no, block.block_no, block.kind
    images = Path(job.images_dir) if job.images_dir else None  # None: the source's images are tar members
    work = Path(job.work_dir)
    want_hash = job.index is not None
    skipped = dict.fromkeys(SKIP_KINDS, 0)
    h = hashlib.sha256(f"{job.vocab_digest}\0{fmt}\0{images.resolve() if images else ''}\0".encode())
    h.update(job.image_policy.key().encode())
    for item in block.items:
        h.update(item.encode("utf-8", "surrogateescape") if isinstance(item, str) else bytes(item))
    in_digest = h.hexdigest()
    cache_path = work / f"check-{_bid(fi, bi)}.json"
    cache = _load_json(cache_path)
    old = cache["rows"] if isinstance(cache, dict) and cache.get("digest") == in_digest else {}
    records = 0
    label_of: dict = {}  # tags repeat a lot: normalize each once per block

    def labels_of(tags):
        out = []
        for t in tags:
            if t not in label_of:
                label_of[t] = job.vocab.label_of(t)
            lab = label_of[t]
            if lab is not None and lab not in out:
                out.append(lab)
        return out

    imgs = _images.BlockImages(images, work, _bid(fi, bi), job.image_policy, want_hash, old)
    cand = []  # (key, image, labels, stored: [offset, size] of its re-encoded JPEG or None, tags, meta, stat, phash)
    for n, r in job.source.records(block):
        records += 1
        if r.skip:
            skipped[r.skip] += 1
            continue
        labels = labels_of(r.tags) if job.labeller is None or job.labeller.mode == "lookup" else job.labeller(r)
        if not labels:
            skipped["out_of_vocabulary"] += 1
            continue
        reason, image, stored, st, ph = imgs.check(n, r.image)
        if reason:
            skipped[reason] += 1
        else:
            cand.append((record_key(fi, n), image, labels, stored, r.tags, r.meta, st, ph))
    fresh, changed = imgs.finish()
    if changed or len(fresh) != len(old):
        _atomic_json(cache_path, {"digest": in_digest, "rows": fresh})
    if want_hash and cand:
        dup = job.index.contains_near(np.array([c[7] for c in cand], dtype=np.uint64))
        skipped["duplicate"] = int(dup.sum())
        cand = [c for c, d in zip(cand, dup) if not d]
    rows = [list(c[:7]) for c in cand]
    data = _atomic_json(work / f"good-{_bid(fi, bi)}.json", {"rows": rows})
    flat = [l for c in cand for l in c[2]]
    labels, counts = np.unique(np.asarray(flat, dtype=np.int64), return_counts=True)
    return {"block": [fi, bi], "fmt": fmt, "records": records, "skipped": skipped, "good": len(rows),
            "reencoded": int(sum(c[3] is not None for c in cand)), "marginal": [labels.tolist(), counts.tolist()],
            "digest": hashlib.sha256(data).hexdigest(), "examples": imgs.examples}


def _load_good(job: Job, block) -> list:
    obj = _load_json(Path(job.work_dir) / f"good-{_bid(*block)}.json")
    if obj is None:
        raise FileNotFoundError(f"{job.work_dir}: the checked records of block {_bid(*block)} are missing "
                                f"(was .work removed during the build?)")
    return obj["rows"]


def _labels(job: Job, rows):
    """(keys uint64, flat labels after noise, lengths) of a block's good records."""
    keys = np.array([r[0] for r in rows], dtype=np.uint64)
    lengths = np.array([len(r[2]) for r in rows], dtype=np.int64)
    flat = np.fromiter((l for r in rows for l in r[2]), dtype=np.int64, count=int(lengths.sum()))
    if job.label_noise > 0:
        owner = np.repeat(keys, lengths)
        slot = np.arange(flat.size, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = noisy_labels_hashed(flat, owner, slot, job.label_noise, job.clean_marginal, job.seed)
    return keys, flat, lengths


def noise_block(job: Job, block) -> np.ndarray:
    """Marginal of the noisy labels of a block (dense int64 [num_classes])."""
    _, flat, _ = _labels(job, _load_good(job, block))
    return np.bincount(flat, minlength=job.num_classes)


def weight_block(job: Job, block) -> int:
    """Sum of the block's fixed-point resampling weights."""
    _, flat, lengths = _labels(job, _load_good(job, block))
    return int(weights_fixed(flat, lengths, job.noisy_marginal, job.sampling).sum()) if lengths.size else 0


def _samples(job: Job, rows):
    """Per sample: (record index, copy number, shuffle key, bucket), plus the noisy labels (flat, lengths)."""
    keys, flat, lengths = _labels(job, rows)
    if job.sampling == "natural":
        copies = np.ones(keys.size, dtype=np.int64)
    elif job.sampling == "cap":
        copies = cap_keep_hashed(keys, flat, lengths, job.noisy_marginal, job.cap, job.seed)
    else:
        w = weights_fixed(flat, lengths, job.noisy_marginal, job.sampling)
        copies = copies_hashed(keys, w, job.num_images, job.weight_total, job.seed)
    rec = np.repeat(np.arange(keys.size), copies)
    copy = np.arange(rec.size, dtype=np.int64) - np.repeat(np.cumsum(copies) - copies, copies)
    skey = hash64(keys[rec], job.seed, STREAM_SHUFFLE, copy)
    # bucket = floor(skey / 2^64 * S), exactly: the top 32 bits times S, shifted (S < 2^31)
    bucket = ((skey >> np.uint64(32)) * np.uint64(job.num_buckets)) >> np.uint64(32)
    return rec, skey, bucket.astype(np.int64), flat, lengths


def plan_block(job: Job, block) -> dict:
    """Samples per bucket (sparse) and per label, for the driver to lay out the shards."""
    rec, _, bucket, flat, lengths = _samples(job, _load_good(job, block))
    b, n = np.unique(bucket, return_counts=True)
    per_rec = np.zeros(lengths.size, dtype=np.int64)
    np.add.at(per_rec, rec, 1)
    label_counts = np.bincount(flat, weights=np.repeat(per_rec, lengths), minlength=job.num_classes)
    return {"buckets": [b.tolist(), n.tolist()], "labels": label_counts.astype(np.int64)}


def expand_block(job: Job, block) -> dict:
    """The block's samples that fall in buckets to write, as columns (bucket, skey, image, reenc, labels,
    info): metadata only; the image bytes are read by the shard writer (image: images.write_spec)."""
    rows = _load_good(job, block)
    pack = str(Path(job.work_dir) / f"enc-{_bid(*block)}.bin")
    rec, skey, bucket, flat, lengths = _samples(job, rows)
    keep = job.stems[bucket] >= 0
    starts = np.cumsum(lengths) - lengths
    out = {"bucket": bucket[keep], "skey": skey[keep], "image": [], "reenc": [], "labels": [], "info": []}
    for i in rec[keep]:
        _, image, _, stored, tags, meta, _ = rows[i]
        labels = flat[starts[i]:starts[i] + lengths[i]].tolist()
        out["image"].append(_images.write_spec(image, pack, stored))
        out["reenc"].append(stored is not None)
        out["labels"].append(json.dumps(labels))
        out["info"].append(json.dumps({"tags": tags, "image": _images.display_name(image), "labels": labels, **meta},
                                      sort_keys=True))
    return out


def write_bucket(job: Job, bucket: int, skey, image, reenc, labels, info) -> tuple[str, int]:
    """Write the shard of one bucket from its samples (any order: sorted here by shuffle key)."""
    k = int(job.stems[int(bucket)])
    order = sorted(range(len(image)), key=lambda i: (int(skey[i]), info[i], labels[i]))
    # the bytes are final (the original file or check_block's JPEG): reencode False, a byte range or a path
    samples = [(f"{k:06d}_{j:06d}", _images.parse_spec(image[i]), False, json.loads(labels[i]), info[i])  # info: JSON
               for j, i in enumerate(order)]
    write_shard(job.out_dir, shard_stem(k), samples, job.images_dir or ".", read=_images.shard_bytes)
    return shard_stem(k), len(samples)
