"""Rank 0's metrics: a JSONL file, TensorBoard scalars and a console line (with a progress bar on a tty).

Every other rank gets a logger with enabled=False, which does nothing, so call sites need no rank checks.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

__all__ = ["MetricsLogger", "format_line"]


def _fmt(key: str, value) -> str:
    if isinstance(value, float):
        if key == "lr":
            return f"{key} {value:.4g}"
        if key.endswith("per_s"):
            return f"{key} {value:,.1f}"
        if key.endswith("share"):
            return f"{key} {100 * value:.0f}%"
        return f"{key} {value:.4f}" if abs(value) < 1000 else f"{key} {value:,.0f}"
    return f"{key} {value}"


def format_line(step: int, total_steps: int, values: dict) -> str:
    width = len(str(total_steps))
    return f"step {step:>{width}}/{total_steps} | " + " | ".join(_fmt(k, v) for k, v in values.items())


class MetricsLogger:
    def __init__(self, out_dir: str, enabled: bool = True, total_steps: int = 0, tensorboard: bool = True,
                 progress: bool | None = None, start_step: int = 0, stream=None):
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self._jsonl = self._tb = self._bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=os.path.join(out_dir, "tensorboard"))
            except ImportError:
                print("metrics: tensorboard is not installed; writing JSONL only", file=self.stream)
        if progress is None:
            progress = hasattr(self.stream, "isatty") and self.stream.isatty()
        if progress and total_steps > 0:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                                 file=self.stream, leave=False)
            except ImportError:
                self._bar = None

    def log(self, step: int, values: dict, print_line: bool = True) -> None:
        """Record values (numbers, or strings) for step: one JSONL record, TensorBoard scalars, a line."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        for k, v in values.items():
            record[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if print_line:
            self.print(format_line(step, self.total_steps, values))

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._jsonl = self._tb = self._bar = None
