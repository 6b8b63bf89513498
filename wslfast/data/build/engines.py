"""Who runs the block steps of passes.py: in this process, or Ray Data (embedded or a cluster).

Both engines produce the same bytes: blocks are fixed by the inputs, every step is a pure function of
its block, and each shard is sorted by shuffle key before it is written. Every engine streams: the
driver sees one block's counts at a time, never the records.

- LocalEngine (--workers 1): the steps in a loop; the write pass scatters the samples' metadata into
  partition files of a few shards each (`.work/part-*.jsonl`), then writes the shards partition by
  partition, so memory is one partition.
- RayEngine (--workers N > 1, --ray-address or RAY_ADDRESS): pass 1 reads the source's inputs with a
  streaming Ray Data datasource (one read task per input, one row per block) and runs `check_block` in
  `map_batches`; the counting passes map over the block list; the write pass expands the samples' metadata
  and groups it by shard (`groupby(...).map_groups`), and each group's task reads its image bytes and
  writes its shard. The Job (vocabulary, dedup index) is put into the object store once.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import passes as P

__all__ = ["LocalEngine", "RayEngine", "make_engine"]

_BUCKETS_PER_PART = 8  # shards per partition file in the local write pass


class LocalEngine:
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
        work = Path(job.work_dir)
        for p in work.glob("part-*.jsonl"):
            p.unlink()
        order = np.flatnonzero(job.stems >= 0).tolist()
        part_of = {b: i // _BUCKETS_PER_PART for i, b in enumerate(order)}
        for block in blocks:
            cols = P.expand_block(job, block)
            lines = defaultdict(list)
            for i in range(len(cols["image"])):
                b = int(cols["bucket"][i])
                lines[part_of[b]].append(json.dumps([b, int(cols["skey"][i]), cols["image"][i], cols["reenc"][i],
                                                     cols["labels"][i], cols["info"][i]]))
            for part, ls in lines.items():
                with open(work / f"part-{part:06d}.jsonl", "a", encoding="utf-8") as f:
                    f.write("\n".join(ls) + "\n")
        for part in range(math.ceil(len(order) / _BUCKETS_PER_PART)):
            path = work / f"part-{part:06d}.jsonl"
            groups = defaultdict(list)
            if path.is_file():
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        row = json.loads(line)
                        groups[row[0]].append(row[1:])
            for b in order[part * _BUCKETS_PER_PART:(part + 1) * _BUCKETS_PER_PART]:
                rows = groups.pop(b, [])
                yield P.write_bucket(job, b, *(list(c) for c in zip(*rows)) if rows else ([], [], [], [], []))
            path.unlink(missing_ok=True)


# ---- Ray ---------------------------------------------------------------------------------------------------
_JOBS: dict = {}  # per worker process: job object ref -> Job (deserialized once)


def _job(ref_box):
    import ray

    key = ref_box[0].hex()
    if key not in _JOBS:
        _JOBS.clear()
        _JOBS[key] = ray.get(ref_box[0])
    return _JOBS[key]


def _check_batch(batch, ref_box):
    job = _job(ref_box)
    out = [P.check_block(job, pickle.loads(b)) for b in batch["block"]]
    return {"result": [json.dumps(s) for s in out]}


def _map_batch(batch, ref_box, fn_name):
    job = _job(ref_box)
    fn = getattr(P, fn_name)
    return {"result": [pickle.dumps(fn(job, (int(fi), int(bi)))) for fi, bi in zip(batch["fi"], batch["bi"])]}


def _expand_batch(batch, ref_box):
    job = _job(ref_box)
    cols = {k: [] for k in ("bucket", "skey", "image", "reenc", "labels", "info")}
    for fi, bi in zip(batch["fi"], batch["bi"]):
        c = P.expand_block(job, (int(fi), int(bi)))
        for k in cols:
            cols[k].extend(c[k].tolist() if isinstance(c[k], np.ndarray) else c[k])
    return {"bucket": np.asarray(cols["bucket"], dtype=np.int64), "skey": np.asarray(cols["skey"], dtype=np.uint64),
            "image": np.asarray(cols["image"], dtype=object), "reenc": np.asarray(cols["reenc"], dtype=bool),
            "labels": np.asarray(cols["labels"], dtype=object), "info": np.asarray(cols["info"], dtype=object)}


def _write_group(group, ref_box):
    job = _job(ref_box)
    stem, n = P.write_bucket(job, int(group["bucket"][0]), group["skey"], list(group["image"]), group["reenc"],
                             list(group["labels"]), list(group["info"]))
    return {"stem": [stem], "n": [n]}


def _source_datasource(source):
    import pyarrow as pa
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class SourceDatasource(Datasource):
        """One read task per input of a sources.Source, streaming one row per block (the Block pickled)."""

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            def reader(fi):
                def read():
                    for block in source.blocks(fi):
                        yield pa.table({"block": [pickle.dumps(block)]})
                return read

            return [ReadTask(reader(fi), BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                                       input_files=(p,)))
                    for fi, p in enumerate(source.paths)]

    return SourceDatasource()


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


class RayEngine:
    """Ray Data runner; starts an embedded Ray with `workers` CPUs unless one is running or an address is
    given (then it connects: `ray start --head` on one machine, `ray start --address=HEAD:PORT` on others)."""
    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, progress: bool = False,
                 object_store_mb: int = 512):
        self.workers, self.address, self.progress = max(1, workers), address, progress
        self.object_store_mb = object_store_mb
        self._started = False

    def __enter__(self):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        import ray.data

        if not ray.is_initialized():
            runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                [_package_root()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}}
            if self.address:
                ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=self.progress,
                         configure_logging=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                         object_store_memory=self.object_store_mb << 20, runtime_env=runtime_env,
                         log_to_driver=self.progress, configure_logging=False)
            self._started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = self.progress
        ctx.print_on_execution_start = self.progress
        if not self.progress:
            import logging

            logging.getLogger("ray.data").setLevel(logging.WARNING)
        self.parallel = max(1, int(ray.cluster_resources().get("CPU", self.workers)))
        return self

    def __exit__(self, *exc):
        if self._started:
            import ray

            ray.shutdown()
        return False

    def put(self, job):
        import ray

        self.job = job
        self._ref = [ray.put(job)]

    def _blocks_ds(self, blocks):
        import ray.data

        items = [{"fi": int(fi), "bi": int(bi)} for fi, bi in blocks]
        return ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * self.parallel)))

    def check(self, source):
        import ray.data

        # The read (decompress + split lines) is light: a fraction of a CPU, and not fused with the checks,
        # so the blocks of one big file spread over every worker.
        ds = ray.data.read_datasource(_source_datasource(source), num_cpus=0.25).map_batches(
            _check_batch, fn_args=(self._ref,), batch_size=1, batch_format="numpy")
        for row in ds.iter_rows():
            yield json.loads(row["result"])

    def map(self, fn, blocks):
        if not blocks:
            return
        ds = self._blocks_ds(blocks).map_batches(_map_batch, fn_args=(self._ref, fn.__name__), batch_size=1,
                                                 batch_format="numpy")
        for row in ds.iter_rows():
            yield pickle.loads(row["result"])

    def write(self, blocks):
        if not blocks or not (self.job.stems >= 0).any():
            return
        ds = self._blocks_ds(blocks).map_batches(_expand_batch, fn_args=(self._ref,), batch_size=1,
                                                 batch_format="numpy")
        ds = ds.groupby("bucket").map_groups(_write_group, fn_args=(self._ref,), batch_format="numpy")
        for row in ds.iter_rows():
            yield str(row["stem"]), int(row["n"])


def make_engine(workers: int = 1, ray_address: str | None = None, progress: bool = False):
    """RayEngine for workers > 1 or a cluster address (argument or RAY_ADDRESS), else LocalEngine."""
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    if address or workers > 1:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("note: ray is not installed; building in this process (pip install 'ray[data]')",
                  file=sys.stderr)
            return LocalEngine()
        return RayEngine(workers, address, progress)
    return LocalEngine()
