"""SyncBatchNorm that also works on CPU (gloo), for `--sync-bn`.

torch.nn.SyncBatchNorm runs on GPUs only. GlobalBatchNorm2d computes the batch statistics over all ranks
with differentiable all-reduces (torch.distributed.nn), so autograd carries the gradient of the shared
mean and variance back to every rank. It subclasses nn.BatchNorm2d: state_dicts are unchanged, and outside
training, or without a process group of several ranks, it is plain BatchNorm. On CUDA,
convert_sync_batchnorm uses PyTorch's fused SyncBatchNorm instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn import functional as dist_fn

__all__ = ["GlobalBatchNorm2d", "convert_sync_batchnorm"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"GlobalBatchNorm2d expects [N, C, H, W] input, got shape {tuple(x.shape)}")
        C = x.shape[1]
        xf = x.float()
        count = torch.full((1,), float(x.numel() // C), device=x.device)
        # Two passes (mean, then centred squares) keep the variance accurate for large means.
        sums = dist_fn.all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = sums[C]
        mean = sums[:C] / n
        centred = xf - mean.view(1, C, 1, 1)
        var = dist_fn.all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n
        y = centred * torch.rsqrt(var + self.eps).view(1, C, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every nn.BatchNorm2d in module replaced by a batch-synchronised one (weights and buffers kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, device=device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module
