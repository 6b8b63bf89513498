"""transfer.py: linear probe and fine-tuning on the demo target task, from our checkpoints and from plain
torchvision-format state_dicts; top-1/top-5 lines parsed and checked for sense; bad inputs refused."""
import re

import pytest
import torch

from tests.train.conftest import TRANSFER, run_script
from wslfast.engine import load_checkpoint

pytestmark = pytest.mark.slow
LINE = re.compile(r"top-1\s+([\d.]+)%\s+top-5\s+([\d.]+)%")


def _scores(stdout):
    return [(float(a), float(b)) for a, b in LINE.findall(stdout)]


def test_linear_probe_with_baseline(small_checkpoint):
    proc = run_script(TRANSFER, ["--checkpoint", small_checkpoint, "--device", "cpu", "--lbfgs-iters", "20"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scores = _scores(proc.stdout)
    assert len(scores) == 2 and "random init" in proc.stdout and "pretraining gain" in proc.stdout
    for top1, top5 in scores:
        assert 0 <= top1 <= top5 <= 100


def test_finetune_from_plain_state_dict(small_checkpoint, tmp_path):
    from wslfast.data.demo import demo_corpus_dir
    from wslfast.engine import Config

    ckpt = load_checkpoint(small_checkpoint)
    plain = tmp_path / "backbone.pth"
    torch.save(ckpt["model"], plain)  # a torchvision-format state_dict, no config inside
    target = f"{demo_corpus_dir(Config(ckpt['config']))}/target"
    proc = run_script(TRANSFER, ["--checkpoint", plain, "--arch", "resnext_tiny", "--mode", "finetune",
                                 "--epochs", "1", "--baseline", "false", "--device", "cpu", "--data", target])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_scores(proc.stdout)) == 1 and "random init" not in proc.stdout


@pytest.mark.parametrize("args,match", [
    (["--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["--mode", "fewshot"], "mode must be linear, finetune or zeroshot"),
])
def test_bad_input(args, match, tmp_path):
    proc = run_script(TRANSFER, args)
    assert proc.returncode != 0 and match in proc.stderr


def test_plain_state_dict_needs_arch(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    proc = run_script(TRANSFER, ["--checkpoint", path])
    assert proc.returncode != 0 and "give --arch" in proc.stderr
