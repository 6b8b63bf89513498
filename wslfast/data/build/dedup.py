"""Near-duplicate removal with a DCT perceptual hash (pHash).

pHash: grey, resize to 32x32 (antialiased), 2-D DCT-II, keep the 8x8 lowest frequencies, and set bit k
when coefficient k exceeds their median (the DC term left out of the median). Resizing, re-encoding and
mild colour shifts move few bits; different images differ in ~32 of 64. Two images are duplicates when
their hashes are within `radius` bits (default 10). A JPEG is hashed from its DCT-scaled decode
(`draft_for_hash`: luma only, 1/2 to 1/8 scale, never below 32x32): the decode is 2-2.5x cheaper than a
full one on photos and the pHash of the small image over 10x cheaper, and on 640x480 to 1,600x1,200
photos the hash is within 0-2 bits of the full decode's (tests/data/test_images.py), far inside the
radius. Other modes go through format.to_rgb first (16-bit, alpha), as their shard JPEG does.

Search: `HashIndex` is an exact multi-index hash (Norouzi et al., CVPR 2012). The 64 bits are cut into S
substrings (S from the reference count and radius: 6 of 10-11 bits at r = 10 and up to ~3M references);
two hashes within r bits agree within floor(r/S) bits on at least one substring (pigeonhole), so each
query probes, per substring, the table buckets within floor(r/S) bit flips of its own
substring and checks the full distance of only those candidates. Built once over the reference hashes, it
is a small picklable object (sorted hashes + bucket offsets) that workers share read-only; the lookup
loop is C++ (csrc/dedup/hamming_index.cpp, the torch-free module wslfast._dedup).
"""
from __future__ import annotations

import os
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import ConfigError
from ..format import IMAGE_EXTENSIONS, to_rgb

__all__ = ["phash", "phash_file", "draft_for_hash", "hash_directory", "hamming", "near_duplicates",
           "near_duplicates_brute",
           "HashIndex", "DEFAULT_RADIUS"]

DEFAULT_RADIUS = 10
_N, _K = 32, 8


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.mgrid[0:n, 0:n].astype(np.float64)
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_N)
_LOW, _LOW_T = np.ascontiguousarray(_DCT[:_K]), np.ascontiguousarray(_DCT[:_K].T)  # the 8 lowest frequencies


def draft_for_hash(im: Image.Image) -> Image.Image:
    """Ask a JPEG not yet loaded for its cheapest decode that still gives the pHash: grey (luma only), DCT-
    scaled by 1/2 to 1/8 but at least 32x32. libjpeg still entropy-decodes every coefficient, so a
    truncated file fails im.load() as with a full decode. No-op for other formats (and for MPO: the build
    re-encodes those from a full decode, so their references are hashed the same way)."""
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        im.draft("L", (_N, _N))
    return im


