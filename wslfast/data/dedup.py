"""Near-duplicate removal with a DCT perceptual hash (pHash).

pHash: grey, resize to 32x32 (antialiased), 2-D DCT-II, keep the 8x8 lowest frequencies, and set bit k
when coefficient k exceeds their median (the DC term left out of the median). Resizing, re-encoding and
mild colour shifts move few bits; different images differ in ~32 of 64. Two images are duplicates when
their hashes are within `radius` bits (default 10).

Search: `HashIndex` is an exact multi-index hash (Norouzi et al., CVPR 2012). The 64 bits are cut into 4
substrings of 16 bits; two hashes within r bits agree within floor(r/4) bits on at least one substring
(pigeonhole), so each query probes, per substring, the table buckets within floor(r/4) bit flips of its own
substring and checks the full distance of only those candidates. Built once over the reference hashes, it
is a small picklable object (sorted hashes + bucket offsets) that workers share read-only.
"""
from __future__ import annotations

import os
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["phash", "phash_file", "hash_directory", "hamming", "near_duplicates", "near_duplicates_brute",
           "HashIndex", "IMAGE_EXTENSIONS", "DEFAULT_RADIUS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_RADIUS = 10
_N, _K = 32, 8


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.mgrid[0:n, 0:n].astype(np.float64)
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_N)
_BITS = (np.uint64(1) << np.arange(_K * _K, dtype=np.uint64))


def phash(image: Image.Image) -> int:
    """64-bit pHash of a PIL image (as a Python int)."""
    grey = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:_K, :_K].ravel()
    bits = low > np.median(low[1:])
    return int(np.bitwise_or.reduce(_BITS[bits])) if bits.any() else 0


def phash_file(path: str | os.PathLike) -> int:
    with Image.open(path) as im:
        return phash(im)


def _hash_or_none(path: str) -> int | None:
    try:
        return phash_file(path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def hash_directory(root: str | os.PathLike, workers: int = 1) -> tuple[np.ndarray, int]:
    """pHashes (uint64) of every decodable image under root (recursive, sorted), and how many were
    unreadable. workers > 1 hashes in a process pool."""
    paths = [str(Path(d) / n) for d, _, files in sorted(os.walk(root)) for n in sorted(files)
             if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    if workers > 1 and len(paths) > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            hashes = list(pool.imap(_hash_or_none, paths, chunksize=64))
    else:
        hashes = [_hash_or_none(p) for p in paths]
    good = [h for h in hashes if h is not None]
    return np.array(good, dtype=np.uint64), len(hashes) - len(good)


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def near_duplicates_brute(queries, reference, radius: int = DEFAULT_RADIUS, chunk: int = 4096) -> np.ndarray:
    """Bool [Q]: query i is within `radius` bits of some reference hash (all pairs; the reference)."""
    q = np.asarray(queries, dtype=np.uint64)
    ref = np.asarray(reference, dtype=np.uint64)
    out = np.zeros(q.size, dtype=bool)
    if ref.size == 0 or q.size == 0:
        return out
    for s in range(0, q.size, chunk):
        d = hamming(q[s:s + chunk, None], ref[None, :])
        out[s:s + chunk] = (d <= radius).any(axis=1)
    return out


_SUB_BITS, _SUBS = 16, 4


def _flip_masks(bits: int, max_flips: int) -> np.ndarray:
    out = [0]
    for k in range(1, max_flips + 1):
        out += [sum(1 << i for i in c) for c in combinations(range(bits), k)]
    return np.array(out, dtype=np.int64)


class HashIndex:
    """Exact radius search over 64-bit hashes (see module docstring). `contains_near(q)` is
    near_duplicates_brute(q, reference, radius), much faster for radius <= ~15."""

    def __init__(self, reference, radius: int = DEFAULT_RADIUS):
        if not 0 <= int(radius) <= 64:
            raise ValueError(f"HashIndex: radius must be in [0, 64] bits, got {radius}")
        self.radius = int(radius)
        ref = np.unique(np.asarray(reference, dtype=np.uint64))
        self.size = int(ref.size)
        self._masks = _flip_masks(_SUB_BITS, self.radius // _SUBS)
        # Probing pays when the probes (and the candidates they bring) are far fewer than all pairs.
        probes = _SUBS * self._masks.size * (1 + ref.size / (1 << _SUB_BITS))
        self._brute = ref if probes >= ref.size else None
        self._tables = []
        if self._brute is None:
            for s in range(_SUBS):
                sub = ((ref >> np.uint64(s * _SUB_BITS)) & np.uint64(0xFFFF)).astype(np.int64)
                order = np.argsort(sub, kind="stable")
                start = np.zeros((1 << _SUB_BITS) + 1, dtype=np.int64)
                np.add.at(start, sub + 1, 1)
                self._tables.append((ref[order], np.cumsum(start)))

    def contains_near(self, queries, chunk: int = 8192) -> np.ndarray:
        """Bool [Q]: some reference hash lies within `radius` bits of query i."""
        q = np.asarray(queries, dtype=np.uint64).ravel()
        if self._brute is not None or q.size == 0:
            return near_duplicates_brute(q, self._brute if self._brute is not None else np.zeros(0, np.uint64),
                                         self.radius)
        out = np.zeros(q.size, dtype=bool)
        for c0 in range(0, q.size, chunk):
            qc = q[c0:c0 + chunk]
            hit = np.zeros(qc.size, dtype=bool)
            for s, (sref, start) in enumerate(self._tables):
                live = np.flatnonzero(~hit)  # a query already matched needs no more probes
                if live.size == 0:
                    break
                sub = ((qc[live] >> np.uint64(s * _SUB_BITS)) & np.uint64(0xFFFF)).astype(np.int64)
                keys = (sub[:, None] ^ self._masks[None, :]).ravel()
                lo, cnt = start[keys], start[keys + 1] - start[keys]
                total = int(cnt.sum())
                if total == 0:
                    continue
                owner = np.repeat(np.repeat(live, self._masks.size), cnt)
                pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt - lo, cnt)
                near = np.bitwise_count(qc[owner] ^ sref[pos]) <= self.radius
                hit[owner[near]] = True
            out[c0:c0 + chunk] = hit
        return out


def near_duplicates(queries, reference, radius: int = DEFAULT_RADIUS) -> np.ndarray:
    """Bool [Q]: query i is within `radius` bits of some reference hash (a HashIndex lookup; pass a built
    HashIndex as `reference` to reuse it)."""
    index = reference if isinstance(reference, HashIndex) else HashIndex(reference, radius)
    if index.radius != radius:
        raise ValueError(f"near_duplicates: index built for radius {index.radius}, asked for {radius}")
    return index.contains_near(queries)
