"""Webdataset tar shards from images + hashtags, for DALI's webdataset reader and the `webdataset` library.

Each sample is `<key>.jpg` (the original JPEG bytes; other image formats re-encoded to JPEG, quality 95),
`<key>.labels` (label ids, little-endian int32) and `<key>.json` ({"tags": as given, "image", "labels"}).
Each `shard-NNNNNN.tar` has a DALI index `shard-NNNNNN.idx` (format v1.2) and `manifest.json` describes
the whole set. Steps: read TAGS -> map tags to labels (images with none are dropped) -> decode-check every
image (unreadable or non-image files skipped and counted) -> drop near-duplicates of `dedup_against` ->
label noise -> resampling copies -> one seeded shuffle -> shards of `shard_size`.

A shard's .idx is written first and its .tar is renamed into place last, so a crash never leaves a .tar a
reader takes as whole. A re-run with the same inputs and settings keeps the finished shards (resume);
with anything changed it rebuilds from scratch. The output is a pure function of inputs and seed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from . import dedup as _dedup
from .tagfiles import read_tags
from .targets import SAMPLING_MODES, add_label_noise, label_marginal, resample_copies
from .vocab import HashtagVocabulary

__all__ = ["write_shards", "list_shards", "read_manifest", "check_image", "dataset_name", "MANIFEST"]

MANIFEST = "manifest.json"
_STATE = ".build-state.json"
_CHECKS = ".image-checks.json"  # decode-check results by (path, size, mtime): a re-run skips the decoding
_FORMAT = "wslfast-shards"


def dataset_name(role: str, source: str, num_images: int, num_labels: int) -> str:
    """The paper's role-source-I-L name, e.g. train-IG-1M-17k."""
    def short(n: int) -> str:
        for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
            if n >= div:
                return f"{n / div:.1f}".rstrip("0").rstrip(".") + suffix
        return str(n)
    return f"{role}-{source}-{short(num_images)}-{short(num_labels)}"


