"""Mixup (Zhang et al. 2018) for fine-tuning, with the loss as soft-target cross-entropy (SWAG's recipe:
mixup alpha 0.1, soft-target CE) and optional label smoothing, all without a dense [B, C] target.

    mixed, targets, lam, perm = mixup_batch(images, labels, num_classes, alpha=0.1, generator=g)
    loss = mixup_cross_entropy(logits, targets, label_smoothing=0.1)

The batch is mixed with a permutation of itself: x' = lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha,
alpha) (one per batch); the target of row i is lam on labels[i] and 1 - lam on labels[perm[i]], a
SparseTargets with two entries (merged when both labels agree). Label smoothing eps replaces the target t
by (1 - eps) * t + eps / C, whose cross-entropy splits exactly into (1 - eps) * CE(z, t) + eps * (lse(z) -
mean(z)): the uniform part needs no target at all.
"""
from __future__ import annotations

import torch

from ..ops import soft_target_cross_entropy
from ..sparse_targets import SparseTargets

__all__ = ["mixup_batch", "mixup_cross_entropy"]


def mixup_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float,
                generator: torch.Generator | None = None):
    """-> (mixed images, SparseTargets, lam, perm). alpha <= 0 turns mixup off (lam = 1, perm = identity)."""
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"mixup_batch: labels must be [B] for images [B, ...], got {tuple(labels.shape)} and "
                         f"{tuple(images.shape)}")
    b = images.shape[0]
    labels = labels.to(images.device).long()
    if alpha > 0:
        lam = _beta(alpha, generator)
        perm = torch.randperm(b, generator=generator).to(images.device)
        mixed = images.mul(lam).add_(images[perm], alpha=1.0 - lam)
    else:
        lam, perm, mixed = 1.0, torch.arange(b, device=images.device), images
    indices = torch.stack([labels, labels[perm]], 1).reshape(-1)
    weights = torch.tensor([lam, 1.0 - lam], device=images.device).repeat(b)
    offsets = torch.arange(0, 2 * b + 1, 2, device=images.device)
    return mixed, SparseTargets(indices, offsets, weights, num_classes), lam, perm


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """Beta(alpha, alpha) as X / (X + Y), X, Y ~ Gamma(alpha) (torch.distributions.Beta takes no generator;
    torch._standard_gamma does). Both can underflow to 0 for a small alpha: then either image, 50/50."""
    x = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=generator)
    total = float(x.sum())
    return float(x[0]) / total if total > 0 else float(torch.rand((), generator=generator) < 0.5)


def mixup_cross_entropy(logits: torch.Tensor, targets: SparseTargets, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over rows of the soft-target cross-entropy, with label smoothing eps in [0, 1)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    loss = soft_target_cross_entropy(logits, targets, reduction="mean")
    if label_smoothing == 0.0:
        return loss
    z = logits.float()
    uniform = (torch.logsumexp(z, dim=1) - z.mean(dim=1)).mean()
    return (1.0 - label_smoothing) * loss + label_smoothing * uniform
