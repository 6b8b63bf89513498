"""The feature store of the linear probe: parts written whole and read back, moments merged exactly (against
float64 over all rows), resume by part, another extraction's folder refused, damaged or overflowing data
named, and the shuffled stream: every sample once a round, split over ranks, a fixed batch size."""
import os

import numpy as np
import pytest
import torch

from wslfast.errors import DataError, RunFolderError
from wslfast.transfer.features import FeatureReader, FeatureStore, merge_moments, order, part_moments

KEY = {"weights": "abc", "split": "train"}


def _store(folder, n=23, dim=5, part_size=7, dtype="float32", key=KEY, **kw):
    return FeatureStore(str(folder), key=key, dim=dim, num_samples=n, part_size=part_size, dtype=dtype, **kw)


def _fill(store, seed=0, scale=1.0, offset=0.0):
    """Writes every part with random features; returns (all x, all y) in store order."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(store.num_parts):
        a, b = store.part_range(k)
        x = (rng.standard_normal((b - a, store.dim)) * scale + offset).astype(np.float32)
        y = rng.integers(0, 4, b - a)
        store.write_part(k, x, y)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("sizes", [[1], [1, 1, 1], [5, 1, 17, 3], [100, 2]])
def test_merge_moments_matches_float64_over_all_rows(sizes):
    rng = np.random.default_rng(len(sizes))
    # a large offset: sum(x^2) - n mean^2 would lose the variance here, the pairwise merge does not
    parts = [rng.standard_normal((n, 3)) * 1e-3 + 1e4 for n in sizes]
    n, mean, m2 = merge_moments(part_moments(p) for p in parts)
    every = np.concatenate(parts)
    assert n == len(every)
    np.testing.assert_allclose(mean, every.mean(0), rtol=1e-14)
    np.testing.assert_allclose(m2 / n, every.var(0), rtol=1e-6)
    with pytest.raises(DataError, match="no samples"):
        merge_moments([])


def test_write_read_round_trip_and_moments(tmp_path):
    store = _store(tmp_path / "f")
    assert store.num_parts == 4 and store.part_range(3) == (21, 23)
    x, y = _fill(store)
    assert sorted(os.listdir(tmp_path / "f")) == ["index.json"] + [f"part-{k:05d}.npz" for k in range(4)]
    reader = FeatureReader(str(tmp_path / "f"))
    xa, ya = reader.load_all()
    assert xa.dtype == torch.float32 and torch.equal(xa, torch.from_numpy(x)) and torch.equal(ya, torch.from_numpy(y))
    n, mean, var = reader.moments()
    assert n == 23
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(var, x.astype(np.float64).var(0), rtol=1e-10)
    assert [len(p[1]) for p in reader.parts(rank=1, world=2)] == [7, 2]  # parts 1 and 3


def test_float16_store_keeps_the_moments_of_what_it_stored(tmp_path):
    store = _store(tmp_path / "f", dtype="float16")
    x, _ = _fill(store, scale=3.0, offset=2.0)
    reader = FeatureReader(str(tmp_path / "f"))
    stored = reader.load_all()[0]
    assert stored.dtype == torch.float16
    np.testing.assert_allclose(stored.float().numpy(), x, rtol=1e-3, atol=1e-3)
    _, mean, _ = reader.moments()
    np.testing.assert_allclose(mean, stored.double().mean(0).numpy(), rtol=1e-12)


def test_resume_by_part_and_rank(tmp_path):
    store = _store(tmp_path / "f")
    assert store.missing_parts(0, 2) == [0, 2] and store.missing_parts(1, 2) == [1, 3]
    store.write_part(2, np.zeros((7, 5)), np.zeros(7))
    again = _store(tmp_path / "f")  # the same extraction, later: what is done stays done
    assert again.missing_parts() == [0, 1, 3] and again.missing_parts(0, 2) == [0]
    with pytest.raises(DataError, match="3 of 4 feature parts missing"):
        FeatureReader(str(tmp_path / "f"))
    assert not [f for f in os.listdir(tmp_path / "f") if ".tmp" in f]


@pytest.mark.parametrize("change,needle", [
    (dict(key={"weights": "other", "split": "train"}), 'weights "abc" there, "other" here'),
    (dict(part_size=8), "part_size 7 there, 8 here"),
    (dict(dtype="float16"), 'dtype "float32" there, "float16" here'),
    (dict(n=24), "num_samples 23 there, 24 here"),
])
def test_another_extraction_is_refused(tmp_path, change, needle):
    _store(tmp_path / "f")
    with pytest.raises(RunFolderError, match="holds features of another extraction") as e:
        _store(tmp_path / "f", **change)
    assert needle in str(e.value)


def test_bad_parts_are_named(tmp_path):
    store = _store(tmp_path / "f", n=4, part_size=2, dtype="float16")
    with pytest.raises(ValueError, match=r"expected features \[2, 5\] and labels \[2\]"):
        store.write_part(0, np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(DataError, match="non-finite features"):
        store.write_part(0, np.full((2, 5), np.nan), np.zeros(2))
    with pytest.raises(DataError, match="exceed the range of float16.*--feature-dtype float32"):
        store.write_part(0, np.full((2, 5), 1e5), np.zeros(2))
    store.write_part(0, np.ones((2, 5)), np.zeros(2))
    store.write_part(1, np.ones((2, 5)), np.zeros(2))
    path = tmp_path / "f" / "part-00001.npz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="part-00001.npz is damaged"):
        FeatureReader(str(tmp_path / "f")).load_all()
    (tmp_path / "f" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="index.json is unreadable"):
        FeatureReader(str(tmp_path / "f"))


def _rounds(stream, batches):
    xs, ys = zip(*(next(stream) for _ in range(batches)))
    return torch.cat(xs), torch.cat(ys)


def test_stream_gives_every_sample_once_a_round_in_a_new_order(tmp_path):
    store = _store(tmp_path / "f", n=24, dim=1, part_size=6)
    for k in range(4):  # feature = the sample's id
        a, b = store.part_range(k)
        store.write_part(k, np.arange(a, b, dtype=np.float32)[:, None], np.zeros(b - a))
    reader = FeatureReader(str(tmp_path / "f"))
    stream = reader.stream(batch_size=4, seed=3)
    first, _ = _rounds(stream, 6)
    second, _ = _rounds(stream, 6)
    assert sorted(first[:, 0].tolist()) == sorted(second[:, 0].tolist()) == list(range(24))
    assert first[:, 0].tolist() != second[:, 0].tolist()
    # two ranks: the parts split between them, together every sample once a round
    r0 = _rounds(reader.stream(4, rank=0, world=2, seed=3), 3)[0][:, 0].tolist()
    r1 = _rounds(reader.stream(4, rank=1, world=2, seed=3), 3)[0][:, 0].tolist()
    assert sorted(r0 + r1) == list(range(24)) and len(r0) == len(r1) == 12


def test_stream_batches_straddle_parts_and_fewer_parts_than_ranks(tmp_path):
    store = _store(tmp_path / "f", n=10, dim=1, part_size=6)
    for k in range(2):
        a, b = store.part_range(k)
        store.write_part(k, np.arange(a, b, dtype=np.float32)[:, None], np.zeros(b - a))
    reader = FeatureReader(str(tmp_path / "f"))
    stream = reader.stream(batch_size=3, seed=0)
    batches = [next(stream)[0] for _ in range(10)]  # 30 samples: 3 rounds of 10, batches across parts
    assert all(b.shape == (3, 1) for b in batches)
    assert sorted(torch.cat(batches)[:, 0].tolist()) == sorted(list(range(10)) * 3)
    # 2 parts, 3 ranks: each part's rows are split instead (6 rows: 2 + 2 + 2; 4 rows: 2 + 1 + 1)
    got = [_rounds(reader.stream(1, rank=r, world=3, seed=0), n)[0][:, 0].tolist() for r, n in enumerate((4, 3, 3))]
    assert sorted(sum(got, [])) == list(range(10))
    tiny = _store(tmp_path / "t", n=2, dim=1, part_size=1)
    for k in range(2):
        tiny.write_part(k, np.zeros((1, 1)), np.zeros(1))
    with pytest.raises(DataError, match="rank 2 of 3 gets none of its 2 samples"):
        next(FeatureReader(str(tmp_path / "t")).stream(1, rank=2, world=3))


def test_order_is_a_seeded_permutation():
    a, b = order(0, 1000), order(0, 1000)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(1000)) and not np.array_equal(a, order(1, 1000))
