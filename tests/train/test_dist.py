"""pretrain.py under torchrun with two gloo ranks on CPU: replicas stay bit-identical (every checkpoint
compares all ranks' weight digests and stops on a mismatch), only rank 0 writes files or logs, and the
checkpoint carries every rank's data position."""
import json
import os

import pytest
import torch
import torch.nn as nn

from tests.engine.dist_launch import child_pids, torchrun
from tests.train.conftest import PRETRAIN
from wslfast.engine import list_checkpoints, load_checkpoint, params_digest

pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.xdist_group("train_dist")]  # one ddp_run per run


def test_digest_sees_a_single_bit():
    net = nn.Linear(3, 2)
    before = params_digest(net)
    with torch.no_grad():
        raw = net.weight.view(torch.int32)
        raw[0, 0] ^= 1  # flip the lowest mantissa bit of one weight
    assert params_digest(net) != before


@pytest.fixture(scope="module")
def ddp_run(small_args, tmp_path_factory):
    """An uninterrupted two-rank run: 6 steps, checkpoints at 2, 4, 6."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    args = small_args + ["--steps", "6", "--checkpoint-every", "2", "--lr", "0.02", "--out", out]
    proc = torchrun(PRETRAIN, args, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return args, out, proc.stdout


def test_two_ranks_identical_replicas_and_rank0_alone_writes(ddp_run):
    _, out, stdout = ddp_run
    assert sorted(os.listdir(out)) == ["ckpt_000000002.pt", "ckpt_000000004.pt", "ckpt_000000006.pt",
                                       "metrics.jsonl", "run.json"]
    assert stdout.count("pretrain: ") == 1  # one header: rank 1 prints nothing
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    state = load_checkpoint(list_checkpoints(str(out))[-1][1])
    assert state["world_size"] == 2 and len(state["loader"]) == 2 and len(state["rng"]) == 2
    model = nn.Module()
    for i, (k, v) in enumerate(state["model"].items()):
        if v.is_floating_point() and "running" not in k:
            model.register_parameter(f"p{i}", nn.Parameter(v))
    # the digest every rank agreed on is that of the saved weights
    assert state["weights_digest"] == params_digest(model)
    assert state["images_seen"] == 6 * 2 * 8


def test_killed_worker_is_restarted_by_torchrun_and_resumes_exactly(ddp_run, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.engine.dist_launch import free_port, quiet_env
    from tests.train.conftest import wait_for_line

    args, reference, _ = ddp_run
    out = tmp_path / "restarted"
    args = list(args)
    args[args.index("--out") + 1] = out
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1", "--max-restarts=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "--local-addr=127.0.0.1", PRETRAIN,
           *map(str, args)]
    # Own session, so whatever happens the test can end torchrun and its workers together.
    proc = subprocess.Popen(cmd, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_line(proc, "step 3/6")
        workers = child_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # one worker dies (as if OOM-killed)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert "resumed from" in stdout
    a = load_checkpoint(list_checkpoints(str(reference))[-1][1])
    b = load_checkpoint(list_checkpoints(str(out))[-1][1])
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
