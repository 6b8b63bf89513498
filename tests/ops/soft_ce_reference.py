"""Independent float64 reference for the soft-target cross-entropy: a dense target built by
scatter-add from the raw (unsorted, possibly duplicated) rows, then plain log_softmax."""
import random

import torch


def random_rows(B, V, k_max, gen: random.Random, duplicates=True):
    """B rows of k in [0, k_max] ids (duplicates allowed), plus per-row positive weights."""
    rows, weights = [], []
    for _ in range(B):
        k = gen.randint(0, k_max)
        ids = [gen.randrange(V) for _ in range(k)]
        if duplicates and k >= 2 and gen.random() < 0.5:
            ids[-1] = ids[0]
        rows.append(ids)
        weights.append([gen.uniform(0.1, 2.0) for _ in ids])
    return rows, weights


def dense_target(rows, V, weights=None):
    t = torch.zeros(len(rows), V, dtype=torch.float64)
    for i, ids in enumerate(rows):
        for j, c in enumerate(ids):
            t[i, c] += (1.0 / len(ids)) if weights is None else weights[i][j]
    return t


def reference_loss(logits, dense, reduction="mean"):
    """loss_i = sum_c t_ic (lse_i - z_ic), rows with no target excluded from the mean."""
    z = logits.double()
    rows = -(dense * torch.log_softmax(z, dim=-1)).sum(-1)
    has = dense.ne(0).any(-1) if dense.numel() else torch.zeros(dense.shape[0], dtype=torch.bool)
    rows = torch.where(has, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / has.sum().clamp(min=1)
