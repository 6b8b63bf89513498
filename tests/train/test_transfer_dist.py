"""transfer.py under torchrun with two gloo ranks on CPU, on a generated ImageFolder of 2,000 training images.

SWAG's fine-tuning config (train/configs/transfer/finetune_regnet_y_128gf_in1k_swag.yaml) runs as shipped
except for what makes it small: --arch regnet_y_tiny (and a plain regnet_y_tiny state_dict as the
checkpoint), --image-size 32 --resize-size 32, --batch-size 4, --steps 8, --checkpoint-every 2,
--log-every 1, --num-threads 1, --device cpu. Everything else is the recipe's code path: mixup 0.1 with
soft-target CE, weight EMA 0.9999 with its warm-up, SyncBN across the two ranks, SGD with the LR scaled from
its 512-image batch, the DALI training pipeline. A worker killed mid-run is restarted by torchrun and the run
ends bit-identical to an uninterrupted one. The linear probe with two ranks extracts the same features as
one process and scores the same."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.dist_launch import child_pids, free_port, quiet_env, torchrun
from tests.train.conftest import ROOT, TRANSFER, run_script, wait_for_line
from wslfast.engine import list_checkpoints, load_checkpoint

pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.xdist_group("transfer_dist")]  # its module fixtures once
SWAG = os.path.join(ROOT, "train", "configs", "transfer", "finetune_regnet_y_128gf_in1k_swag.yaml")
SMALL = ["--arch", "regnet_y_tiny", "--image-size", "32", "--resize-size", "32", "--batch-size", "4", "--steps", "8",
         "--checkpoint-every", "2", "--log-every", "1", "--num-threads", "1", "--device", "cpu"]


def make_image_folder(root, train_per_class=200, val_per_class=20, classes=10, size=40, seed=0):
    """root/{train,val}/c<k>/<i>.jpg: class k is a square of its own colour on noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (classes, 3))
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                x, y = rng.integers(0, size // 2, 2)
                a[y:y + size // 2, x:x + size // 2] = colours[k]
                Image.fromarray(a).save(folder / f"{i}.jpg", quality=85)
    return root


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 10-class ImageFolder (2,000 train / 200 val images) and a regnet_y_tiny state_dict to start from."""
    from wslfast.models import create_model

    root = make_image_folder(tmp_path_factory.mktemp("task") / "data")
    torch.manual_seed(1)
    weights = root.parent / "regnet_y_tiny.pth"
    torch.save(create_model("regnet_y_tiny", num_classes=7).state_dict(), weights)
    return root, weights


@pytest.fixture(scope="module")
def swag_run(task, tmp_path_factory):
    """An uninterrupted two-rank run of the SWAG config, made small (see the module docstring)."""
    root, weights = task
    out = tmp_path_factory.mktemp("swag") / "run"
    args = ["--config", SWAG, "--checkpoint", weights, "--data", root, "--out", out, *SMALL]
    proc = torchrun(TRANSFER, args, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return args, out, proc.stdout


def test_swag_config_runs_under_torchrun(swag_run):
    _, out, stdout = swag_run
    assert stdout.count("transfer: finetune") == 1  # one header: rank 1 prints nothing
    assert "2,000 train / 200 val images" in stdout and "batch 4 x 2 = 8" in stdout
    assert "mixup 0.1" in stdout and "EMA 0.9999" in stdout and "sync BN" in stdout
    assert "peak lr 9.375e-05" in stdout  # 6e-3 x 8 / 512
    assert "last weights: top-1" in stdout and "peak memory (RSS)" in stdout
    assert [s for s, _ in list_checkpoints(str(out))] == [6, 8]  # keep_last 2
    state = load_checkpoint(list_checkpoints(str(out))[-1][1])
    assert state["world_size"] == 2 and len(state["loader"]) == len(state["rng"]) == len(state["mix_gen"]) == 2
    assert state["config"]["sync_bn"] and state["ema"]["updates"] == 8
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["pretrained"]["top5"] is not None and "last_weights" in metrics["pretrained"]
    run = json.load(open(out / "run.json"))["config"]
    assert run["mixup"] == 0.1 and run["arch"] == "regnet_y_tiny" and "l2" not in run


def test_killed_worker_is_restarted_and_the_run_ends_bit_identical(swag_run, tmp_path):
    args, reference, _ = swag_run
    args = list(args)
    out = tmp_path / "restarted"
    args[args.index("--out") + 1] = out
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1", "--max-restarts=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "--local-addr=127.0.0.1", TRANSFER,
           *map(str, args)]
    proc = subprocess.Popen(cmd, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_line(proc, "step 3/8", timeout=600)
        workers = child_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # one worker dies (as if OOM-killed)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert "resumed from" in stdout and "at step 2" in stdout
    a = load_checkpoint(list_checkpoints(str(reference))[-1][1])
    b = load_checkpoint(list_checkpoints(str(out))[-1][1])
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]), k
    ma, mb = (json.load(open(d / "metrics.json")) for d in (reference, out))
    assert ma["pretrained"] == mb["pretrained"]


def test_linear_probe_on_two_ranks_matches_one_process(task, tmp_path):
    root, weights = task
    args = ["--checkpoint", weights, "--arch", "regnet_y_tiny", "--data", root, "--mode", "linear", "--baseline",
            "false", "--image-size", "32", "--device", "cpu", "--num-threads", "1", "--feature-part-size", "300",
            "--lbfgs-iters", "50"]
    two = torchrun(TRANSFER, args + ["--out", tmp_path / "two"], timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    one = run_script(TRANSFER, args + ["--out", tmp_path / "one"], timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    for split, parts in (("train", 7), ("val", 1)):
        files = sorted(os.listdir(tmp_path / "one" / "features" / split))
        assert files == sorted(os.listdir(tmp_path / "two" / "features" / split))
        assert len([f for f in files if f.startswith("part-")]) == parts
        for f in files:
            if f.startswith("part-"):
                a, b = np.load(tmp_path / "one" / "features" / split / f), np.load(tmp_path / "two" / "features" / split / f)
                assert np.array_equal(a["y"], b["y"])
                np.testing.assert_allclose(a["x"], b["x"], rtol=1e-4, atol=1e-5)
    s1, s2 = (json.load(open(tmp_path / d / "metrics.json"))["pretrained"]["top1"] for d in ("one", "two"))
    assert abs(s1 - s2) <= 0.5 + 1e-9  # at most one of the 200 validation images
    # the streamed fit on the same features, data-parallel over the two ranks: near the full-batch optimum
    sgd = torchrun(TRANSFER, args + ["--out", tmp_path / "two", "--probe-solver", "sgd"], timeout=600)
    assert sgd.returncode == 0, sgd.stdout + sgd.stderr
    assert "features train: all 7 part(s) already in" in sgd.stdout
    assert re.search(r"fit: sgd, 30 epochs = 120 steps of 256 x 2 features", sgd.stdout), sgd.stdout
    s3 = json.load(open(tmp_path / "two" / "metrics.json"))["pretrained"]["top1"]
    assert abs(s3 - s1) <= 4.0, (s1, s3)  # 8 of the 200 validation images
