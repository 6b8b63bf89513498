"""transfer.py end to end on the small demo corpus: the linear probe (features on disk, reused by the next
run; the saved model scores what was reported), fine-tuning from a plain torchvision-format state_dict (step
lines with elapsed time and ETA), a run folder that is this run's (a finished run re-evaluated, another
config refused, --resume none refused), and bad inputs as one line."""
import json
import re

import pytest
import torch

from tests.train.conftest import TRANSFER, run_script
from wslfast.engine import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow
LINE = re.compile(r"top-1\s+([\d.]+)%")


def _scores(stdout):
    return [float(a) for a in LINE.findall(stdout)]


def test_linear_probe_with_baseline_saves_model_and_metrics(small_checkpoint, tmp_path):
    from wslfast.data.loaders import eval_loader
    from wslfast.models import create_model

    out = tmp_path / "probe"
    args = ["--checkpoint", small_checkpoint, "--device", "cpu", "--lbfgs-iters", "20", "--out", out,
            "--feature-part-size", "16"]
    proc = run_script(TRANSFER, args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scores = _scores(proc.stdout)
    assert len(scores) == 2 and "random init" in proc.stdout and "pretraining gain" in proc.stdout
    assert "top-5" not in proc.stdout  # a 3-class task: top-5 would always be 100%
    assert "fit: L-BFGS, 20 iterations" in proc.stdout and "full-batch" in proc.stdout
    assert "features train: " in proc.stdout and "time " in proc.stdout and "peak memory" in proc.stdout
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["pretrained"]["top1"] == pytest.approx(scores[0], abs=0.05)
    assert metrics["pretrained"]["top5"] is None and len(metrics["classes"]) == 3  # synthetic_classes 3
    assert metrics["gain_top1"] == pytest.approx(scores[0] - scores[1], abs=0.1)
    index = json.load(open(out / "features" / "train" / "index.json"))
    assert index["part_size"] == 16 and (out / "random-init" / "features" / "val" / "index.json").is_file()
    # the saved model is the probe itself: backbone + fitted classifier, standardisation folded in
    model = create_model("resnext_tiny", num_classes=3, fused=False)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in eval_loader(f"{metrics['data']}/val", 16, device="cpu", image_size=metrics["image_size"],
                                resize_size=round(metrics["image_size"] * 256 / 224), num_threads=1):
            correct += (model(x.float()).argmax(1) == y).sum().item()
            total += y.numel()
    assert 100.0 * correct / total == pytest.approx(metrics["pretrained"]["top1"], abs=1e-6)
    # the streamed solver on the same features: nothing extracted again, the same folder is this run's
    again = run_script(TRANSFER, args + ["--probe-solver", "sgd", "--probe-epochs", "5", "--baseline", "false"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "features train: all" in again.stdout and "fit: sgd, 5 epochs" in again.stdout
    assert abs(_scores(again.stdout)[0] - scores[0]) <= 34  # 3 classes, few images: the same ballpark
    fresh = run_script(TRANSFER, args + ["--resume", "none"])
    assert fresh.returncode == 1 and fresh.stderr.startswith("error: ") and "already holds features" in fresh.stderr
    other = run_script(TRANSFER, args + ["--image-size", "48"])
    assert other.returncode == 1 and "holds features of another extraction" in other.stderr, other.stderr


def test_finetune_from_plain_state_dict_and_its_run_folder(small_checkpoint, tmp_path):
    from wslfast.engine import Config
    from wslfast.engine.datasets import demo_corpus_dir

    ckpt = load_checkpoint(small_checkpoint)
    plain = tmp_path / "backbone.pth"
    torch.save(ckpt["model"], plain)  # a torchvision-format state_dict, no config inside
    target = f"{demo_corpus_dir(Config(ckpt['config']))}/target"
    args = ["--checkpoint", plain, "--arch", "resnext_tiny", "--mode", "finetune", "--steps", "4", "--baseline",
            "false", "--device", "cpu", "--data", target, "--batch-size", "8", "--log-every", "1",
            "--checkpoint-every", "2"]
    proc = run_script(TRANSFER, args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_scores(proc.stdout)) == 1 and "random init" not in proc.stdout
    steps = re.findall(r"step (\d)/4 \| epoch [\d.]+ \| loss [\d.]+ \| lr [\d.e-]+ \| .* \| elapsed \S+ \| eta \S+",
                       proc.stdout)
    assert steps == ["1", "2", "3", "4"], proc.stdout
    out = tmp_path / "transfer-finetune"  # beside the checkpoint by default
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file() and (out / "run.json").is_file()
    assert [s for s, _ in list_checkpoints(str(out))] == [2, 4]
    # the same command again: the finished run is evaluated, not trained again
    again = run_script(TRANSFER, args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run already complete at step 4" in again.stdout and _scores(again.stdout) == _scores(proc.stdout)
    # another run into the folder, or a fresh start over its checkpoints: refused, nothing touched
    other = run_script(TRANSFER, args + ["--lr", "0.5"])
    assert other.returncode == 1 and other.stderr.startswith("error: ") and "holds a different run (lr " in other.stderr
    assert "0.5 here" in other.stderr and "Traceback" not in other.stderr
    fresh = run_script(TRANSFER, args + ["--resume", "none"])
    assert fresh.returncode == 1 and "--resume none would mix a new run into it" in fresh.stderr
    # a longer run of the same config continues from step 4
    longer = run_script(TRANSFER, [a if a != "4" else "6" for a in args])
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "resumed from" in longer.stdout and "at step 4" in longer.stdout and "step 6/6" in longer.stdout


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


def test_sigterm_checkpoints_and_the_next_run_ends_bit_identical(small_checkpoint, tmp_path, started):
    import signal

    from tests.train.conftest import wait_for_line

    args = ["--checkpoint", small_checkpoint, "--mode", "finetune", "--baseline", "false", "--device", "cpu",
            "--steps", "24", "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "100", "--mixup", "0.2",
            "--ema", "0.9"]
    reference = run_script(TRANSFER, args + ["--out", tmp_path / "ref"])
    assert reference.returncode == 0, reference.stdout + reference.stderr
    proc = started(TRANSFER, args + ["--out", tmp_path / "run"])
    wait_for_line(proc, "step 3/24")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout + stderr
    stopped = re.search(r"stopped by SIGTERM at step (\d+); checkpoint (\S+); run the same command again", stdout)
    assert stopped and 3 <= int(stopped.group(1)) < 24, stdout
    again = run_script(TRANSFER, args + ["--out", tmp_path / "run"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resumed from {stopped.group(2)} at step {stopped.group(1)}" in again.stdout
    a = load_checkpoint(list_checkpoints(str(tmp_path / "ref"))[-1][1])
    b = load_checkpoint(list_checkpoints(str(tmp_path / "run"))[-1][1])
    assert a["step"] == b["step"] == 24
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _scores(again.stdout) == _scores(reference.stdout)
