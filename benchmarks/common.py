"""What every benchmark shares: timing (CUDA events or perf counters), peak memory, and the results file.

Records are flat dicts appended to benchmarks/results/<device>.json:
bench, case, impl, mode, ms_p20, ms_p50, ms_p80, peak_mem_bytes, device, torch, commit, time (+ extras).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_label(device: torch.device) -> str:
    """'cpu', 'h100', 'h200', 'a100', ... (the results file name)."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    m = re.search(r"\b([a-z]\d{2,3})\b", name)
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 10,
            setup: Callable[[], object] | None = None) -> tuple[float, float, float]:
    """(p20, p50, p80) milliseconds of fn() after warm-up; `setup` runs untimed before each call and its
    result is passed to fn (e.g. a fresh forward graph to time a backward alone)."""
    times = []
    for i in range(warmup + repeats):
        arg = setup() if setup is not None else None
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(arg) if setup is not None else fn()
            end.record()
            torch.cuda.synchronize(device)
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn(arg) if setup is not None else fn()
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return q[1], statistics.median(times), q[7]


def synthetic_hashtag_batch(batch: int, image_size: int, num_classes: int, device: torch.device, seed: int = 0):
    """(images [B, 3, S, S], SparseTargets on `device`): random pixels and 1 to 5 distinct tags an image,
    as hashtags go (the paper's 1/k targets). The same seed gives the same batch."""
    from wslfast.sparse_targets import SparseTargets
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    counts = torch.randint(1, 6, (batch,), generator=gen)
    rows = [torch.randperm(num_classes, generator=gen)[:int(c)].tolist() for c in counts]
    return images, SparseTargets.from_lists(rows, num_classes=num_classes).to(device)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's lifetime high-water mark of resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_extra_bytes(run: Callable[[], object], reset: Callable[[], object]) -> int | None:
    """Peak resident memory that run() adds, on Linux CPU (torch has no CPU allocator statistics).

    run() once to warm up (thread pools, lazy buffers), reset() to drop what it left (e.g. .grad), hand
    freed memory back (malloc_trim), restart the kernel's high-water mark (clear_refs 5), then run() again
    and read VmHWM - VmRSS-before. Best in a fresh process with nothing else running."""
    import ctypes
    import gc

    try:
        libc = ctypes.CDLL("libc.so.6")
        run()
        reset()
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_bytes("VmRSS")
        run()
        return max(0, _status_bytes("VmHWM") - before)
    except OSError:
        return None


def record(bench: str, case: dict, impl: str, mode: str, times: tuple[float, float, float] | None,
           peak_mem_bytes: int | None, device: torch.device, **extra) -> dict:
    rec = {
        "bench": bench, "case": case, "impl": impl, "mode": mode,
        "ms_p20": None if times is None else round(times[0], 4),
        "ms_p50": None if times is None else round(times[1], 4),
        "ms_p80": None if times is None else round(times[2], 4),
        "peak_mem_bytes": peak_mem_bytes, "device": device_label(device), "torch": torch.__version__,
        "commit": git_commit(), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(extra)
    return rec


def append_results(records: list[dict], path: str | None, device: torch.device) -> str:
    """Append to `path` (default benchmarks/results/<device>.json), written atomically."""
    path = path or os.path.join(RESULTS_DIR, device_label(device) + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if not isinstance(old, list):
            raise ValueError(f"{path}: expected a JSON list of records")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(old + records, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


# ---- a command's time and peak memory (the whole process tree) -------------------------------------------
def _tree_pss(pid: int) -> int:
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            mi = p.memory_full_info()
            total += getattr(mi, "pss", mi.rss)
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list, env: dict, cwd: Path, interval: float = 0.25) -> tuple[float, int, str]:
    """(seconds, peak summed PSS bytes, output) of a command and all its descendants, sampled every
    `interval` seconds."""
    cmd = [str(c) for c in cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_pss(proc.pid))
            time.sleep(interval)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = proc.communicate()[0]
    secs = time.perf_counter() - t0
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed:\n{out[-3000:]}")
    return secs, peak[0], out
