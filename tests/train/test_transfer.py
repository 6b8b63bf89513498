"""transfer.py: linear probe and fine-tuning on the demo target task, from our checkpoints and from plain
torchvision-format state_dicts; top-1/top-5 lines parsed and checked for sense; bad inputs refused."""
import re

import pytest
import torch

from tests.train.conftest import TRANSFER, run_script
from wslfast.engine import load_checkpoint

pytestmark = pytest.mark.slow
LINE = re.compile(r"top-1\s+([\d.]+)%")


def _scores(stdout):
    return [float(a) for a in LINE.findall(stdout)]


def test_linear_probe_with_baseline_saves_model_and_metrics(small_checkpoint, tmp_path):
    import json

    from wslfast.data.loaders import eval_loader
    from wslfast.models import create_model

    out = tmp_path / "probe"
    proc = run_script(TRANSFER, ["--checkpoint", small_checkpoint, "--device", "cpu", "--lbfgs-iters", "20",
                                 "--out", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scores = _scores(proc.stdout)
    assert len(scores) == 2 and "random init" in proc.stdout and "pretraining gain" in proc.stdout
    assert "top-5" not in proc.stdout  # a 3-class task: top-5 would always be 100%
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["pretrained"]["top1"] == pytest.approx(scores[0], abs=0.05)
    assert metrics["pretrained"]["top5"] is None and len(metrics["classes"]) == 3  # synthetic_classes 3
    assert metrics["gain_top1"] == pytest.approx(scores[0] - scores[1], abs=0.1)
    # the saved model is the probe itself: backbone + fitted classifier, standardisation folded in
    model = create_model("resnext_tiny", num_classes=3, fused=False)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.eval()
    val = f"{metrics['data']}/val"
    correct = total = 0
    with torch.no_grad():
        for x, y in eval_loader(val, 16, device="cpu", image_size=metrics["image_size"],
                                resize_size=round(metrics["image_size"] * 256 / 224), num_threads=1):
            correct += (model(x.float()).argmax(1) == y).sum().item()
            total += y.numel()
    assert 100.0 * correct / total == pytest.approx(metrics["pretrained"]["top1"], abs=1e-6)


def test_finetune_from_plain_state_dict(small_checkpoint, tmp_path):
    from wslfast.engine.datasets import demo_corpus_dir
    from wslfast.engine import Config

    ckpt = load_checkpoint(small_checkpoint)
    plain = tmp_path / "backbone.pth"
    torch.save(ckpt["model"], plain)  # a torchvision-format state_dict, no config inside
    target = f"{demo_corpus_dir(Config(ckpt['config']))}/target"
    proc = run_script(TRANSFER, ["--checkpoint", plain, "--arch", "resnext_tiny", "--mode", "finetune",
                                 "--epochs", "2", "--baseline", "false", "--device", "cpu", "--data", target])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_scores(proc.stdout)) == 1 and "random init" not in proc.stdout
    epochs = re.findall(r"epoch (\d)/2 \| loss ([\d.]+) \| lr [\d.e-]+ \| elapsed \S+ \| eta \S+", proc.stdout)
    assert [e for e, _ in epochs] == ["1", "2"], proc.stdout
    assert (tmp_path / "transfer-finetune" / "model.pt").is_file()  # beside the checkpoint by default
    assert (tmp_path / "transfer-finetune" / "metrics.json").is_file()


@pytest.mark.parametrize("args,match", [
    (["--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["--mode", "fewshot"], "key 'mode': expected linear, finetune or zeroshot"),
])
def test_bad_input(args, match, tmp_path):
    proc = run_script(TRANSFER, args)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and match in proc.stderr


def test_plain_state_dict_needs_arch(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    proc = run_script(TRANSFER, ["--checkpoint", path])
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: a plain state_dict does not name its architecture: give --arch"
