"""Label noise and hashtag resampling over per-image label lists (the paper's two data experiments).

Label noise: each label of each image is, with probability p, replaced by a draw from the marginal label
distribution with that label's own mass removed (so a replaced label always changes). A replacement may
equal another label of the same image; the 1/k target then gives that class both shares.

Resampling decides how many copies of each image the shards hold, keeping the total near the natural size:
- natural: every image once.
- sqrt: image weight = mean over its labels of 1/sqrt(n_label) (n = the label's image count), so a
  single-label class ends up with a frequency proportional to sqrt(n) (Mikolov-style square-root sampling).
- uniform: image weight = mean over its labels of 1/n_label, so single-label classes end up equally frequent.
Expected copies = N * w_i / sum(w); the fraction is rounded up with that probability (seeded), so repeats
appear for rare tags and frequent-tag images are thinned.
- cap (MetaCLIP's balancing, Xu et al. 2023, t = 20,000 there): a label seen on n > t images keeps each of
  them with probability t / n; an image is kept (once) when ANY of its labels keeps it, so P(keep) =
  1 - prod_j (1 - min(1, t / n_j)): labels at or under t keep every image, the head is flattened to about t,
  and the total shrinks (no copies are made). `cap_sample` / `cap_keep_hashed`.

Target weights (what a sample's k labels share; the loaders build the targets): 1/k each (the paper's), or
IDF-weighted (SuperClass, Huang et al. 2024): w_j proportional to ln(N / df_j), df_j = the images with label
j, normalized per sample to sum to 1; a sample whose labels are all in every image falls back to 1/k.
`idf_class_weights` gives the per-class ln(N / df_j) the manifest stores (`class_weights`), `idf_row_weights`
a sample's weights from them.

The shard pipeline draws every random number from a seeded hash of the record's 64-bit key (`uniform`), so
a record's noise, copies and shuffle keys do not depend on the order or the machine it is processed on:
`noisy_labels_hashed`, `weights_fixed` and `copies_hashed` are the per-record forms of the functions above.
"""
from __future__ import annotations

import numpy as np

__all__ = ["label_marginal", "add_label_noise", "resample_copies", "SAMPLING_MODES", "uniform", "mix64",
           "noisy_labels_hashed", "weights_fixed", "copies_hashed", "WEIGHT_ONE", "STREAM_FLIP", "STREAM_DRAW",
           "STREAM_COPIES", "STREAM_SHUFFLE", "STREAM_CAP", "cap_sample", "cap_keep_hashed", "cap_probabilities",
           "TARGET_WEIGHTS", "idf_class_weights", "idf_row_weights", "DEFAULT_CAP"]

SAMPLING_MODES = ("natural", "sqrt", "uniform", "cap")
TARGET_WEIGHTS = ("uniform", "idf")  # a sample's k labels: 1/k each, or IDF-weighted
DEFAULT_CAP = 20_000  # MetaCLIP's t


