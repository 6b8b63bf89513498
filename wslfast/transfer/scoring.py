"""Top-1 / top-5 as counts, so that ranks (and batches) add them up exactly.

    hits = topk_hits(logits, labels)              # tensor [hits@1, hits@5, n] (float64, the logits' device)
    top1, top5 = topk_percent(hits, num_classes)  # percentages; top-5 None for tasks of 5 classes or fewer

Summing hits over batches and all-reducing them over ranks gives the score of the whole split, each image
counted once (the evaluation loaders give each rank its own images).
"""
from __future__ import annotations

import torch

__all__ = ["topk_hits", "topk_percent"]


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[hits@1, hits@5, n] of logits [N, C] against labels [N] (float64; top-5 is top-C for C < 5)."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"topk_hits: need logits [N, C] and labels [N], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    labels = labels.to(logits.device)
    best = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return torch.stack([(best[:, 0] == labels).sum(), (best == labels[:, None]).any(1).sum(),
                        torch.tensor(labels.shape[0], device=logits.device)]).double()


def topk_percent(hits: torch.Tensor, num_classes: int) -> tuple[float, float | None]:
    """(top-1 %, top-5 % or None): top-5 means something only with more than 5 classes."""
    h1, h5, n = (float(v) for v in hits.tolist())
    if n <= 0:
        raise ValueError("topk_percent: no samples were scored")
    return 100.0 * h1 / n, (100.0 * h5 / n if num_classes > 5 else None)