def check_image(path: str, want_hash: bool) -> tuple[str | None, bool, int]:
    """(skip reason or None, needs re-encoding to JPEG, pHash or 0). Decodes the whole image."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()  # raises on truncated or corrupt data (LOAD_TRUNCATED_IMAGES stays False)
            if im.width < 1 or im.height < 1:
                return "corrupt", False, 0
            return None, fmt != "JPEG" or im.mode not in ("RGB", "L"), _dedup.phash(im) if want_hash else 0
    except FileNotFoundError:
        return "missing", False, 0
    except Image.UnidentifiedImageError:
        return "not_image", False, 0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "corrupt", False, 0


def _check_star(args):
    return check_image(*args)


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _cached_checks(cache_path: Path, images_dir: Path, rels: list[str], want_hash: bool, workers: int):
    """check_image for every file, reusing results of an earlier run for files that did not change."""
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    results: list = [None] * len(rels)
    keys = [str((images_dir / r).resolve()) for r in rels]
    stats = [_stat_key(images_dir / r) for r in rels]
    todo = []
    for i, (key, st) in enumerate(zip(keys, stats)):
        hit = cache.get(key)
        if st is not None and hit and hit[0] == st and (hit[1][0] is not None or not want_hash or hit[2]):
            results[i] = tuple(hit[1])
        else:
            todo.append(i)
    jobs = [(str(images_dir / rels[i]), want_hash) for i in todo]
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            fresh = list(pool.imap(_check_star, jobs, chunksize=64))
    else:
        fresh = [check_image(*j) for j in jobs]
    for i, r in zip(todo, fresh):
        results[i] = r
        if stats[i] is not None:
            cache[keys[i]] = [stats[i], list(r), want_hash]
    if todo:
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    return results


def _jpeg_bytes(path: str, reencode: bool) -> bytes:
    if not reencode:
        return Path(path).read_bytes()
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Add a member with fixed metadata (deterministic bytes); returns (data offset, size)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar.addfile(info, io.BytesIO(data))
    return offset, len(data)


def _write_shard(out: str, stem: str, samples: list[dict]) -> str:
    """One shard from sample specs {key, path, reencode, labels, json}; runs in a worker with --workers."""
    out = Path(out)
    tmp_tar = out / f".{stem}.tar.tmp"
    index_lines = []
    with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            parts = []
            labels = np.asarray(s["labels"], dtype="<i4").tobytes()
            for ext, data in (("jpg", _jpeg_bytes(s["path"], s["reencode"])), ("labels", labels),
                              ("json", json.dumps(s["json"], sort_keys=True).encode())):
                off, size = _add(tar, f"{s['key']}.{ext}", data)
                parts.append(f"{ext} {off} {size} {s['key']}.{ext}")
            index_lines.append(" ".join(parts))
    tmp_idx = out / f".{stem}.idx.tmp"
    tmp_idx.write_text(f"v1.2 {len(samples)}\n" + "\n".join(index_lines) + "\n")
    os.replace(tmp_idx, out / f"{stem}.idx")
    os.replace(tmp_tar, out / f"{stem}.tar")  # last: a .tar in place is a whole shard
    return stem


def _write_shard_star(args) -> str:
    return _write_shard(*args)


def _fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_shards(images_dir, tags_path, vocab, out_dir, shard_size: int = 1000, label_noise: float = 0.0,
                 sampling: str = "natural", dedup_against=None, workers: int = 1, seed: int = 0,
                 name: str | None = None, dedup_radius: int = _dedup.DEFAULT_RADIUS, role: str = "train",
                 source: str | None = None, progress: bool = False) -> dict:
    """Build the shards (see module docstring); returns the manifest (also out_dir/manifest.json)."""
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
    images_dir, out = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"write_shards: images folder {images_dir} does not exist")
    fmt, records = read_tags(tags_path, images_dir)
    skipped = {k: 0 for k in ("bad_record", "video", "missing", "out_of_vocabulary", "not_image", "corrupt",
                              "duplicate")}
    kept = []  # (record, labels)
    for r in records:
        if r.skip:
            skipped[r.skip] += 1
            continue
        labels = vocab.labels_of(r.tags)
        if not labels:
            skipped["out_of_vocabulary"] += 1
        else:
            kept.append((r, labels))

    # Decode-check (and hash) every image, in parallel; results come back in order.
    want_hash = dedup_against is not None
    out.mkdir(parents=True, exist_ok=True)
    checks = _cached_checks(out / _CHECKS, images_dir, [r.image for r, _ in kept], want_hash, workers)
    good, reencode, hashes = [], [], []
    for (r, labels), (reason, reenc, h) in zip(kept, checks):
        if reason:
            skipped[reason] += 1
        else:
            good.append((r, labels))
            reencode.append(reenc)
            hashes.append(h)
    dedup_ref_unreadable = 0
    if want_hash and good:
        ref, dedup_ref_unreadable = _dedup.hash_directory(dedup_against, workers)
        dup = _dedup.near_duplicates(np.array(hashes, dtype=np.uint64), ref, dedup_radius)
        skipped["duplicate"] = int(dup.sum())
        good = [g for g, d in zip(good, dup) if not d]
        reencode = [e for e, d in zip(reencode, dup) if not d]
    if not good:
        raise ValueError(f"write_shards: no usable image left (skipped: {skipped})")

    rng = np.random.default_rng(seed)
    labels = [l for _, l in good]
    if label_noise > 0:
        labels = add_label_noise(labels, label_noise, len(vocab), rng)
    copies = resample_copies(labels, len(vocab), sampling, rng)
    order = np.repeat(np.arange(len(good)), copies)
    order = order[rng.permutation(order.size)]
    if order.size == 0:
        raise ValueError("write_shards: resampling left no sample")

    source = source or ("YFCC" if fmt == "yfcc" else "local")
    name = name or dataset_name(role, source, int(order.size), len(vocab))
    num_shards = (order.size + shard_size - 1) // shard_size
    stems = [f"shard-{k:06d}" for k in range(num_shards)]
    fp = _fingerprint(images=str(images_dir.resolve()), tags=hashlib.sha256(Path(tags_path).read_bytes()).hexdigest(),
                      vocab=vocab.to_dict(), shard_size=shard_size, noise=label_noise, sampling=sampling,
                      dedup=str(dedup_against), radius=dedup_radius, seed=seed, order=order.tolist(),
                      labels=labels, files=[_stat_key(images_dir / r.image) for r, _ in good])
    state_path = out / _STATE
    resume = state_path.is_file() and json.loads(state_path.read_text()).get("fingerprint") == fp
    if not resume:  # a different build: clear what an earlier one left
        (out / MANIFEST).unlink(missing_ok=True)
        for p in out.glob("shard-*"):
            p.unlink()
        for p in out.glob(".shard-*.tmp"):
            p.unlink()
        state_path.write_text(json.dumps({"fingerprint": fp}))

    label_counts = np.zeros(len(vocab), dtype=np.int64)
    shards, jobs = [], []
    for k, stem in enumerate(stems):
        part = order[k * shard_size:(k + 1) * shard_size]
        shards.append({"tar": f"{stem}.tar", "index": f"{stem}.idx", "num_samples": int(part.size)})
        for i in part:
            label_counts[labels[i]] += 1
        if resume and (out / f"{stem}.tar").is_file() and (out / f"{stem}.idx").is_file():
            continue
        samples = []
        for j, i in enumerate(part):
            r = good[i][0]
            info = {"tags": r.tags, "image": r.image, "labels": labels[i], **r.meta}
            samples.append({"key": f"{k * shard_size + j:09d}", "path": str(images_dir / r.image),
                            "reencode": reencode[i], "labels": labels[i], "json": info})
        jobs.append((str(out), stem, samples))
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            done = pool.imap(_write_shard_star, jobs)
            for stem in done:
                if progress:
                    print(f"wrote {stem}.tar", flush=True)
    else:
        for job in jobs:
            _write_shard(*job)
            if progress:
                print(f"wrote {job[1]}.tar ({len(job[2])} samples)", flush=True)

    manifest = {
        "format": _FORMAT, "version": 1, "name": name, "num_samples": int(order.size),
        "num_images": len(good), "num_classes": len(vocab), "tags_format": fmt,
        "records": len(records), "skipped": skipped, "reencoded": int(sum(reencode)),
        "dedup_against": str(dedup_against) if dedup_against else None, "dedup_radius": dedup_radius,
        "dedup_reference_unreadable": dedup_ref_unreadable, "label_noise": label_noise, "sampling": sampling,
        "seed": seed, "shard_size": shard_size, "shards": shards,
        "label_counts": label_counts.tolist(), "image_label_counts": label_marginal(labels, len(vocab)).tolist(),
        "fingerprint": fp, "vocab": vocab.to_dict(),
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
