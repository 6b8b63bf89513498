"""Metrics across a resume (no repeated steps, the run's first record kept), elapsed/ETA in each line,
durations, peak memory, and checkpoint errors as one line without torch's advice."""
import io
import json
import os

import pytest
import torch

from wslfast.engine import CheckpointError, MetricsLogger, format_duration, load_checkpoint, peak_memory


def _steps(path):
    return [json.loads(line)["step"] for line in open(path)]


def test_resume_drops_records_after_the_resumed_step(tmp_path):
    log = MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False, stream=io.StringIO())
    for s in range(1, 8):
        log.log(s, {"loss": float(10 - s)})
    log.close()
    stream = io.StringIO()
    log = MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False, start_step=4, stream=stream)
    assert log.first["step"] == 1 and log.first["loss"] == 9.0  # the run's first record
    for s in range(5, 11):
        log.log(s, {"loss": 1.0})
    log.close()
    assert _steps(tmp_path / "metrics.jsonl") == list(range(1, 11))
    line = stream.getvalue().splitlines()[0]
    assert line.startswith("step  5/10 | loss 1.0000 | elapsed ") and "| eta " in line
    # a fresh start (step 0) in a folder whose run never saved: the stale records go
    MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False, stream=io.StringIO()).close()
    assert _steps(tmp_path / "metrics.jsonl") == []


def test_eta_is_the_remaining_share_of_the_time_so_far(tmp_path, monkeypatch):
    stream = io.StringIO()
    log = MetricsLogger(str(tmp_path), total_steps=100, tensorboard=False, start_step=20, stream=stream)
    monkeypatch.setattr(log, "elapsed", lambda: 40.0)  # 20 steps in 40 s -> 60 more steps take 120 s
    log.log(40, {"loss": 1.0})
    assert stream.getvalue().strip().endswith("elapsed 0:40 | eta 2:00")
    assert json.loads(open(tmp_path / "metrics.jsonl").read())["elapsed_s"] == 40.0


@pytest.mark.parametrize("seconds,text", [(7.25, "7.2s"), (65, "1:05"), (3725.4, "1:02:05"),
                                          (float("nan"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_peak_memory_on_cpu():
    text = peak_memory(torch.device("cpu"))
    assert text.startswith("peak memory (RSS) ") and float(text.split()[3]) > 0.01


def test_truncated_checkpoint_is_one_line_without_torch_advice(tmp_path):
    path = tmp_path / "ckpt_000000001.pt"
    torch.save({"step": 1, "model": {"w": torch.ones(1000)}}, path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    msg = str(e.value)
    assert str(path) in msg and "truncated or damaged" in msg and "\n" not in msg


class Evil:
    pass


def test_checkpoint_with_code_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "model": Evil()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    msg = str(e.value)
    assert "not loaded" in msg and "for safety" in msg and "Evil" in msg
    assert "weights_only=False" not in msg and "issue" not in msg and "\n" not in msg
