"""Two torchrun agents on loopback, as the README's multi-node command runs them ("two nodes" x 1 process,
c10d rendezvous, --max-restarts=1, no other setting): SIGKILL of one worker, rank 0 or rank 1, brings the job
back from the last whole checkpoint by itself, with no failed attempt in between (one restart is all the
agents may spend); a node that does not come back ends the job with an error within the rendezvous
timeout, never a hang. Every process is in a session of its own and killed at the end, whatever happens."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.engine.dist_launch import child_pids, free_port, quiet_env
from tests.train.conftest import PRETRAIN
from wslfast.engine import list_checkpoints

pytestmark = [pytest.mark.dist, pytest.mark.slow]
STEPS = 5000  # never reached: each test ends the job itself (SIGTERM, which checkpoints, or a kill)


class Agents:
    """Two torchrun agents; their output collected by threads, so nothing blocks on a full pipe."""

    def __init__(self, args, rdzv_conf=None):
        port = free_port()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=wslfast-test",
               "--max-restarts=1", "--local-addr=127.0.0.1"]
        if rdzv_conf:
            cmd.append(f"--rdzv-conf={rdzv_conf}")
        self.procs, self.out = [], [[], []]
        for n in range(2):
            p = subprocess.Popen([*cmd, PRETRAIN, *map(str, args)], env=quiet_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            threading.Thread(target=lambda p=p, n=n: [self.out[n].append(line) for line in p.stdout],
                             daemon=True).start()
            self.procs.append(p)
            time.sleep(1.0)  # the first agent hosts the rendezvous store

    def text(self, n=None):
        return "".join(self.out[0] + self.out[1]) if n is None else "".join(self.out[n])

    def worker(self, rank):
        """(agent index, pid) of the worker process with this global rank."""
        for n, p in enumerate(self.procs):
            for pid in child_pids(p.pid):
                try:
                    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in env:
                    return n, pid
        return None, None

    def wait(self, timeout):
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        return [p.poll() for p in self.procs]

    def kill_node(self, n):
        """SIGKILL agent n and its workers (torchrun starts each worker in a session of its own)."""
        workers = child_pids(self.procs[n].pid)
        if self.procs[n].poll() is None:
            os.killpg(self.procs[n].pid, signal.SIGKILL)
        for pid in workers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs[n].wait()

    def kill_all(self):
        for n in range(len(self.procs)):
            self.kill_node(n)


def _wait_for(cond, timeout, agents, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if any(p.poll() is not None for p in agents.procs):
            break
        time.sleep(0.1)
    raise AssertionError(f"never saw {what}; output so far:\n{agents.text()[-6000:]}")


def _start_and_wait_for_checkpoint(small_args, out, rdzv_conf=None):
    args = small_args + ["--steps", STEPS, "--checkpoint-every", 4, "--out", out, "--dist-timeout", 60]
    agents = Agents(args, rdzv_conf)
    # a whole checkpoint on disk and training past it
    _wait_for(lambda: list_checkpoints(str(out)) and re.search(r"step\s+6/", agents.text()), 240, agents,
              "checkpoint 4 and step 6")
    return agents


@pytest.mark.parametrize("rank", [0, 1])
def test_killed_worker_comes_back_from_the_last_checkpoint(small_args, tmp_path, rank):
    out = tmp_path / "run"
    agents = _start_and_wait_for_checkpoint(small_args, out)
    try:
        n, pid = agents.worker(rank)
        assert pid is not None, agents.text()
        os.kill(pid, signal.SIGKILL)  # as if OOM-killed
        # the job comes back by itself and trains on from the checkpoint ...
        resumed_at = re.compile(r"resumed from \S+ckpt_(\d+)\.pt at step (\d+)")
        _wait_for(lambda: resumed_at.search(agents.text()), 180, agents, "the resume")
        resumed = int(resumed_at.search(agents.text()).group(2))
        _wait_for(lambda: re.search(rf"step\s+{resumed + 3}/", agents.text()), 60, agents, "steps after the resume")
        # ... until a SIGTERM to one worker stops every rank at the same step, with a checkpoint
        os.kill(agents.worker(1 - rank)[1], signal.SIGTERM)
        rcs = agents.wait(120)
        text = agents.text()
        assert rcs == [0, 0], f"agents ended with {rcs}:\n{text[-8000:]}"
    finally:
        agents.kill_all()
    # exactly one restart: one fresh start, one resume (a failed attempt in between would need a second
    # restart, which --max-restarts=1 does not have), and no gloo connection errors
    assert text.count("starting from scratch") == 1 and text.count("resumed from") == 1, text[-8000:]
    assert "connectFullMesh" not in text and "Connection refused" not in text
    assert resumed >= 4 and resumed % 4 == 0
    stopped = int(re.search(r"stopped by (?:SIGTERM|a signal on another rank) at step (\d+)", text).group(1))
    assert list_checkpoints(str(out))[-1][0] == stopped > resumed
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == list(range(1, stopped + 1))  # each step once: the replayed ones replaced


def test_node_that_does_not_come_back_ends_the_job_in_bounded_time(small_args, tmp_path):
    out = tmp_path / "run"
    agents = _start_and_wait_for_checkpoint(small_args, out, rdzv_conf="join_timeout=15")
    try:
        t0 = time.time()
        agents.kill_node(1)  # the second node, agent and worker, is gone
        rc = agents.wait(120)[0]
        took = time.time() - t0
        text = agents.text(0)
    finally:
        agents.kill_all()
    assert rc not in (0, None), f"the surviving agent did not fail:\n{text[-6000:]}"
    assert took < 90
    # the worker says why in one line; the agent, that the rendezvous (or its store) is gone
    assert re.search(r"error: rank \d: lost contact with another rank \(.*(Connection closed by peer|Connection reset by peer)", text), text[-6000:]
    assert "RendezvousTimeoutError" in text or "RendezvousConnectionError" in text, text[-6000:]
