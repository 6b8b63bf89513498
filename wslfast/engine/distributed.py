"""Process-group set-up from torchrun's environment, per-rank seeding, and RNG state capture/restore.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain `python script.py` sets
none of them and runs as one process without a process group. NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["DistInfo", "setup_distributed", "cleanup_distributed", "pick_device", "seed_everything",
           "capture_rng", "restore_rng", "attempt_store", "peer_failure", "gather_objects", "broadcast_object", "all_ranks_max", "params_digest"]


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when running as one process without a process group

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when a GPU is present, else cpu; 'cuda' without a GPU is an error."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but no CUDA GPU is available")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible")
    return torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


_STORE_KEY = "wslfast/attempt_store"


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.TCPStore:
    """A key-value store new to this attempt, for init_process_group.

    Under torchrun's c10d rendezvous the workers are handed the agent's store (TORCHELASTIC_USE_AGENT_STORE),
    which lives across restarts: the keys a failed attempt left there (gloo peer addresses, NCCL ids,
    barrier counters) would be read again by the next attempt, which then connects to dead peers or hangs
    (pytorch/pytorch#135712). The restart count cannot tell attempts apart either: each node's agent counts
    its own. So rank 0 starts a store of its own on a free port and publishes "port nonce" in the agent's
    store; the other ranks take a published value only once they reach a store that holds its nonce. A
    value left by a failed attempt names a store that died with that attempt's rank 0 (torchrun stops every
    worker before it rendezvouses again), so it is refused and read again until the new one appears.
    Launched otherwise (one process, torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, a static
    rendezvous) MASTER_ADDR:MASTER_PORT is fresh for each attempt and rank 0 hosts the store there."""
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT", 29500)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout, multi_tenant=True)
    agent = dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
    key = f"{_STORE_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    if rank == 0:
        # Global rank 0 runs on the node of group rank 0, whose agent hosts the shared store at MASTER_ADDR.
        own = dist.TCPStore(addr, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        nonce = uuid.uuid4().hex
        own.set(_STORE_KEY, nonce)
        agent.set(key, f"{own.port} {nonce}")
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port_s, nonce = agent.get(key).decode().split()  # waits for the first value (up to the timeout)
        try:
            own = dist.TCPStore(addr, int(port_s), world_size, is_master=False, timeout=timedelta(seconds=2))
            own.set_timeout(timedelta(seconds=2))
            if own.get(_STORE_KEY).decode() == nonce:
                own.set_timeout(timeout)
                return own
        except (RuntimeError, dist.DistError):  # a dead attempt's store (refused), or a reused port
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0 of this attempt published no store within "
                               f"{timeout.total_seconds():.0f} s (MASTER_ADDR={addr}); is node 0 up?")
        time.sleep(0.2)


def setup_distributed(device_choice: str = "auto", timeout_s: float = 600) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device. timeout_s bounds
    every collective and the store: a peer that is gone ends this process with an error, never a hang."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise RuntimeError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world_size}")
    device = pick_device(device_choice, local_rank)
    if world_size == 1:
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        timeout = timedelta(seconds=timeout_s)
        store = attempt_store(rank, world_size, timeout)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
                                **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out", "Timed out",
               "NCCL communicator was aborted", "ProcessGroupNCCL", "Socket Timeout")


def peer_failure(e: BaseException) -> str | None:
    """A one-line account if e is a collective that failed because another rank died or stalled, else None."""
    import re

    text = str(e)
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(s in text for s in _PEER_SIGNS))):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    first = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first)  # the C++ source location
    return (f"lost contact with another rank ({first[:200]}); torchrun restarts every worker from the last "
            f"checkpoint while --max-restarts allow")


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def capture_rng(device: torch.device) -> dict:
    """This process's RNG states in weights_only-loadable types (tensors, lists, ints, strings)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_objects(info: DistInfo, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects only)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj):
    """Rank 0's obj on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks_max(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Elementwise max over ranks of a small float tensor on this rank's device (in place)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def params_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests mean bit-identical replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
