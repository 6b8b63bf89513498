"""Modules over wslfast.ops. One module file per op family; this package re-exports them."""
from .loss import LinearSoftTargetCrossEntropy, SoftTargetCrossEntropy

__all__ = ["SoftTargetCrossEntropy", "LinearSoftTargetCrossEntropy"]