def label_marginal(labels: list[list[int]], num_classes: int) -> np.ndarray:
    """How often each label occurs over all images (int64 [num_classes])."""
    flat = np.fromiter((l for row in labels for l in row), dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(f"label ids must lie in [0, {num_classes})")
    return np.bincount(flat, minlength=num_classes)


def add_label_noise(labels: list[list[int]], p: float, num_classes: int,
                    rng: np.random.Generator) -> list[list[int]]:
    """Each label replaced with probability p by a marginal draw excluding it (see module docstring)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label noise must be a probability in [0, 1], got {p}")
    lengths = np.array([len(r) for r in labels], dtype=np.int64)
    flat = np.fromiter((l for row in labels for l in row), dtype=np.int64, count=int(lengths.sum()))
    w = label_marginal(labels, num_classes).astype(np.float64)
    total = w.sum()
    flip = rng.random(flat.size) < p
    flip &= w[flat] < total  # a label holding all the mass has nothing to be replaced by
    orig = flat[flip]
    cum = np.cumsum(w)
    start = cum[orig] - w[orig]
    # Uniform over the marginal with orig's interval cut out: draw in [0, total - w_orig), skip the gap.
    u = rng.random(orig.size) * (total - w[orig])
    u = u + w[orig] * (u >= start)
    new = np.minimum(np.searchsorted(cum, u, side="right"), num_classes - 1)
    while (bad := (new == orig) | (w[new] == 0)).any():  # float edge at interval ends: redraw those
        u = rng.random(int(bad.sum())) * (total - w[orig[bad]])
        u = u + w[orig[bad]] * (u >= start[bad])
        new[bad] = np.minimum(np.searchsorted(cum, u, side="right"), num_classes - 1)
    out = flat.copy()
    out[flip] = new
    splits = np.cumsum(lengths)[:-1]
    return [r.tolist() for r in np.split(out, splits)] if labels else []


def resample_copies(labels: list[list[int]], num_classes: int, mode: str,
                    rng: np.random.Generator) -> np.ndarray:
    """Copies of each image (int64 [N]) under natural, sqrt or uniform sampling."""
    if mode not in SAMPLING_MODES or mode == "cap":
        raise ValueError(f"resample_copies: sampling must be natural, sqrt or uniform (cap: cap_sample), got {mode!r}")
    n = len(labels)
    if mode == "natural" or n == 0:
        return np.ones(n, dtype=np.int64)
    if any(len(r) == 0 for r in labels):
        raise ValueError("resample_copies: every image needs at least one label")
    freq = label_marginal(labels, num_classes).astype(np.float64)
    inv = 1.0 / np.sqrt(np.maximum(freq, 1)) if mode == "sqrt" else 1.0 / np.maximum(freq, 1)
    weight = np.array([inv[r].mean() for r in labels])
    expected = n * weight / weight.sum()
    base = np.floor(expected)
    return (base + (rng.random(n) < expected - base)).astype(np.int64)


def cap_probabilities(marginal, cap: int) -> np.ndarray:
    """Per label: the probability min(1, cap / n) that it keeps one of its images (MetaCLIP's entry_prob)."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    n = np.asarray(marginal, dtype=np.float64)
    return np.minimum(1.0, cap / np.maximum(n, 1.0))


def cap_sample(labels: list[list[int]], num_classes: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """MetaCLIP balancing of in-memory label lists: 1 (kept) or 0 per image (see the module docstring)."""
    p = cap_probabilities(label_marginal(labels, num_classes), cap)
    return np.array([int(any(rng.random() < p[j] for j in row)) for row in labels], dtype=np.int64)


def idf_class_weights(df, num_docs: int) -> np.ndarray:
    """ln(N / df_j) per class (float64); 0 for a class in no document (it is in no sample either)."""
    if num_docs < 1:
        raise ValueError(f"idf_class_weights: num_docs must be >= 1, got {num_docs}")
    df = np.asarray(df, dtype=np.float64)
    if (df < 0).any() or (df > num_docs).any():
        raise ValueError(f"idf_class_weights: document frequencies must lie in [0, {num_docs}]")
    with np.errstate(divide="ignore"):
        return np.where(df > 0, np.log(num_docs / np.maximum(df, 1.0)), 0.0)


def idf_row_weights(flat, lengths, class_weights) -> np.ndarray:
    """Each label's target weight (float64, like flat): class weight / its sample's sum; 1/k where a sample's
    class weights sum to 0 (all its labels in every image)."""
    flat, lengths = np.asarray(flat, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    w = np.asarray(class_weights, dtype=np.float64)[flat]
    starts = np.cumsum(lengths) - lengths
    sums = np.add.reduceat(w, starts[lengths > 0]) if flat.size else np.zeros(0)
    row_sum = np.zeros(lengths.size)
    row_sum[lengths > 0] = sums
    per = np.repeat(row_sum, lengths)
    k = np.repeat(lengths, lengths).astype(np.float64)
    return np.where(per > 0, w / np.where(per > 0, per, 1.0), 1.0 / np.maximum(k, 1.0))


# --- per-record randomness from a seeded hash of the record key -------------------------------------------
STREAM_FLIP, STREAM_DRAW, STREAM_COPIES, STREAM_SHUFFLE, STREAM_CAP = 1, 2, 3, 4, 5
WEIGHT_ONE = 1 << 40  # resampling weights in fixed point: their sum is exact, whatever the summation order
_M64 = (1 << 64) - 1


def mix64(x) -> np.ndarray:
    """splitmix64's finalizer over uint64 (wrapping arithmetic): a bijective, well-mixed hash."""
    with np.errstate(over="ignore"):  # wrapping is the point
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash64(keys, seed: int, stream: int, counter=0) -> np.ndarray:
    """A 64-bit hash of (record key, seed, stream, counter); counter numbers the draws of one record."""
    base = mix64(np.uint64(((seed & 0xFFFFFFFF) << 8 | stream) & _M64))
    with np.errstate(over="ignore"):
        return mix64(mix64(np.asarray(keys, dtype=np.uint64) ^ base) + np.asarray(counter, dtype=np.uint64))


def uniform(keys, seed: int, stream: int, counter=0) -> np.ndarray:
    """Uniform floats in [0, 1) from hash64 (53 bits)."""
    return (hash64(keys, seed, stream, counter) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def noisy_labels_hashed(flat, keys, slot, p: float, marginal, seed: int) -> np.ndarray:
    """add_label_noise for flat label ids: label `slot` of the record with key `keys[i]` is replaced with
    probability p by a draw from `marginal` with its own mass removed; draws come from the record's key."""
    flat = np.asarray(flat, dtype=np.int64)
    out = flat.copy()
    if p <= 0 or flat.size == 0:
        return out
    w = np.asarray(marginal, dtype=np.float64)
    total, cum = w.sum(), np.cumsum(w)
    keys, slot = np.asarray(keys, dtype=np.uint64), np.asarray(slot, dtype=np.uint64)
    flip = (uniform(keys, seed, STREAM_FLIP, slot) < p) & (w[flat] < total)
    idx = np.flatnonzero(flip)
    orig = flat[idx]
    start = cum[orig] - w[orig]
    new = np.full(idx.size, -1, dtype=np.int64)
    todo = np.arange(idx.size)
    for attempt in range(64):  # a draw on a float edge of the cut interval is redrawn with the next counter
        ctr = slot[idx[todo]] * np.uint64(64) + np.uint64(attempt)
        u = uniform(keys[idx[todo]], seed, STREAM_DRAW, ctr) * (total - w[orig[todo]])
        u = u + w[orig[todo]] * (u >= start[todo])
        got = np.minimum(np.searchsorted(cum, u, side="right"), w.size - 1)
        ok = (got != orig[todo]) & (w[got] > 0)
        new[todo[ok]] = got[ok]
        todo = todo[~ok]
        if todo.size == 0:
            break
    keep = new >= 0  # (never left in practice: 64 edge draws in a row)
    out[idx[keep]] = new[keep]
    return out


def weights_fixed(flat, lengths, marginal, mode: str) -> np.ndarray:
    """Resampling weight of each record (mean 1/sqrt(n) or 1/n over its labels) in fixed point (int64)."""
    if mode not in ("sqrt", "uniform"):
        raise ValueError(f"weights_fixed: mode must be sqrt or uniform, got {mode!r}")
    freq = np.maximum(np.asarray(marginal, dtype=np.float64), 1)
    inv = 1.0 / np.sqrt(freq) if mode == "sqrt" else 1.0 / freq
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 1).any():
        raise ValueError("resampling: every image needs at least one label")
    sums = np.add.reduceat(inv[np.asarray(flat, dtype=np.int64)], np.cumsum(lengths) - lengths) if lengths.size \
        else np.zeros(0)
    return np.round(sums / lengths * WEIGHT_ONE).astype(np.int64)


def copies_hashed(keys, weights, num_images: int, weight_total: int, seed: int) -> np.ndarray:
    """Copies of each record: expected num_images * w / W, the fraction rounded up with that probability."""
    expected = num_images * (np.asarray(weights, dtype=np.float64) / float(weight_total))
    base = np.floor(expected)
    return (base + (uniform(keys, seed, STREAM_COPIES) < expected - base)).astype(np.int64)


def cap_keep_hashed(keys, flat, lengths, marginal, cap: int, seed: int) -> np.ndarray:
    """cap_sample per record: label slot s of the record with key k keeps it when uniform(k, seed, STREAM_CAP,
    s) < min(1, cap / n_label); 1 (kept) or 0 per record."""
    flat, lengths = np.asarray(flat, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    if flat.size == 0:
        return np.zeros(lengths.size, dtype=np.int64)
    owner = np.repeat(np.arange(lengths.size), lengths)
    slot = np.arange(flat.size, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    hit = uniform(keys[owner], seed, STREAM_CAP, slot.astype(np.uint64)) < cap_probabilities(marginal, cap)[flat]
    kept = np.zeros(lengths.size, dtype=np.int64)
    np.maximum.at(kept, owner, hit.astype(np.int64))
    return kept
