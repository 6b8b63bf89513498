"""Checkpoint files: atomic writes, keep-last pruning, and `--resume auto` that skips damaged files.

A checkpoint is one torch.save'd dict named ckpt_<step, 9 digits>.pt. It is written to a temporary file in
the same folder, fsync'ed, then renamed over its final name, so a crash or SIGKILL mid-write leaves either
the old set of files or the new one, never a half file under a checkpoint's name. Loading always uses
torch.load(weights_only=True): checkpoints may come from elsewhere and must not run code.
"""
from __future__ import annotations

import os
import re
import warnings

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError

__all__ = ["checkpoint_path", "list_checkpoints", "save_checkpoint", "load_checkpoint",
           "find_resumable", "CheckpointError", "load_weights"]

_NAME = re.compile(r"^ckpt_(\d{9,})\.pt$")
REQUIRED_KEYS = ("step", "model")


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"ckpt_{int(step):09d}.pt")


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """[(step, path)] of the checkpoint files in out_dir, oldest first (temporary files excluded)."""
    if not os.path.isdir(out_dir):
        return []
    found = []
    for name in os.listdir(out_dir):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def save_checkpoint(state: dict, out_dir: str, step: int, keep_last: int = 0) -> str:
    """Write state atomically as ckpt_<step>.pt in out_dir; then keep only the newest keep_last files
    (keep_last <= 0 keeps all). Returns the checkpoint's path."""
    if "step" not in state:
        raise ValueError("save_checkpoint: state must hold 'step'")
    os.makedirs(out_dir, exist_ok=True)
    final = checkpoint_path(out_dir, step)
    with atomic_write(final) as f:
        torch.save(state, f)
    if keep_last > 0:
        for _, old in list_checkpoints(out_dir)[:-keep_last]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
    return final


def _why_unreadable(e: Exception) -> str:
    """torch.load's exception as a short reason, without its advice to load untrusted files unsafely."""
    text = str(e)
    if "Weights only load failed" in text or "weights_only" in text:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({m.group(1)})" if m else ""
        return (f"it holds Python objects other than tensors and plain containers{what}, which are not loaded "
                f"for safety")
    if isinstance(e, (EOFError, RuntimeError)) and ("zip archive" in text or "central directory" in text
                                                     or isinstance(e, EOFError)):
        return "the file is truncated or damaged (not a whole torch.save archive)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:200]}"


def load_weights(path: str, map_location="cpu"):
    """torch.load(path, weights_only=True), with an unreadable file reported as one CheckpointError line."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # damaged zip, truncated file, disallowed pickle content, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {_why_unreadable(e)}") from e


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint dict, loaded with weights_only=True; CheckpointError if unreadable or incomplete."""
    state = load_weights(path, map_location)
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint "
                              f"(needs keys {', '.join(REQUIRED_KEYS)})")
    return state


def find_resumable(out_dir: str, map_location="cpu") -> tuple[str | None, dict | None]:
    """The newest checkpoint in out_dir that loads whole, as (path, state); (None, None) if none.

    Damaged files are skipped with a warning (they stay on disk for a post-mortem)."""
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"--resume auto: skipping {e}", RuntimeWarning, stacklevel=2)
    return None, None
