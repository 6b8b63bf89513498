"""End to end, as a CC12M user runs it: an img2dataset folder (tars + parquet, real JPEG bytes, some failed
downloads) -> a caption vocabulary -> shards -> 20 steps of train/pretrain.py on them: the README's three
commands (wslfast/data/README.md), each as its own process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data import webfixtures as W

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_img2dataset_to_caption_vocab_to_shards_to_20_training_steps(tmp_path, wordnet):
    cc = tmp_path / "cc12m"
    W.write_img2dataset(cc, W.cc_rows(120, seed=1), number_sample_per_shard=40, failed=[5, 50, 77])
    # the README's three commands
    _run("-m", "wslfast.data", "vocab", "--webdataset", f"{cc}/{{00000..00002}}.tar", "--kind", "caption",
         "--top", "25000", "--min-count", "2", "--out", tmp_path / "cc12m-vocab.json")
    _run("-m", "wslfast.data", "shards", "--webdataset", f"{cc}/{{00000..00002}}.tar", "--vocab",
         tmp_path / "cc12m-vocab.json", "--out", tmp_path / "cc12m-shards", "--shard-size", "40",
         "--sampling", "cap", "--cap", "20000", "--workers", "1")
    out = _run("train/pretrain.py", "--data", tmp_path / "cc12m-shards", "--steps", "20", "--batch-size", "8",
               "--image-size", "32", "--device", "cpu", "--num-threads", "1", "--log-every", "1",
               "--tensorboard", "false", "--warmup-images", "0", "--lr", "0.02", "--out", tmp_path / "run")
    m = json.loads((tmp_path / "cc12m-shards" / "manifest.json").read_text())
    assert m["tags_format"] == "img2dataset" and m["skipped"]["not_downloaded"] == 3 and m["records"] == 120
    assert m["num_samples"] == m["num_images"] >= 100  # cap 20000: nothing above it here, every image kept
    assert "step 20/20" in out.stdout and (tmp_path / "run" / "ckpt_000000020.pt").is_file()
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 20 and all(0 < x < 100 for x in losses)
