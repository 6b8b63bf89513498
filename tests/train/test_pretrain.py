"""pretrain.py end to end on CPU: exact resume after SIGKILL, SIGTERM checkpointing, damaged checkpoints
skipped by --resume auto, non-finite losses stopping the run, bad config keys."""
import math
import os
import re
import signal

import pytest
import torch

from tests.train.conftest import PRETRAIN, run_script, wait_for_line
from wslfast.engine import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow


def _final(out):
    return load_checkpoint(list_checkpoints(str(out))[-1][1])


def _assert_bit_identical(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights differ at {k}"
    for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"]), f"momentum differs at {ka}"


def test_sigkill_then_rerun_is_bit_identical_to_uninterrupted(small_args, tmp_path, started):
    common = small_args + ["--steps", "7", "--checkpoint-every", "2", "--lr", "0.2"]
    whole = run_script(PRETRAIN, common + ["--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stdout + whole.stderr

    killed = started(PRETRAIN, common + ["--out", tmp_path / "killed"])
    wait_for_line(killed, "step 5/7")  # checkpoint 4 is on disk; step 5's update is lost with the process
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    rerun = run_script(PRETRAIN, common + ["--out", tmp_path / "killed"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resumed from" in rerun.stdout
    _assert_bit_identical(_final(tmp_path / "whole"), _final(tmp_path / "killed"))
    # metrics continue from the resumed step: each step once, the same records as the uninterrupted run's
    import json

    recs = {name: [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")] for name in ("whole", "killed")}
    assert [r["step"] for r in recs["killed"]] == list(range(1, 8))
    assert [r["loss"] for r in recs["killed"]] == [r["loss"] for r in recs["whole"]]
    assert f"done: loss {recs['killed'][0]['loss']:.4f} (first logged)" in rerun.stdout
    # the weights did move: the comparison is between trained models, not two copies of the init
    first = load_checkpoint(list_checkpoints(str(tmp_path / "whole"))[0][1])
    assert any(not torch.equal(first["model"][k], _final(tmp_path / "whole")["model"][k]) for k in first["model"])


def test_sigterm_writes_checkpoint_and_damaged_newest_is_skipped(small_args, tmp_path, started):
    out = tmp_path / "run"
    args = small_args + ["--steps", "1000", "--checkpoint-every", "3", "--out", out]
    proc = started(PRETRAIN, args)
    wait_for_line(proc, "step 4/1000")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    stopped_at = int(re.search(r"stopped by SIGTERM at step (\d+)", stdout).group(1))
    found = list_checkpoints(str(out))
    assert stopped_at >= 4 and found[-1][0] == stopped_at  # the SIGTERM checkpoint, where the run stopped
    previous_step, previous_path = found[-2]

    newest = found[-1][1]
    with open(newest, "r+b") as f:  # damage it: truncate to half
        f.truncate(os.path.getsize(newest) // 2)
    rerun = run_script(PRETRAIN, small_args + ["--steps", str(stopped_at + 1), "--checkpoint-every", "3",
                                               "--out", out])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "skipping" in rerun.stderr and os.path.basename(newest) in rerun.stderr
    assert f"resumed from {previous_path} at step {previous_step}" in rerun.stdout


def test_nonfinite_losses_are_skipped_then_stop_the_run(small_args, tmp_path):
    out = tmp_path / "nan"
    proc = run_script(PRETRAIN, small_args + ["--steps", "40", "--lr", "1e30", "--max-nonfinite", "3",
                                              "--checkpoint-every", "1", "--out", out])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "non-finite for 3 steps in a row" in proc.stdout or "hold inf/NaN" in proc.stdout
    assert "step 40/40" not in proc.stdout
    for _, path in list_checkpoints(str(out)):  # whatever was kept is whole and finite
        state = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bad_key_is_a_clear_error(tmp_path):
    proc = run_script(PRETRAIN, ["--batch-sise", "8", "--out", tmp_path])
    assert proc.returncode != 0 and "did you mean 'batch-size'" in proc.stderr


def test_loss_falls_and_lr_follows_schedule(small_args, tmp_path):
    import json

    out = tmp_path / "fall"
    proc = run_script(PRETRAIN, small_args + ["--steps", "12", "--lr", "0.02", "--lr-schedule", "step",
                                              "--halvings", "1", "--out", out, "--checkpoint-every", "100"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert [r["lr"] for r in recs] == [0.02] * 6 + [0.01] * 6
    assert recs[-1]["images"] == 96 and math.isfinite(recs[-1]["img_per_s"])
    assert min(r["loss"] for r in recs[-3:]) < recs[0]["loss"]
    assert list_checkpoints(str(out))[-1][0] == 12
