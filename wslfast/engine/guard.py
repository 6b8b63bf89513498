"""Non-finite steps: detect them, undo what the forward pass changed, skip the update, stop after N in a row.

A batch whose loss or gradients hold inf/NaN must not reach the weights. The optimizer step is skipped, and
the BatchNorm running statistics the forward pass already updated are put back from a snapshot taken before
it (buffers are small: a few hundred KB for ResNeXt-101). After max_consecutive such steps in a row the run
is beyond saving by skipping, and NonFiniteLossError says so; the last good checkpoint stays on disk.
"""
from __future__ import annotations

import torch

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "nonfinite_flag"]


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row."""


def nonfinite_flag(loss: torch.Tensor, params) -> torch.Tensor:
    """A 0-d float tensor on the loss's device: 1 if the loss or any gradient holds inf/NaN, else 0.
    No host sync here; the caller reads it together with other per-step flags."""
    grads = [p.grad for p in params if p.grad is not None]
    bad = ~torch.isfinite(loss.detach().float()).all()
    if grads:
        norms = torch._foreach_norm(grads)
        bad = bad | ~torch.isfinite(torch.stack([n.float() for n in norms])).all()
    return bad.float()


class NonFiniteGuard:
    def __init__(self, module: torch.nn.Module, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.buffers = list(module.buffers())
        self.backup = [b.detach().clone() for b in self.buffers]
        self.skipped = 0      # over the whole run (saved in checkpoints)
        self.consecutive = 0  # in the current streak

    def snapshot(self) -> None:
        """Copy the buffers aside; call before each forward pass."""
        if self.buffers:
            torch._foreach_copy_(self.backup, [b.detach() for b in self.buffers])

    def record(self, nonfinite: bool, step: int) -> bool:
        """Account for one step's outcome; returns True if the optimizer step must be skipped.
        On a non-finite step the buffers are restored; NonFiniteLossError after max_consecutive in a row."""
        if not nonfinite:
            self.consecutive = 0
            return False
        if self.buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, self.backup)
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"step {step}: loss or gradients were non-finite for {self.consecutive} steps in a row "
                f"({self.skipped} skipped in all); stopping. The last good checkpoint is kept; lower the "
                f"learning rate or check the data before resuming.")
        return True

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
