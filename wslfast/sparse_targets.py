"""SparseTargets: the multi-hot soft targets of a batch in CSR form (no dense [B, V] tensor).

Row i holds k_i >= 0 class ids with weights (default 1/k_i each: the paper's 1/k target). On construction
the rows are validated and made canonical: ids sorted within a row, duplicates merged by adding their
weights (what a dense target built by scatter-add holds). The kernels rely on that canonical form.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

__all__ = ["SparseTargets"]


class SparseTargets:
    """indices int64 [nnz], offsets int64 [B+1], weights float32 [nnz], num_classes V."""

    __slots__ = ("indices", "offsets", "weights", "num_classes")

    def __init__(self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None,
                 num_classes: int | None = None, *, canonical: bool = False):
        if num_classes is None:
            raise ValueError("SparseTargets: num_classes is required")
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"SparseTargets: num_classes must be a positive int, got {num_classes!r}")
        for name, t in (("indices", indices), ("offsets", offsets)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"SparseTargets: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
                raise TypeError(f"SparseTargets: {name} must be a 1-D int32/int64 tensor, "
                                f"got {t.dtype} with shape {tuple(t.shape)}")
        if offsets.numel() < 1:
            raise ValueError("SparseTargets: offsets must have B+1 >= 1 entries")
        if indices.device != offsets.device:
            raise ValueError(f"SparseTargets: indices on {indices.device} but offsets on {offsets.device}")
        indices, offsets = indices.long(), offsets.long()
        nnz = indices.numel()
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or not weights.is_floating_point():
                raise TypeError("SparseTargets: weights must be a 1-D floating tensor")
            if weights.numel() != nnz:
                raise ValueError(f"SparseTargets: weights has {weights.numel()} entries but indices has {nnz}")
            weights = weights.to(device=indices.device, dtype=torch.float32)
        self.num_classes = int(num_classes)
        self._validate(indices, offsets, weights, canonical)
        counts = offsets[1:] - offsets[:-1]
        if weights is None:
            per_row = 1.0 / counts.clamp(min=1).to(torch.float32)
            weights = torch.repeat_interleave(per_row, counts, output_size=nnz)
        if not canonical:
            indices, offsets, weights = self._canonicalize(indices, counts, weights)
        self.indices, self.offsets, self.weights = indices, offsets, weights

    def _validate(self, indices, offsets, weights, canonical=False):
        """All checks in one device->host copy, so a CUDA batch costs a single sync. canonical=True promises
        sorted, unique ids per row: that is checked too (the kernels rely on it)."""
        nnz, V = indices.numel(), self.num_classes
        never = offsets[0] != offsets[0]
        unsorted = never
        if canonical and nnz > 1:
            # An id must exceed its predecessor unless it starts a row (offsets clamped: bad offsets are
            # reported by the checks before this one; empty rows at the end mark position nnz).
            starts = torch.zeros(nnz + 1, dtype=torch.bool, device=indices.device)
            starts.index_fill_(0, offsets[:-1].clamp(0, nnz), True)
            unsorted = ((indices[1:] <= indices[:-1]) & ~starts[1:nnz]).any()
        checks = [
            offsets[0] != 0,
            offsets[-1] != nnz,
            (offsets[1:] < offsets[:-1]).any() if offsets.numel() > 1 else never,
            ((indices < 0) | (indices >= V)).any() if nnz else never,
            (~torch.isfinite(weights)).any() if weights is not None and nnz else never,
            unsorted,
        ]
        bad = torch.stack([c.reshape(()) for c in checks]).tolist()
        if bad[0]:
            raise ValueError(f"SparseTargets: offsets must start at 0, got {int(offsets[0])}")
        if bad[1]:
            raise ValueError(f"SparseTargets: offsets must end at nnz={nnz}, got {int(offsets[-1])}")
        if bad[2]:
            raise ValueError("SparseTargets: offsets must be non-decreasing")
        if bad[3]:
            lo, hi = int(indices.min()), int(indices.max())
            raise ValueError(f"SparseTargets: class ids must lie in [0, {V}), got ids in [{lo}, {hi}]")
        if bad[4]:
            raise ValueError("SparseTargets: weights must be finite")
        if bad[5]:
            raise ValueError("SparseTargets: canonical=True but the ids of a row are not sorted and unique")

    def _canonicalize(self, indices, counts, weights):
        """Sort ids within each row and merge duplicates (adding weights)."""
        B, nnz, V = counts.numel(), indices.numel(), self.num_classes
        if nnz == 0:
            return indices, torch.cat([counts.new_zeros(1), counts.cumsum(0)]), weights
        rows = torch.repeat_interleave(torch.arange(B, device=indices.device), counts, output_size=nnz)
        key, order = torch.sort(rows * V + indices, stable=True)
        uniq, inverse = torch.unique_consecutive(key, return_inverse=True)
        merged = torch.zeros(uniq.numel(), dtype=torch.float32, device=indices.device)
        merged.index_add_(0, inverse, weights[order])
        new_counts = torch.bincount(uniq // V, minlength=B)
        offsets = torch.cat([counts.new_zeros(1), new_counts.cumsum(0)])
        return uniq % V, offsets, merged

    @classmethod
    def from_lists(cls, rows: Iterable[Sequence[int]], num_classes: int, weights=None,
                   device: torch.device | str | None = None) -> "SparseTargets":
        """[[3, 17], [5], []] -> targets; weights, if given, is a list of per-row weight lists."""
        rows = [list(r) for r in rows]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        flat = [int(c) for r in rows for c in r]
        indices = torch.tensor(flat, dtype=torch.int64)
        w = None
        if weights is not None:
            weights = [list(r) for r in weights]
            if [len(r) for r in weights] != counts.tolist():
                raise ValueError("SparseTargets.from_lists: weights must have the same row lengths as rows")
            w = torch.tensor([float(x) for r in weights for x in r], dtype=torch.float32)
        t = cls(indices, offsets, w, num_classes)
        return t.to(device) if device is not None else t

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device, non_blocking: bool = False) -> "SparseTargets":
        """The same targets on `device` (already canonical: nothing is re-validated)."""
        out = object.__new__(SparseTargets)
        out.indices = self.indices.to(device, non_blocking=non_blocking)
        out.offsets = self.offsets.to(device, non_blocking=non_blocking)
        out.weights = self.weights.to(device, non_blocking=non_blocking)
        out.num_classes = self.num_classes
        return out

    def row_counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        """The [B, V] dense target (for references and stock-PyTorch baselines only)."""
        B = self.batch_size
        rows = torch.repeat_interleave(torch.arange(B, device=self.device), self.row_counts(),
                                       output_size=self.indices.numel())
        dense = torch.zeros(B, self.num_classes, dtype=dtype, device=self.device)
        dense.index_put_((rows, self.indices), self.weights.to(dtype), accumulate=True)
        return dense

    def __repr__(self) -> str:
        return (f"SparseTargets(batch_size={self.batch_size}, num_classes={self.num_classes}, "
                f"nnz={self.indices.numel()}, device={self.device})")
