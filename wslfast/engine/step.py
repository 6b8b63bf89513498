"""What every training loop does around its forward pass: the guarded update, endless batches, the weight
check before a checkpoint, and the exit when a peer rank dies. Shared by train/pretrain.py and
wslfast.transfer.finetune, so that a fix to one is a fix to both."""
from __future__ import annotations

import os
import sys

import torch

from .distributed import DistInfo, all_ranks_max, gather_objects, params_digest, peer_failure
from .guard import NonFiniteGuard, NonFiniteLossError, nonfinite_flag

__all__ = ["guarded_update", "endless", "checked_digest", "exit_on_peer_failure"]


def guarded_update(loss: torch.Tensor, optimizer, guard: NonFiniteGuard, info: DistInfo, step: int,
                   stop_requested: bool = False) -> tuple[torch.Tensor, bool, bool]:
    """Backward, then one small all-reduce so that every rank agrees on skipping a non-finite step (the guard
    puts back the BN statistics its forward changed) and on stopping, then the update. The caller took
    guard.snapshot() before the forward. Returns (loss detached, skipped, stop)."""
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    flags = torch.stack([nonfinite_flag(loss, params), torch.tensor(float(stop_requested), device=loss.device)])
    nonfinite, stop = all_ranks_max(info, flags).tolist()
    skipped = guard.record(nonfinite > 0, step)
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), skipped, stop > 0


def endless(loader, what: str = "the data loader"):
    """Endless batches over epochs. A pass may legitimately be empty (resumed at the very end of an epoch,
    whose last partial batch the loader runs but does not yield); two empty passes in a row mean no data."""
    empty_passes = 0
    while empty_passes < 2:
        empty_passes += 1
        for batch in loader:
            empty_passes = 0
            yield batch
    raise RuntimeError(f"{what} yielded no batch: is the data empty?")


def checked_digest(info: DistInfo, model: torch.nn.Module, step: int) -> str:
    """The weights' digest, the same on every rank, before a checkpoint is written: NonFiniteLossError when
    a weight is inf/NaN (the last good checkpoint is kept), RuntimeError when the replicas differ. Every rank
    sees every digest, so all stop together."""
    digests = gather_objects(info, params_digest(model))
    if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
        raise NonFiniteLossError(f"step {step}: the weights hold inf/NaN (an update overflowed); not writing a "
                                 f"checkpoint, the last good one is kept")
    if len(set(digests)) != 1:
        raise RuntimeError(f"step {step}: replicas diverged (weight digests {digests})")
    return digests[0]


def exit_on_peer_failure(e: BaseException, info: DistInfo, debug: bool = False) -> None:
    """Called on an exception out of the training loop: when another rank died (a failed collective), one line
    and an immediate exit(1), with no teardown that could wait on the dead peer (torchrun restarts the
    workers); otherwise returns, and the caller re-raises."""
    why = peer_failure(e) if info.enabled and not debug else None
    if why is None:
        return
    print(f"error: rank {info.rank}: {why}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
