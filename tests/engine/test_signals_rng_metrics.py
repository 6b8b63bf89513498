"""StopSignals records SIGTERM/SIGUSR1; RNG states round-trip through a weights_only checkpoint; metrics
land in JSONL (and TensorBoard when installed)."""
import json
import os
import random
import signal

import numpy as np
import pytest
import torch

from wslfast.engine import (MetricsLogger, StopSignals, capture_rng, format_line, load_checkpoint,
                            restore_rng, save_checkpoint)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_flag_and_handler_is_restored(signum):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signum)
        assert stop.received == signum and stop.name == signal.Signals(signum).name
        os.kill(os.getpid(), signal.SIGUSR1 if signum == signal.SIGTERM else signal.SIGTERM)
        assert stop.received == signum  # the first signal is the one reported
    assert signal.getsignal(signum) == before


def test_rng_roundtrip_through_checkpoint(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.random(); np.random.rand(); torch.rand(1); np.random.randn()  # a cached gaussian in numpy
    state = capture_rng(torch.device("cpu"))
    path = save_checkpoint({"step": 0, "model": {}, "rng": state}, str(tmp_path), 0)
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    restore_rng(load_checkpoint(path)["rng"], torch.device("cpu"))
    got = (random.random(), np.random.randn(3), torch.rand(3))
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])


def test_metrics_jsonl_and_line(tmp_path, capsys):
    log = MetricsLogger(str(tmp_path), enabled=True, total_steps=100, progress=False)
    log.log(10, {"loss": 2.5, "lr": 0.0125, "images": 320, "data_share": 0.25, "bad": float("nan")})
    log.close()
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().strip())
    assert rec["step"] == 10 and rec["loss"] == 2.5 and rec["images"] == 320 and rec["bad"] is None
    line = capsys.readouterr().out
    assert "step  10/100" in line and "loss 2.5000" in line and "data_share 25%" in line
    assert os.path.isdir(tmp_path / "tensorboard")


def test_disabled_logger_writes_nothing(tmp_path, capsys):
    log = MetricsLogger(str(tmp_path / "x"), enabled=False)
    log.log(1, {"loss": 1.0})
    log.print("hello")
    log.close()
    assert not (tmp_path / "x").exists() and capsys.readouterr().out == ""


def test_format_line():
    assert format_line(3, 12, {"lr": 0.1, "img_per_s": 12345.6}) == "step  3/12 | lr 0.1 | img_per_s 12,345.6"
