"""Public functional ops. Each op family lives in its own module; this package re-exports them.

Loading wslfast._C registers the torch.ops.wslfast kernels (CPU always, CUDA when compiled).
"""
from ..sparse_targets import SparseTargets
from .soft_ce import linear_soft_target_cross_entropy, soft_target_cross_entropy
from .conv_bn import conv_bn_relu

__all__ = ["SparseTargets", "soft_target_cross_entropy", "linear_soft_target_cross_entropy", "conv_bn_relu"]
