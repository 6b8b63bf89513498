"""Who runs the block steps of passes.py: this process, a process pool on this machine, or Ray when asked.

Every engine writes the same bytes: blocks are fixed by the inputs, every step is a pure function of its
block, and each shard is sorted by shuffle key before it is written. Every engine streams: the driver sees
one block's counts at a time, never the records.

- LocalEngine (--workers 1, the default): the steps in a loop, in this process.
- PoolEngine (--workers N > 1): N worker processes of this machine (concurrent.futures over `spawn`: no
  port, no service, no object store; a worker is one Python with numpy and Pillow, ~40 MB). The driver
  reads the inputs' blocks and hands each to a worker, at most 4 x N tasks in flight, so memory is bounded
  by those blocks (a block of lines in, its counts out). The Job (vocabulary, dedup index, the totals of
  earlier passes) reaches each worker once per pass through the pool's initializer, never with each task.
  Workers ignore Ctrl-C (the driver stops them) and exit when the driver dies (they watch their parent).
- RayEngine (ray_engine.py): Ray Data, only for --ray-address or an explicit --engine ray.

The write pass of the local and pool engines: `scatter_block` expands a block's samples and appends their
metadata to partition files of a few shards each (`.work/part-*.jsonl`; each append under flock, so
several processes can add to one file), then `write_part` writes the shards of one partition, each sorted
by shuffle key: memory is one block, then one partition.

Errors: a pool worker's exception reaches the driver as itself (pickled back; the worker's traceback is
its __cause__); `user_error` finds the project's own error inside Ray's wrappers, so the CLI prints one line.
"""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from ...errors import ConfigError, UserError
from . import passes as P

__all__ = ["LocalEngine", "PoolEngine", "make_engine", "user_error", "scatter_block", "write_part", "ENGINES"]

ENGINES = ("local", "pool", "ray")
RAY_REQUIREMENT = "ray[data]==2.60.0"  # token authentication on by default for a local Ray (requirements.txt)
_BUCKETS_PER_PART = 8  # shards per partition file in the write pass
# What the CLI prints as one line (wslfast.data.__main__), found inside an engine's wrappers by user_error.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def make_engine(workers: int = 1, ray_address: str | None = None, progress: bool = False, kind: str | None = None):
    """The engine for these options: `ray_address` or kind="ray" -> RayEngine (a running cluster at that
    address, or an embedded Ray of `workers` CPUs); workers > 1 -> PoolEngine; else LocalEngine. RAY_ADDRESS
    in the environment counts only when ray_address is "auto" (then Ray reads it)."""
    if kind is not None and kind not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {kind!r}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if ray_address and kind not in (None, "ray"):
        raise ConfigError(f"--ray-address runs on Ray: it does not go with --engine {kind}")
    kind = kind or ("ray" if ray_address else "pool" if workers > 1 else "local")
    if kind == "local" and workers > 1:
        raise ConfigError(f"--engine local runs in this process: --workers must be 1, got {workers} (or use "
                          f"--engine pool)")
    if kind == "ray":
        from .ray_engine import RayEngine

        return RayEngine(workers, ray_address, progress)
    return PoolEngine(workers) if kind == "pool" else LocalEngine()


def user_error(e: BaseException) -> BaseException:
    """The first exception of the project's own kinds (USER_ERRORS) in e's chain of wrappers (Ray's
    RayTaskError `.cause`, Ray Data's UserCodeException `__cause__`, ...), or e itself when there is none."""
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, USER_ERRORS) and not type(cur).__module__.startswith("ray."):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    return e


# ---- the write pass's two steps, shared by the local and pool engines ----------------------------------------
def partitions(job) -> list[list[int]]:
    """The buckets to write (job.stems >= 0), in bucket order, cut into partitions of _BUCKETS_PER_PART."""
    order = np.flatnonzero(job.stems >= 0).tolist()
    return [order[i:i + _BUCKETS_PER_PART] for i in range(0, len(order), _BUCKETS_PER_PART)]


def partition_of(job) -> np.ndarray:
    """bucket -> its partition number (-1 for the buckets not written)."""
    order = np.flatnonzero(job.stems >= 0)
    part = np.full(job.stems.size, -1, dtype=np.int64)
    part[order] = np.arange(order.size, dtype=np.int64) // _BUCKETS_PER_PART
    return part


def clear_partitions(job) -> None:
    for p in Path(job.work_dir).glob("part-*.jsonl"):
        p.unlink()


