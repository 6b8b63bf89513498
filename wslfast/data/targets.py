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
"""
from __future__ import annotations

import numpy as np

__all__ = ["label_marginal", "add_label_noise", "resample_copies", "SAMPLING_MODES"]

SAMPLING_MODES = ("natural", "sqrt", "uniform")


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
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {mode!r}")
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
