"""The pipeline benchmark's two sides agree on what they produce (so its comparison is fair)."""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("nvidia.dali")
pytest.importorskip("webdataset")


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pipeline.py"
    spec = importlib.util.spec_from_file_location("bench_pipeline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_both_sides_yield_the_same_kind_of_batches(tmp_path, mode):
    bench = _bench()
    shards = bench.make_shards(tmp_path, 12, 80, 60)
    a = next(iter(bench.dali_loader(shards, mode, 4, 1, 32, "cpu")))
    b = next(iter(bench.torchvision_loader(shards, mode, 4, 0, 32)))
    for (x, y) in (a, b):
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.num_classes == 100 and y.batch_size == 4 and y.indices.numel() == 16
    if mode == "eval":  # same images in the same order: nearly the same pixels (resampling differs a bit)
        assert torch.equal(a[1].indices, b[1].indices)
        assert (a[0] - b[0]).abs().mean() < 0.05
    r = bench.time_impl("dali", shards, mode, 4, 1, 32, "cpu", epochs=1, warmup=1)
    assert r["images"] == 4 * (2 * 3 - 1) and len(r["times_ms"]) == 5  # 2 passes of 3 batches, 1 warm-up
