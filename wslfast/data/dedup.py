"""Near-duplicate removal with a DCT perceptual hash (pHash).

pHash: grey, resize to 32x32 (antialiased), 2-D DCT-II, keep the 8x8 lowest frequencies, and set bit k
when coefficient k exceeds their median (the DC term left out of the median). Resizing, re-encoding and
mild colour shifts move few bits; different images differ in ~32 of 64. Two images are duplicates when
their hashes are within `radius` bits (default 10).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["phash", "phash_file", "hash_directory", "hamming", "near_duplicates", "IMAGE_EXTENSIONS",
           "DEFAULT_RADIUS"]

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


def near_duplicates(queries, reference, radius: int = DEFAULT_RADIUS, chunk: int = 4096) -> np.ndarray:
    """Bool [Q]: query i is within `radius` bits of some reference hash."""
    q = np.asarray(queries, dtype=np.uint64)
    ref = np.asarray(reference, dtype=np.uint64)
    out = np.zeros(q.size, dtype=bool)
    if ref.size == 0 or q.size == 0:
        return out
    for s in range(0, q.size, chunk):
        d = hamming(q[s:s + chunk, None], ref[None, :])
        out[s:s + chunk] = (d <= radius).any(axis=1)
    return out