def scatter_block(job, block, part_of: np.ndarray) -> int:
    """Append the metadata of a block's samples (those in buckets to write) to their partition files;
    returns how many samples. Any number of processes may scatter at once (one locked append a file)."""
    cols = P.expand_block(job, block)
    lines = defaultdict(list)
    for i in range(len(cols["image"])):
        b = int(cols["bucket"][i])
        lines[int(part_of[b])].append(json.dumps([b, int(cols["skey"][i]), cols["image"][i], cols["reenc"][i],
                                                  cols["labels"][i], cols["info"][i]]))
    work = Path(job.work_dir)
    for part, ls in lines.items():
        with open(work / f"part-{part:06d}.jsonl", "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write("\n".join(ls) + "\n")
            f.flush()  # before close releases the lock
    return len(cols["image"])


def write_part(job, part: int, buckets: list[int]) -> list[tuple[str, int]]:
    """Write the shards of one partition's buckets from its file (then removed): [(stem, samples)]."""
    path = Path(job.work_dir) / f"part-{part:06d}.jsonl"
    groups = defaultdict(list)
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                groups[row[0]].append(row[1:])
    done = []
    for b in buckets:
        rows = groups.pop(b, [])
        done.append(P.write_bucket(job, b, *(list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])))
    path.unlink(missing_ok=True)
    return done


class LocalEngine:
    """The steps in a loop, in this process (--workers 1)."""
    name = "local"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def put(self, job):
        self.job = job

    def check(self, source):
        for fi in range(len(source.paths)):
            for block in source.blocks(fi):
                yield P.check_block(self.job, block)

    def map(self, fn, blocks):
        for b in blocks:
            yield fn(self.job, b)

    def write(self, blocks):
        job = self.job
        clear_partitions(job)
        part_of = partition_of(job)
        for block in blocks:
            scatter_block(job, block, part_of)
        for part, buckets in enumerate(partitions(job)):
            yield from write_part(job, part, buckets)


# ---- the process pool --------------------------------------------------------------------------------------------
_WORKER: dict = {}  # in a pool worker: this pass's job and its bucket -> partition table


def _init_worker(job, driver_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver stops us
    _WORKER.clear()
    _WORKER["job"] = job
    threading.Thread(target=_watch_driver, args=(driver_pid,), daemon=True).start()


def _watch_driver(driver_pid: int) -> None:
    """Exit when the driver is gone (SIGKILL leaves the pool no chance to stop its workers): a spawned
    worker's parent is the driver until the driver dies (even before this worker got here)."""
    while True:
        if os.getppid() != driver_pid:
            os._exit(1)
        time.sleep(0.5)


def _check_task(block):
    return P.check_block(_WORKER["job"], block)


def _map_task(fn, block):
    return fn(_WORKER["job"], block)


def _scatter_task(block):
    job = _WORKER["job"]
    if "part_of" not in _WORKER:
        _WORKER["part_of"] = partition_of(job)
    return scatter_block(job, block, _WORKER["part_of"])


def _write_part_task(part, buckets):
    return write_part(_WORKER["job"], part, buckets)


class PoolEngine:
    """`workers` processes of this machine (see the module docstring); a fresh pool for each pass, whose
    workers get that pass's job once."""
    name = "pool"

    def __init__(self, workers: int = 2, window: int | None = None):
        self.workers = max(1, int(workers))
        self.window = window or 4 * self.workers  # tasks in flight: bounds the driver's memory
        self.job = None
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self._close(abort=exc_type is not None)
        return False

    def put(self, job):
        self._close()
        self.job = job

    def _close(self, abort: bool = False):
        """Stop the pool: after its tasks (a pass done), or at once (an error or Ctrl-C: what the running
        tasks would still write is thrown away anyway, and the next build clears their temporary files)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if not abort:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())  # (3.11 has no terminate_workers())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)

    def _run(self, fn, tasks):
        """fn(*args) for each args of tasks on the pool, results in task order, at most `window` in flight."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.job, os.getpid()))
        pending = deque()
        try:
            for args in tasks:
                pending.append(self._pool.submit(fn, *args))
                if len(pending) >= self.window:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            for f in pending:
                f.cancel()

    def check(self, source):
        return self._run(_check_task, ((block,) for fi in range(len(source.paths)) for block in source.blocks(fi)))

    def map(self, fn, blocks):
        return self._run(_map_task, ((fn, b) for b in blocks))

    def write(self, blocks):
        clear_partitions(self.job)
        for _ in self._run(_scatter_task, ((b,) for b in blocks)):
            pass  # every block scattered before any shard is written
        for done in self._run(_write_part_task, enumerate(partitions(self.job))):
            yield from done


def _result(future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise RuntimeError("a worker process of the build died (killed by the system, e.g. out of memory, or "
                           "crashed); the published dataset is untouched and a re-run resumes") from None
