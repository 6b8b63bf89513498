"""The Ray Data engine: a build across machines (--ray-address) or, asked for by name, an embedded Ray.

Used only when the user says so: `--ray-address HOST:PORT` (a cluster started with `ray start`), `--ray-address
auto` (Ray's own lookup: $RAY_ADDRESS, else the cluster last started on this machine), or `--engine ray`
(an embedded Ray of --workers CPUs, `ray.init(address="local")`, which never reads $RAY_ADDRESS). A cluster
address is checked first (a TCP connection and an HTTP/2 greeting, 5 s), so a dead or wrong address fails in
seconds with one line instead of Ray's minutes of retries. Ray 2.60 (the pinned version) turns token authentication on by default
for an embedded Ray; a cluster needs RAY_AUTH_MODE=token on every node (docs/data.md: the cluster recipe).

How the passes run: pass 1 reads the source's inputs with a streaming Ray Data datasource (one read task per
input, one row per block) and runs `check_block` in `map_batches`; the counting passes map over the block
list; the write pass expands the samples' metadata and groups it by shard (`groupby(...).map_groups`), and
each group's task reads its image bytes and writes its shard. The Job (vocabulary, dedup index) is put into
the object store once per pass. Errors raised in Ray's workers reach the driver as the project's own error
(engines.user_error unwraps RayTaskError), so the CLI prints one line.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import socket
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from . import passes as P
from .engines import RAY_REQUIREMENT, user_error

__all__ = ["RayEngine", "resolve_address"]

CONNECT_TIMEOUT_S = 5.0
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


def resolve_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """The cluster address to give ray.init, checked within `timeout` seconds to accept a TCP connection and
    to answer in HTTP/2 as the GCS's gRPC server does; ConfigError (one line) otherwise. Without that check
    ray.init retries a dead or wrong address for minutes. "auto": Ray's lookup ($RAY_ADDRESS, then the
    local cluster); a loopback host becomes this node's address, as ray.init would make it."""
    from ray._private.services import canonicalize_bootstrap_address, canonicalize_bootstrap_address_or_die

    given = address
    if address != "auto":
        _host_port(address, given)
    try:
        if address == "auto":
            address = canonicalize_bootstrap_address_or_die("auto")
        elif "://" not in address:  # (ray:// is Ray Client: ray.init takes it as it is)
            address = canonicalize_bootstrap_address(address) or address
    except (ConnectionError, ValueError) as e:
        raise ConfigError(f"--ray-address {given}: {' '.join(str(e).split())}") from None
    host, port = _host_port(address, given)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            grpc = _answers_http2(conn)
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(f"--ray-address {_named(given, address)}: nothing accepts connections there ({why} within "
                          f"{timeout:g} s); start the cluster (`ray start --head`) or fix the address") from None
    if not grpc:
        raise ConfigError(f"--ray-address {_named(given, address)}: something answers there, but not a Ray head (no "
                          f"gRPC within {timeout:g} s); give the head's --port (6379 by default)")
    return address


def _host_port(address: str, given: str) -> tuple[str, int]:
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address {_named(given, address)!r} is not HOST:PORT (e.g. 10.0.0.1:6379) or 'auto'")
    return host, int(port)


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the peer speaks HTTP/2 (gRPC): after the client preface, a server's first frame must be
    SETTINGS (RFC 9113, 3.4). An HTTP/1 server answers text instead, and a silent one times out."""
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    head = b""
    try:
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except TimeoutError:
        return False
    return head[3] == 0x04  # the frame type of SETTINGS


def _named(given: str, resolved: str) -> str:
    return given if given == resolved else f"{given} (= {resolved})"


class RayEngine:
    """Ray Data runner (see the module docstring): connects to the cluster at `address`, or starts an
    embedded Ray with `workers` CPUs (loopback node address, no dashboard) when address is None or "local".
    A Ray already initialized in this process is used as it is."""
    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, progress: bool = False,
                 object_store_mb: int = 512):
        self.workers, self.address, self.progress = max(1, workers), address, progress
        self.object_store_mb = object_store_mb
        self._started = False

    def __enter__(self):
        try:
            import ray
            import ray.data
        except ImportError:
            raise ConfigError(f"the Ray engine (--engine ray, --ray-address) needs Ray: pip install "
                              f"'{RAY_REQUIREMENT}'") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not ray.is_initialized():
            runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                [_package_root()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}}
            if self.address and self.address != "local":
                address = resolve_address(self.address)
                try:
                    ray.init(address=address, runtime_env=runtime_env, log_to_driver=self.progress,
                             configure_logging=False)
                except (ConnectionError, ray.exceptions.AuthenticationError) as e:
                    raise ConfigError(f"--ray-address {address}: {' '.join(str(e).split())}") from None
            else:
                ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                         _node_ip_address="127.0.0.1", object_store_memory=self.object_store_mb << 20,
                         runtime_env=runtime_env, log_to_driver=self.progress, configure_logging=False)
            self._started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = self.progress
        ctx.print_on_execution_start = self.progress
        if not self.progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Ray Data logs a failed task's traceback to stderr before raising it; the error reaches the caller
        # anyway (as the project's one line, or a bug's full traceback), so stderr gets none of those logs.
        self._quiet = [h for h in logging.getLogger("ray.data").handlers
                       if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for h in self._quiet:
            h.addFilter(_below_error)
        self.parallel = max(1, int(ray.cluster_resources().get("CPU", self.workers)))
        return self

    def __exit__(self, *exc):
        for h in getattr(self, "_quiet", ()):
            h.removeFilter(_below_error)
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
        return _unwrapped(json.loads(row["result"]) for row in ds.iter_rows())

    def map(self, fn, blocks):
        if not blocks:
            return iter(())
        ds = self._blocks_ds(blocks).map_batches(_map_batch, fn_args=(self._ref, fn.__name__), batch_size=1,
                                                 batch_format="numpy")
        return _unwrapped(pickle.loads(row["result"]) for row in ds.iter_rows())

    def write(self, blocks):
        if not blocks or not (self.job.stems >= 0).any():
            return iter(())
        ds = self._blocks_ds(blocks).map_batches(_expand_batch, fn_args=(self._ref,), batch_size=1,
                                                 batch_format="numpy")
        ds = ds.groupby("bucket").map_groups(_write_group, fn_args=(self._ref,), batch_format="numpy")
        return _unwrapped((str(row["stem"]), int(row["n"])) for row in ds.iter_rows())


def _below_error(record) -> bool:
    return record.levelno < logging.ERROR


def _unwrapped(rows):
    """rows, with an error raised in a Ray worker re-raised as the project's own (one line in the CLI),
    without the retry advice Ray Data appends to its message."""
    try:
        yield from rows
    except Exception as e:
        cause = user_error(e)
        if cause is e:
            raise
        args = cause.args
        if args and isinstance(args[0], str) and "\nFailed to " in args[0]:
            args = (args[0].split("\nFailed to ", 1)[0],) + args[1:]
        cause.args = tuple(a for a in args if not (isinstance(a, str) and a.startswith("Failed to ")))
        raise cause from None
