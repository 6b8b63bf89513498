"""The pretraining objective as one module, so DistributedDataParallel sees the whole forward pass.

forward(images, targets) -> scalar loss: the backbone's pooled features, then the classifier and the
soft-target softmax cross-entropy (1/k on each of an image's k hashtags). With fused=True the classifier
is fused into the loss (wslfast.ops.linear_soft_target_cross_entropy: no [B, V] logits); with fused=False
it is stock PyTorch: model.fc, a dense target from targets.to_dense(), and -(t * log_softmax(z)).sum(-1)
averaged over the images that have targets (the comparison baseline).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HashtagObjective", "dense_soft_target_cross_entropy"]


def dense_soft_target_cross_entropy(logits: torch.Tensor, dense_targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows with any target of -(t * log_softmax(z)).sum(-1); stock PyTorch, fp32 softmax."""
    per_row = -(dense_targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)  # 0 on rows without targets
    rows_with_targets = (dense_targets.sum(-1) > 0).sum().clamp(min=1)
    return per_row.sum() / rows_with_targets  # no host sync (boolean indexing would add one)


class HashtagObjective(nn.Module):
    def __init__(self, model: nn.Module, fused: bool = True):
        super().__init__()
        for attr in ("forward_features", "fc"):
            if not hasattr(model, attr):
                raise TypeError(f"HashtagObjective: the model needs .{attr} (a wslfast.models ResNeXt)")
        self.model = model
        self.fused = fused

    def forward(self, images: torch.Tensor, targets) -> torch.Tensor:
        features = self.model.forward_features(images)
        if self.fused:
            from wslfast.ops import linear_soft_target_cross_entropy
            weight, bias = self.model.fc.weight, self.model.fc.bias
            if weight.dtype != features.dtype:  # under autocast, as F.linear would: classifier in bf16
                weight = weight.to(features.dtype)
                bias = bias.to(features.dtype) if bias is not None else None
            return linear_soft_target_cross_entropy(features, weight, bias, targets, reduction="mean")
        return dense_soft_target_cross_entropy(self.model.fc(features), targets.to_dense())
