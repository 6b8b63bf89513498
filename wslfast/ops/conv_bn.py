"""Fused convolution + BatchNorm + ReLU (csrc/conv_bn): the public op and its fake kernels.

    y = conv_bn_relu(x, weight, bn_weight, bn_bias, running_mean, running_var,
                     stride=1, padding=1, groups=32, training=True, momentum=0.1, eps=1e-5, relu=True)

has the value and the gradients (x, weight, bn_weight, bn_bias) of
``F.relu(F.batch_norm(F.conv2d(x, weight, None, stride, padding, 1, groups), running_mean, running_var,
bn_weight, bn_bias, training, momentum, eps))`` and updates the running statistics in place in training
(unbiased variance, as PyTorch). ``residual=r`` (the output's shape and dtype) adds r before the ReLU,
``relu(bn(conv(x)) + r)``, a ResNet block's tail in the same pass, with r's gradient. Supported: any kernel size, stride and padding, dilation 1, no conv
bias, groups dividing both channel counts; float32/bfloat16/float16 storage (float64 on CPU) with float32
statistics; contiguous or channels_last input (channels_last is the fast path; CUDA returns
channels_last). Under autocast, x and weight are cast to the autocast dtype as F.conv2d would be.

On CUDA the convolutions are our own kernels, not cuDNN: with channels per group (in and out) a multiple
of 4 they run the tensor-core implicit GEMM (bf16/fp16 operands; float32 storage as TF32 operands, as
cuDNN does by default, unless torch.backends.cudnn.allow_tf32 is off), with the batch statistics in its
epilogue and, in the backward, the BN+ReLU gradient formed inside the data- and weight-gradient kernels'
loaders, so it is never stored. Anything else (fewer channels per group, float32 with TF32 off) runs the
simple reference kernels, correct but slow. One small kernel turns the batch sums into the statistics
and coefficients (forward and backward). WSLFAST_CONV_BN_IMPL=simple|fast|auto forces a choice (the GPU
tests compare them).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import _ext  # noqa: F401  (registers torch.ops.wslfast)

__all__ = ["conv_bn_relu"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _coef_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _out_hw(x: Tensor, weight: Tensor, stride: int, padding: int):
    return ((x.shape[2] + 2 * padding - weight.shape[2]) // stride + 1,
            (x.shape[3] + 2 * padding - weight.shape[3]) // stride + 1)


def _activation_format(x: Tensor) -> torch.memory_format:
    # What the kernels return: channels_last on CUDA; on CPU the format x suggests.
    if x.device.type == "cuda":
        return torch.channels_last
    from torch._prims_common import suggest_memory_format
    return suggest_memory_format(x)


def _grad_like(t: Tensor) -> Tensor:
    from torch._prims_common import suggest_memory_format
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=suggest_memory_format(t))


# ---- fake (meta) kernels: shapes, dtypes and strides for torch.compile and opcheck ----

@torch.library.register_fake("wslfast::conv_bn_relu_train")
def _train_fake(x, weight, bn_weight, bn_bias, residual, stride, padding, groups, eps, relu):
    p, q = _out_hw(x, weight, stride, padding)
    k = weight.shape[0]
    fmt = _activation_format(x)
    y = torch.empty((x.shape[0], k, p, q), dtype=x.dtype, device=x.device, memory_format=fmt)
    z = torch.empty((x.shape[0], k, p, q), dtype=x.dtype, device=x.device, memory_format=fmt)
    stats = [x.new_empty((k,), dtype=_coef_dtype(x)) for _ in range(2)]
    return y, z, stats[0], stats[1]


@torch.library.register_fake("wslfast::conv_bn_relu_eval")
def _eval_fake(x, weight, bn_weight, bn_bias, running_mean, running_var, residual, stride, padding, groups, eps,
               relu):
    p, q = _out_hw(x, weight, stride, padding)
    return torch.empty((x.shape[0], weight.shape[0], p, q), dtype=x.dtype, device=x.device,
                       memory_format=_activation_format(x))


@torch.library.register_fake("wslfast::conv_bn_relu_train_backward")
def _train_backward_fake(grad_y, x, weight, z, bn_weight, bn_bias, mean, var, stride, padding, groups, eps,
                         relu):
    return _grad_like(x), _grad_like(weight), bn_weight.new_empty(bn_weight.shape), bn_bias.new_empty(bn_bias.shape)


@torch.library.register_fake("wslfast::conv_bn_relu_eval_backward")
def _eval_backward_fake(grad_y, y, x, weight, bn_weight, running_mean, running_var, stride, padding, groups, eps,
                        relu):
    return (_grad_like(x), _grad_like(weight), bn_weight.new_empty(bn_weight.shape),
            bn_weight.new_empty(bn_weight.shape))


@torch.library.register_fake("wslfast::bn_update_running_stats")
def _running_stats_fake(running_mean, running_var, mean, var, momentum, count):
    return None


# Autograd is registered in C++ (csrc/conv_bn/conv_bn_autograd.cpp): a Python formula cost ~0.1 ms of host
# time per layer and step.


# ---- the public op ----

def _check(x: Tensor, weight: Tensor, stride: int, padding: int, groups: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"conv_bn_relu: x must be a 4-D tensor [N, C, H, W], got {getattr(x, 'shape', type(x))}")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"conv_bn_relu: weight must be 4-D [K, C/groups, R, S], got {getattr(weight, 'shape', None)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"conv_bn_relu: x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if x.dtype != weight.dtype:
        raise TypeError(f"conv_bn_relu: weight dtype {weight.dtype} must match x dtype {x.dtype}")
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("groups", groups, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"conv_bn_relu: {name} must be an int >= {lo}, got {v!r}")
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"conv_bn_relu: x has {x.shape[1]} channels and weight {tuple(weight.shape)}; with "
                         f"groups={groups} x needs weight.shape[1] * groups channels and weight.shape[0] must "
                         "divide by groups")


_warned_float32_cuda = False


def _warn_float32_cuda() -> None:
    global _warned_float32_cuda
    if not _warned_float32_cuda:
        _warned_float32_cuda = True
        warnings.warn("wslfast conv_bn_relu: float32 on CUDA with torch.backends.cudnn.allow_tf32 = False runs the "
                      "simple reference kernels, which keep full float32 but are slow; allow TF32 or train under "
                      "torch.autocast('cuda', dtype=torch.bfloat16) for the tensor-core kernels", stacklevel=3)


def conv_bn_relu(x: Tensor, weight: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                 running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None, *,
                 stride: int = 1, padding: int = 1, groups: int = 32, training: bool = True,
                 momentum: float = 0.1, eps: float = 1e-5, relu: bool = True,
                 residual: Optional[Tensor] = None) -> Tensor:
    """relu(batch_norm(conv2d(x, weight)) + residual) in one fused op (no residual: relu(batch_norm(...)));
    see the module docstring."""
    autocast = torch.is_autocast_enabled(x.device.type)
    if autocast:
        dt = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dt), weight.to(dt)
    _check(x, weight, stride, padding, groups)
    p, q = _out_hw(x, weight, stride, padding)
    if residual is not None:
        want = (x.shape[0], weight.shape[0], p, q)
        if not isinstance(residual, Tensor) or tuple(residual.shape) != want:
            raise ValueError(f"conv_bn_relu: residual must have the output's shape {list(want)}, got "
                             f"{list(getattr(residual, 'shape', [])) or type(residual).__name__}")
        if autocast:
            residual = residual.to(x.dtype)
        if residual.dtype != x.dtype:
            raise TypeError(f"conv_bn_relu: residual dtype {residual.dtype} must match x dtype {x.dtype}")
    if x.is_cuda and x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        _warn_float32_cuda()
    if (running_mean is None) != (running_var is None):
        raise ValueError("conv_bn_relu: give both running_mean and running_var, or neither")
    if not training:
        if running_mean is None:
            raise ValueError("conv_bn_relu: eval mode (training=False) needs running_mean and running_var")
        return torch.ops.wslfast.conv_bn_relu_eval(x, weight, bn_weight, bn_bias, running_mean, running_var, residual,
                                                   stride, padding, groups, float(eps), bool(relu))
    count = x.shape[0] * p * q
    if count <= 1:
        raise ValueError("Expected more than 1 value per channel when training, got output size "
                         f"{[x.shape[0], weight.shape[0], p, q]}")
    y, _, mean, var = torch.ops.wslfast.conv_bn_relu_train(x, weight, bn_weight, bn_bias, residual, stride, padding,
                                                           groups, float(eps), bool(relu))
    if running_mean is not None:
        torch.ops.wslfast.bn_update_running_stats(running_mean, running_var, mean, var, float(momentum), count)
    return y
