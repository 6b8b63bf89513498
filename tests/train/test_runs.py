"""A run's folder is its own (config in run.json, another run refused with one line, pruning and the final
line about this run's checkpoints only); a short run warms up, peaks and decays; the lr follows the paper's
rule on user data; each line has elapsed time and ETA; the end has total time and peak memory."""
import json
import os

import pytest

from tests.train.conftest import PRETRAIN, run_script
from wslfast.engine import Config, list_checkpoints

pytestmark = pytest.mark.slow


def _records(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def test_a_run_owns_its_folder(small_args, tmp_path):
    out = tmp_path / "run"
    args = small_args + ["--steps", "3", "--checkpoint-every", "1", "--keep-last", "2", "--out", out]
    first = run_script(PRETRAIN, args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.load(open(out / "run.json"))["config"]["lr"] == 0.02  # the config, written at the start
    assert first.stdout.strip().splitlines()[-1] == f"checkpoint: {out}/ckpt_000000003.pt"
    before = {p: os.path.getmtime(p) for _, p in list_checkpoints(str(out))}

    other = run_script(PRETRAIN, args + ["--lr", "0.05", "--batch-size", "4"])
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert other.stderr.strip() == (f"error: --out {out} holds a different run (batch_size 8 there, 4 here; "
                                    f"lr 0.02 there, 0.05 here): give a new --out for this one, or the same "
                                    f"settings to continue that run")
    fresh = run_script(PRETRAIN, args + ["--resume", "none"])
    assert fresh.returncode == 1 and "--resume none would mix a new run into it" in fresh.stderr
    assert {p: os.path.getmtime(p) for _, p in list_checkpoints(str(out))} == before  # nothing touched

    longer = run_script(PRETRAIN, args[:-2] + ["--steps", "5", "--out", out])  # same run, trained longer
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert f"resumed from {out}/ckpt_000000003.pt at step 3" in longer.stdout
    assert [s for s, _ in list_checkpoints(str(out))] == [4, 5]
    assert longer.stdout.strip().splitlines()[-1] == f"checkpoint: {out}/ckpt_000000005.pt"
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4, 5]
    # the summary's first loss is the run's first, not the resumed leg's
    assert f"done: loss {_records(out)[0]['loss']:.4f} (first logged)" in longer.stdout


def test_short_run_warms_up_peaks_and_decays(small_args, tmp_path):
    out = tmp_path / "short"
    proc = run_script(PRETRAIN, small_args + ["--steps", "20", "--warmup-images", "null", "--warmup-fraction", "0.2",
                                              "--warmup-start-lr", "0.002", "--halvings", "1", "--out", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lrs = [r["lr"] for r in _records(out)]
    # 160 images: warm-up over the first 32 (4 steps), then the peak, halved half-way through the rest
    assert lrs[:4] == pytest.approx([0.002, 0.0065, 0.011, 0.0155])
    assert lrs[4:12] == pytest.approx([0.02] * 8) and lrs[12:] == pytest.approx([0.01] * 8)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step")]
    assert len(lines) == 20 and all(" | elapsed " in line and " | eta " in line for line in lines)
    assert lines[-1].endswith("eta 0.0s")
    assert "time " in proc.stdout and " in all (training " in proc.stdout and "peak memory (RSS) " in proc.stdout


def test_lr_follows_the_paper_rule_on_user_data(small_args, tmp_path):
    from wslfast.engine.datasets import demo_corpus_dir

    i = small_args.index("--cache-dir")
    cfg = Config(cache_dir=small_args[i + 1], synthetic_images=48, synthetic_classes=3, image_size=32, seed=0,
                 sampling="natural")
    shards = os.path.join(demo_corpus_dir(cfg), "shards")
    out = tmp_path / "user"
    proc = run_script(PRETRAIN, small_args + ["--data", shards, "--lr", "null", "--steps", "2",
                                              "--lr-schedule", "constant", "--out", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "peak lr 0.003125" in proc.stdout and "paper's rule 0.1 x batch/256" in proc.stdout
    assert [r["lr"] for r in _records(out)] == pytest.approx([0.1 * 8 / 256] * 2)
