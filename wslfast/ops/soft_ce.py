"""Sparse multi-hot soft-target softmax cross-entropy, plain and with the classifier fused in.

    loss_i = sum_j w_ij * (logsumexp(z_i) - z_i[t_ij])      (w_ij = 1/k_i by default: the paper's target)

Rows without targets have loss 0 and zero gradient and do not count in the "mean". The dense [B, V]
target is never built; `linear_soft_target_cross_entropy` never builds the [B, V] logits either.
"""
from __future__ import annotations

import torch

from .. import _ext  # noqa: F401  (registers torch.ops.wslfast)
from ..sparse_targets import SparseTargets

__all__ = ["soft_target_cross_entropy", "linear_soft_target_cross_entropy", "default_chunk_size"]

_REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---- fake (meta) kernels: shapes and dtypes for torch.compile and opcheck ----

# Partials and lse are float64 (W * lse - dot cancels in fp32 for large logits); the loss is fp32
# (fp64 for fp64 input).
@torch.library.register_fake("wslfast::soft_ce_partials")
def _partials_fake(logits, indices, offsets, weights, col_begin):
    rows = logits.shape[0]
    return tuple(logits.new_empty((rows,), dtype=torch.float64) for _ in range(4))


@torch.library.register_fake("wslfast::soft_ce")
def _soft_ce_fake(logits, indices, offsets, weights):
    rows = logits.shape[0]
    return (logits.new_empty((rows,), dtype=_acc_dtype(logits)),
            logits.new_empty((rows,), dtype=torch.float64))


@torch.library.register_fake("wslfast::soft_ce_reduced")
def _soft_ce_reduced_fake(logits, indices, offsets, weights, reduction):
    rows = logits.shape[0]
    return (logits.new_empty((), dtype=_acc_dtype(logits)), logits.new_empty((rows,), dtype=torch.float64),
            logits.new_empty((), dtype=torch.float32))


@torch.library.register_fake("wslfast::soft_ce_backward")
def _soft_ce_backward_fake(grad_rows, logits, lse, indices, offsets, weights, col_begin, norm=None):
    return logits.new_empty(logits.shape)


@torch.library.register_fake("wslfast::linear_soft_ce")
def _linear_fake(features, weight, bias, indices, offsets, weights, chunk_size):
    rows = features.shape[0]
    return (features.new_empty((rows,), dtype=_acc_dtype(features)),
            features.new_empty((rows,), dtype=torch.float64))


@torch.library.register_fake("wslfast::linear_soft_ce_reduced")
def _linear_reduced_fake(features, weight, bias, indices, offsets, weights, chunk_size, reduction):
    rows = features.shape[0]
    return (features.new_empty((), dtype=_acc_dtype(features)), features.new_empty((rows,), dtype=torch.float64),
            features.new_empty((), dtype=torch.float32))


@torch.library.register_fake("wslfast::soft_ce_finish")
def _finish_fake(parts, offsets, reduction, loss_dtype):
    rows = parts.shape[2]
    return (parts.new_empty((rows,) if reduction == "none" else (), dtype=loss_dtype),
            parts.new_empty((rows,), dtype=torch.float64), parts.new_empty((), dtype=torch.float32))


@torch.library.register_fake("wslfast::linear_soft_ce_backward")
def _linear_backward_fake(grad_rows, features, weight, bias, lse, indices, offsets, weights, chunk_size, norm=None):
    grad_bias = None if bias is None else bias.new_empty(bias.shape)
    return features.new_empty(features.shape), weight.new_empty(weight.shape), grad_bias


# Autograd is registered in C++ (csrc/soft_ce/soft_ce_autograd.cpp): the per-row upstream gradient goes
# straight into the fused backward kernels, without a Python autograd Function's host time per call.


# ---- public API ----

def _check_targets(targets, batch: int, num_classes: int, device: torch.device, fn: str) -> None:
    if not isinstance(targets, SparseTargets):
        raise TypeError(f"{fn}: targets must be a wslfast.ops.SparseTargets, got {type(targets).__name__}")
    if targets.batch_size != batch:
        raise ValueError(f"{fn}: {batch} rows of input but targets has batch_size {targets.batch_size}")
    if targets.num_classes != num_classes:
        raise ValueError(f"{fn}: {num_classes} classes in the input but targets has num_classes "
                         f"{targets.num_classes}")
    if targets.device != device:
        raise ValueError(f"{fn}: input on {device} but targets on {targets.device}")


def _check_float(name: str, t, fn: str, dims: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float32, bfloat16 or float16, got {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{fn}: {name} must be {dims}-D, got shape {tuple(t.shape)}")


def _check_reduction(reduction: str, fn: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def soft_target_cross_entropy(logits: torch.Tensor, targets: SparseTargets,
                              reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy of logits [B, V] against sparse soft targets; loss in fp32 (fp64 for fp64)."""
    fn = "soft_target_cross_entropy"
    _check_reduction(reduction, fn)
    _check_float("logits", logits, fn, 2)
    _check_targets(targets, logits.shape[0], logits.shape[1], logits.device, fn)
    if reduction == "none":
        return torch.ops.wslfast.soft_ce(logits, targets.indices, targets.offsets, targets.weights)[0]
    # Reduced inside the op (the mean over rows with targets): on CUDA the forward is two kernel launches and
    # the backward one, where a sum and a mean's few small ops here would cost more launches than the loss.
    return torch.ops.wslfast.soft_ce_reduced(logits, targets.indices, targets.offsets, targets.weights, reduction)[0]


def default_chunk_size(batch: int, num_classes: int, dtype: torch.dtype, budget_bytes: int = 64 << 20) -> int:
    """Vocabulary columns per chunk so one [B, chunk] block of logits takes about `budget_bytes`
    (a multiple of 8, so rows stay 16-byte aligned for the vectorized kernels)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    cols = budget_bytes // max(1, batch * itemsize)
    cols = max(256, cols // 8 * 8)
    return int(min(cols, num_classes))


def linear_soft_target_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                     targets: SparseTargets, reduction: str = "mean",
                                     chunk_size: int | None = None) -> torch.Tensor:
    """soft_target_cross_entropy(features @ weight.T + bias, targets) without the [B, V] logits.

    features [B, D], weight [V, D], bias [V] or None; gradients for all three. Extra memory is
    O(B x chunk_size); the default chunk keeps one block of logits near 64 MiB.
    """
    fn = "linear_soft_target_cross_entropy"
    _check_reduction(reduction, fn)
    _check_float("features", features, fn, 2)
    _check_float("weight", weight, fn, 2)
    if bias is not None:
        _check_float("bias", bias, fn, 1)
    _check_targets(targets, features.shape[0], weight.shape[0], features.device, fn)
    if chunk_size is None:
        chunk_size = default_chunk_size(features.shape[0], weight.shape[0], features.dtype)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
    if reduction == "none":
        return torch.ops.wslfast.linear_soft_ce(features, weight, bias, targets.indices, targets.offsets,
                                                targets.weights, chunk_size)[0]
    return torch.ops.wslfast.linear_soft_ce_reduced(features, weight, bias, targets.indices, targets.offsets,
                                                    targets.weights, chunk_size, reduction)[0]
