"""ConvBNReLU: nn.Conv2d + nn.BatchNorm2d (+ ReLU) run as one fused op (wslfast.ops.conv_bn_relu).

The parameters stay in `.conv` and `.bn`, so state_dicts keep PyTorch's names and any Conv2d/BatchNorm2d
pair can be fused in place with `ConvBNReLU.from_modules(conv, bn)`. `fused_conv_bn(conv, bn, x, relu)`
is the same forward for models that keep their own conv/bn attributes (wslfast.models.resnext).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..ops.conv_bn import conv_bn_relu

__all__ = ["ConvBNReLU", "fused_conv_bn"]


def _check_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"ConvBNReLU needs an nn.Conv2d and an nn.BatchNorm2d, got {type(conv).__name__} and "
                        f"{type(bn).__name__}")
    if conv.bias is not None:
        raise ValueError("ConvBNReLU: the conv must have bias=False (BatchNorm's shift replaces it)")
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("ConvBNReLU: only dilation 1 and numeric zero padding are supported, got "
                         f"dilation={conv.dilation}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        raise ValueError(f"ConvBNReLU: stride and padding must be the same along H and W, got stride={conv.stride}, "
                         f"padding={conv.padding}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"ConvBNReLU: BatchNorm has {bn.num_features} features, the conv {conv.out_channels} outputs")
    if not bn.affine:
        raise ValueError("ConvBNReLU: the BatchNorm must be affine (have weight and bias)")


def fused_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, relu: bool = True,
                  residual: Tensor | None = None) -> Tensor:
    """relu?(bn(conv(x)) (+ residual)) through the fused op, with nn.BatchNorm2d's own bookkeeping
    (momentum=None means a cumulative average; track_running_stats=False means batch statistics in eval
    too)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return conv_bn_relu(x, conv.weight, bn.weight, bn.bias, bn.running_mean if track else None,
                        bn.running_var if track else None, stride=conv.stride[0], padding=conv.padding[0],
                        groups=conv.groups, training=use_batch_stats, momentum=momentum, eps=bn.eps, relu=relu,
                        residual=residual)


class ConvBNReLU(nn.Module):
    """Conv2d(bias=False) -> BatchNorm2d -> ReLU (optional) in one fused op."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1, relu: bool = True, eps: float = 1e-5,
                 momentum: float | None = 0.1, device=None, dtype=None):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False,
                              device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.relu = relu
        _check_pair(self.conv, self.bn)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool = True) -> "ConvBNReLU":
        """Wraps existing modules (sharing their parameters and buffers, not copying them)."""
        _check_pair(conv, bn)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.conv, module.bn, module.relu = conv, bn, relu
        return module

    def forward(self, x: Tensor) -> Tensor:
        return fused_conv_bn(self.conv, self.bn, x, self.relu)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"
