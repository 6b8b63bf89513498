"""transfer.py's SWAG additions end to end on the small demo corpus: zero-shot through the hashtag head,
fine-tuning with mixup + label smoothing + EMA, and the linear probe / zero-shot on RegNetY and ViT
checkpoints from pretrain.py (--arch, --optimizer)."""
import re

import pytest

from tests.train.conftest import PRETRAIN, TRANSFER, run_script
from wslfast.engine import list_checkpoints

pytestmark = pytest.mark.slow
# a result line: "  pretrained PATH  top-1 X%" (+ "  top-5 Y%" only for tasks of more than 5 classes)
LINE = re.compile(r"^  (?:pretrained|random init).*?top-1\s+([\d.]+)%(?:\s+top-5\s+([\d.]+)%)?$", re.M)


def test_zeroshot_on_the_demo_task(small_checkpoint):
    proc = run_script(TRANSFER, ["--checkpoint", small_checkpoint, "--device", "cpu", "--mode", "zeroshot"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "zeroshot: 3/3 classes have hashtags" in proc.stdout and "chance top-1 33.3%" in proc.stdout
    scores = LINE.findall(proc.stdout)
    # the demo task here has 3 classes: top-1 only
    assert len(scores) == 2 and all(0 <= float(t1) <= 100 and t5 == "" for t1, t5 in scores)


def test_finetune_with_mixup_label_smoothing_and_ema(small_checkpoint):
    proc = run_script(TRANSFER, ["--checkpoint", small_checkpoint, "--device", "cpu", "--mode", "finetune",
                                 "--epochs", "1", "--baseline", "false", "--mixup", "0.1", "--label-smoothing",
                                 "0.1", "--ema", "0.9", "--ema-warmup", "0.1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "last weights: top-1" in proc.stdout and len(LINE.findall(proc.stdout)) == 1


@pytest.mark.parametrize("arch,optimizer", [("regnet_y_tiny", "sgd"), ("vit_tiny", "adamw")])
def test_other_backbones_pretrain_then_probe_and_zeroshot(small_args, arch, optimizer, tmp_path):
    out = tmp_path / arch
    lr = "0.02" if optimizer == "sgd" else "0.001"
    proc = run_script(PRETRAIN, small_args + ["--out", out, "--steps", "2", "--arch", arch, "--optimizer", optimizer,
                                              "--lr", lr])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = list_checkpoints(str(out))[-1][1]
    # ViT at another resolution than its pretraining (32 px): pos-embeddings interpolated 4x4 -> 6x6 on load,
    # for the probe's backbone and for the zero-shot hashtag model alike
    size = ["--image-size", "48"] if arch == "vit_tiny" else []
    proc = run_script(TRANSFER, ["--checkpoint", ckpt, "--device", "cpu", "--mode", "linear,zeroshot",
                                 "--lbfgs-iters", "10", "--baseline", "false", *size])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(LINE.findall(proc.stdout)) == 2 and ("48px" in proc.stdout) == bool(size)


def test_zeroshot_bad_class_map(small_checkpoint, tmp_path):
    bad = tmp_path / "map.tsv"
    bad.write_text("dog\tnot-a-synset\n")
    proc = run_script(TRANSFER, ["--checkpoint", small_checkpoint, "--mode", "zeroshot", "--class-map", bad])
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "expected `class<TAB>synset`" in proc.stderr
    assert "Traceback" not in proc.stderr