def phash(image: Image.Image) -> int:
    """64-bit pHash of a PIL image (as a Python int)."""
    if image.mode not in ("L", "RGB"):
        image = to_rgb(image)
    grey = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_LOW @ grey @ _LOW_T).ravel()  # = (_DCT @ grey @ _DCT.T)[:8, :8], a sixteenth of the work
    bits = low > np.sort(low[1:])[(_K * _K - 1) // 2]  # the median of the 63 (an odd count: one element)
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")  # bit k = coefficient k


def phash_file(path: str | os.PathLike) -> int:
    """pHash of an image file (the JPEG's scaled decode, as the build hashes it); raises what Pillow raises."""
    with Image.open(path) as im:
        return phash(draft_for_hash(im))


def _hash_or_none(path: str) -> int | None:
    # the build's per-sample guard (non-regular files skipped unopened, pixel limit, any decoder error);
    # imported here, not at the top: images.py imports this module for the hash
    from .images import reference_hash

    return reference_hash(path)


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


_MAX_WIDTH = 22  # bits a substring table may index (2^22 + 1 offsets, 32 MiB)


def _flip_masks(bits: int, max_flips: int) -> np.ndarray:
    """Sorted masks of up to max_flips set bits among the low `bits` (0 first): the probes around a
    substring. Sorted, the masks that fit a narrower substring are a prefix."""
    out = [0]
    for k in range(1, max_flips + 1):
        out += [sum(1 << i for i in c) for c in combinations(range(bits), k)]
    return np.array(sorted(out), dtype=np.int64)


def _widths(subs: int) -> list[int]:
    """64 bits cut into `subs` substrings as even as they go (e.g. 6 -> 11, 11, 11, 11, 10, 10)."""
    return [64 // subs + (1 if i < 64 % subs else 0) for i in range(subs)]


def _probe_count(width: int, flips: int) -> int:
    return sum(comb(width, k) for k in range(min(flips, width) + 1))


def _layout_cost(n: int, radius: int, subs: int) -> float:
    """Estimated ns a query: per probe a bucket lookup (25 ns while the tables fit in ~8 MiB of cache,
    250 ns beyond) plus a scan of the N / 2^w hashes of the bucket (1.5 ns each). Fitted on lookups of
    random hashes with 4 to 8 substrings at 1e4 to 1e6 references (2-core EPYC); at r = 10 it picks 6
    substrings from 1e4 to ~3M references and 4 beyond."""
    flips, widths = radius // subs, _widths(subs)
    probe_ns = 25.0 if subs * (2 ** max(widths) + n) * 8 <= 8 << 20 else 250.0
    return sum(_probe_count(w, flips) * (probe_ns + 1.5 * n / 2 ** w) for w in widths)


def choose_substrings(n: int, radius: int) -> int:
    """How many substrings the index over n references at this radius cuts the 64 bits into: the
    cheapest by `_layout_cost` among those whose tables hold at most max(2^10, 4 n) buckets each."""
    fits = [s for s in range(-(-64 // _MAX_WIDTH), 17) if 2 ** max(_widths(s)) <= max(1 << 10, 4 * n)]
    return min(fits, key=lambda s: _layout_cost(n, radius, s))


def _lookup_extension():
    """wslfast._dedup's lookup (C++, no torch), or None in a checkout whose extensions are not built."""
    try:
        from ..._dedup import hamming_contains_near
    except ImportError:
        return None
    return hamming_contains_near


class HashIndex:
    """Exact radius search over 64-bit hashes (see module docstring). `contains_near(q)` is
    near_duplicates_brute(q, reference, radius), much faster for radius <= ~15.

    Time: building sorts the references once per substring table, O(S N log N). A lookup probes, per
    table, the buckets within floor(r / S) flips of the query's substring and scans the N / 2^w hashes
    of each: constant in N while buckets are nearly empty, then linear in N. S is chosen from N and r by
    a cost model (`choose_substrings`); brute force is taken where it is cheaper (tiny N, large r).
    Memory: S sorted copies of the references (8 B a hash each) and S tables of 2^w + 1 offsets,
    whatever the queries. The lookup runs in C++ (wslfast._dedup) when built, else in numpy (same
    results, slower)."""

    def __init__(self, reference, radius: int = DEFAULT_RADIUS):
        if not 0 <= int(radius) <= 64:
            raise ConfigError(f"HashIndex: radius must be in [0, 64] bits, got {radius}")
        self.radius = int(radius)
        ref = np.unique(np.asarray(reference, dtype=np.uint64))
        self.size = int(ref.size)
        self.subs = choose_substrings(ref.size, self.radius)
        self._widths = np.array(_widths(self.subs), dtype=np.int64)
        self._masks = _flip_masks(int(self._widths.max()), self.radius // self.subs)
        # Probing pays when it costs less than comparing with every reference (~1.5 ns a pair).
        self._brute = ref if _layout_cost(ref.size, self.radius, self.subs) >= 1.5 * ref.size else None
        self._refs = self._starts = None
        if self._brute is None:
            self._refs = np.empty((self.subs, ref.size), dtype=np.uint64)
            starts, shift = [], 0
            for s, w in enumerate(self._widths.tolist()):
                sub = ((ref >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
                self._refs[s] = ref[np.argsort(sub, kind="stable")]
                starts.append(np.concatenate([[0], np.cumsum(np.bincount(sub, minlength=1 << w))]))
                shift += w
            self._starts = np.concatenate(starts).astype(np.int64)

    def contains_near(self, queries, chunk: int = 8192, use_extension: bool = True) -> np.ndarray:
        """Bool [Q]: some reference hash lies within `radius` bits of query i. `use_extension=False`
        takes the numpy lookup (the tests compare the two)."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.uint64).ravel())
        if self._brute is not None or q.size == 0:
            return near_duplicates_brute(q, self._brute if self._brute is not None else np.zeros(0, np.uint64),
                                         self.radius)
        lookup = _lookup_extension() if use_extension else None
        if lookup is not None:
            return lookup(q, self._refs, self._widths, self._starts, self._masks.astype(np.uint64), self.radius)
        return np.concatenate([self._contains_near_numpy(q[c0:c0 + chunk]) for c0 in range(0, q.size, chunk)])

    def _contains_near_numpy(self, qc: np.ndarray) -> np.ndarray:
        hit = np.zeros(qc.size, dtype=bool)
        shift = base = 0
        for s, w in enumerate(self._widths.tolist()):
            sref, start = self._refs[s], self._starts[base:base + (1 << w) + 1]
            masks = self._masks[self._masks < (1 << w)]
            sub_shift = shift
            shift, base = shift + w, base + (1 << w) + 1
            live = np.flatnonzero(~hit)  # a query already matched needs no more probes
            if live.size == 0:
                break
            sub = ((qc[live] >> np.uint64(sub_shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
            keys = (sub[:, None] ^ masks[None, :]).ravel()
            lo, cnt = start[keys], start[keys + 1] - start[keys]
            total = int(cnt.sum())
            if total == 0:
                continue
            owner = np.repeat(np.repeat(live, masks.size), cnt)
            pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt - lo, cnt)
            near = np.bitwise_count(qc[owner] ^ sref[pos]) <= self.radius
            hit[owner[near]] = True
        return hit


def near_duplicates(queries, reference, radius: int = DEFAULT_RADIUS) -> np.ndarray:
    """Bool [Q]: query i is within `radius` bits of some reference hash (a HashIndex lookup; pass a built
    HashIndex as `reference` to reuse it)."""
    index = reference if isinstance(reference, HashIndex) else HashIndex(reference, radius)
    if index.radius != radius:
        raise ValueError(f"near_duplicates: index built for radius {index.radius}, asked for {radius}")
    return index.contains_near(queries)
