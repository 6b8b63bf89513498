"""Memory does not grow with the dataset: fine-tuning on 10x the images, and the probe's streamed fit on 10x
the features, each peak within 1.3x of the small one's (RSS and PSS summed over the whole process tree,
sampled every 0.1 s, and the process's own exact peak RSS from wait4). Sizes are chosen so that the
old ways would fail: fine-tuning that decoded the training split into memory would add 3,000 x 3 x 128 x 128
x 4 bytes = 0.59 GB at 10x; a probe that loaded every feature, 200,000 x 256 x 4 bytes = 0.2 GB."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.dist_launch import quiet_env
from tests.train.conftest import ROOT, TRANSFER

pytestmark = pytest.mark.slow


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over a process and all its descendants, bytes."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0, 0
    rss = pss = 0
    for p in procs:
        try:
            mi = p.memory_full_info()
            rss, pss = rss + mi.rss, pss + getattr(mi, "pss", mi.rss)
        except psutil.Error:
            pass
    return rss, pss


def measured(cmd) -> dict:
    """Runs cmd; {"rss", "pss": peak sums over the tree (sampled), "maxrss": the process's own peak (exact),
    "out": its output}."""
    proc = subprocess.Popen(cmd, env=quiet_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak, done = [0, 0], threading.Event()

    def watch():
        while not done.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, out[-4000:]
    return {"rss": peak[0], "pss": peak[1], "maxrss": usage.ru_maxrss * 1024, "out": out}


def _image_folder(root, train_per_class, classes=10, size=144, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", 5)):
        for k in range(classes):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / f"c{k}" / f"{i}.jpg", quality=75)
    return root


def _check(small, large, what):
    print(what, {k: f"{small[k] / 2**20:.0f} -> {large[k] / 2**20:.0f} MiB" for k in ("rss", "pss", "maxrss")})
    for key in ("rss", "pss", "maxrss"):
        ratio = large[key] / small[key]
        assert ratio <= 1.3, f"{what}: peak {key} {small[key] / 2**20:.0f} MiB -> {large[key] / 2**20:.0f} MiB " \
                             f"({ratio:.2f}x) for 10x the data"


def test_finetuning_memory_does_not_grow_with_the_images(tmp_path):
    from wslfast.models import create_model

    torch.save(create_model("resnext_tiny", num_classes=5).state_dict(), tmp_path / "w.pth")
    runs = {}
    for n in (30, 300):  # per class: 300 and 3,000 training images, the same 12 steps
        root = _image_folder(tmp_path / f"n{n}", n)
        runs[n] = measured([sys.executable, TRANSFER, "--checkpoint", tmp_path / "w.pth", "--arch", "resnext_tiny",
                            "--data", root, "--mode", "finetune", "--baseline", "false", "--steps", "12",
                            "--batch-size", "16", "--image-size", "128", "--device", "cpu", "--num-threads", "1",
                            "--out", tmp_path / f"out{n}"])
        assert f"{10 * n:,} train" in runs[n]["out"]
    _check(runs[30], runs[300], "fine-tuning")


STREAMED_FIT = """
import sys, numpy as np, torch
from wslfast.transfer.features import FeatureStore, FeatureReader
from wslfast.transfer.probe import fit_streamed
folder, n = sys.argv[1], int(sys.argv[2])
store = FeatureStore(folder, key={}, dim=256, num_samples=n, part_size=4096, dtype="float32")
rng = np.random.default_rng(0)
for k in range(store.num_parts):
    a, b = store.part_range(k)
    store.write_part(k, rng.standard_normal((b - a, 256), dtype=np.float32), rng.integers(0, 10, b - a))
reader = FeatureReader(folder)
count, mean, var = reader.moments()
w, b = fit_streamed(reader.stream(256, seed=0), 2 * n // 256, 256, 10, torch.from_numpy(mean),
                    torch.from_numpy(var).sqrt(), 1e-3, "sgd", 0.1)
print("fitted", count, float(w.abs().sum()))
"""


def test_streamed_probe_memory_does_not_grow_with_the_features(tmp_path):
    runs = {n: measured([sys.executable, "-c", STREAMED_FIT, tmp_path / f"f{n}", str(n)]) for n in (20_000, 200_000)}
    assert "fitted 200000" in runs[200_000]["out"]
    _check(runs[20_000], runs[200_000], "streamed probe")
