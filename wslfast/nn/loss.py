"""Loss modules over the sparse soft-target cross-entropy ops."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.soft_ce import linear_soft_target_cross_entropy, soft_target_cross_entropy
from ..sparse_targets import SparseTargets


class SoftTargetCrossEntropy(nn.Module):
    """loss(logits [B, V], targets: SparseTargets) -> softmax cross-entropy against the soft targets."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: SparseTargets) -> torch.Tensor:
        return soft_target_cross_entropy(logits, targets, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class LinearSoftTargetCrossEntropy(nn.Module):
    """A classifier (weight [V, D], bias [V]) fused with the loss: forward(features, targets) -> loss,
    never holding [B, V] logits. `logits(features)` gives them for evaluation."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, reduction: str = "mean",
                 chunk_size: int | None = None, device=None, dtype=None):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.reduction, self.chunk_size = reduction, chunk_size
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_classes, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as nn.Linear does
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, features: torch.Tensor, targets: SparseTargets) -> torch.Tensor:
        return linear_soft_target_cross_entropy(features, self.weight, self.bias, targets, self.reduction,
                                                self.chunk_size)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(features, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"bias={self.bias is not None}, reduction={self.reduction!r}")
