"""Rank 0's metrics: a JSONL file, TensorBoard scalars and a console line (with a progress bar on a tty).

Every other rank gets a logger with enabled=False, which does nothing, so call sites need no rank checks.
Each line carries the time since this process started training and an ETA for the rest of the run. A run
continued from step s first drops the records after s from metrics.jsonl (they belong to steps that are
about to be trained again), so the file holds each step once; `first` keeps the run's first record.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

__all__ = ["MetricsLogger", "format_line", "format_duration", "peak_memory"]


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


def format_duration(seconds: float) -> str:
    """3725.4 -> '1:02:05', 65 -> '1:05', 7.25 -> '7.2s'."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def peak_memory(device) -> str:
    """This process's peak memory: the CUDA caching allocator's peak on a GPU, else the peak resident set."""
    import torch

    if getattr(device, "type", device) == "cuda" and torch.cuda.is_available():
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return f"peak memory (RSS) {kib / 2**20:.2f} GiB"
    except (ImportError, OSError):
        return "peak memory unknown"


def _truncate_jsonl(path: str, after_step: int) -> dict | None:
    """Drop the records of metrics.jsonl with step > after_step (and unreadable lines); returns the first
    record kept, or None."""
    if not os.path.isfile(path):
        return None
    kept, first = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                step = int(rec["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if step <= after_step:
                kept.append(line if line.endswith("\n") else line + "\n")
                first = first or rec
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return first


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
        self.start_step, self.t0 = start_step, time.perf_counter()
        self.first: dict | None = None  # the run's first record (kept across resumes)
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "metrics.jsonl")
        self.first = _truncate_jsonl(path, start_step)
        self._jsonl = open(path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # purge_step: events of steps about to be trained again are dropped, as in the JSONL
                self._tb = SummaryWriter(log_dir=os.path.join(out_dir, "tensorboard"), purge_step=start_step + 1)
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
        elapsed = self.elapsed()
        record = {"step": step, "time": round(time.time(), 3), "elapsed_s": round(elapsed, 3)}
        for k, v in values.items():
            record[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        self._jsonl.write(json.dumps(record) + "\n")
        self.first = self.first or record
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if print_line:
            done = step - self.start_step
            eta = elapsed / done * (self.total_steps - step) if done > 0 and self.total_steps else float("nan")
            self.print(format_line(step, self.total_steps, values)
                       + f" | elapsed {format_duration(elapsed)} | eta {format_duration(eta)}")

    def elapsed(self) -> float:
        """Seconds since this logger was made (the start of this process's training)."""
        return time.perf_counter() - self.t0

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
