"""Modules over wslfast.ops. One module file per op family; this package re-exports them."""
from .loss import LinearSoftTargetCrossEntropy, SoftTargetCrossEntropy
from .conv_bn import ConvBNReLU

__all__ = ["SoftTargetCrossEntropy", "LinearSoftTargetCrossEntropy", "ConvBNReLU"]
