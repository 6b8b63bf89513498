import numpy as np
import pytest

from wslfast.data.build.targets import add_label_noise, label_marginal, resample_copies


def _single_label_data(n=20000, probs=(0.5, 0.25, 0.15, 0.07, 0.03), seed=0):
    rng = np.random.default_rng(seed)
    return [[int(x)] for x in rng.choice(len(probs), size=n, p=probs)], np.array(probs)


def test_noise_rate_and_marginal():
    rng = np.random.default_rng(0)
    V = 6
    labels = [list(rng.choice(V, size=int(rng.integers(1, 4)), replace=False,
                              p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])) for _ in range(8000)]
    noisy = add_label_noise(labels, 0.3, V, np.random.default_rng(1))
    assert [len(r) for r in noisy] == [len(r) for r in labels]
    orig = np.concatenate([np.array(r) for r in labels])
    new = np.concatenate([np.array(r) for r in noisy])
    changed = orig != new
    assert abs(changed.mean() - 0.3) < 0.015
    # The replacement of label a is drawn from the marginal without a: P(b | a) = m_b / (1 - m_a).
    m = label_marginal(labels, V) / orig.size
    for a in (0, 3):
        got = np.bincount(new[changed & (orig == a)], minlength=V).astype(float)
        assert got[a] == 0
        want = m.copy()
        want[a] = 0
        want /= want.sum()
        assert np.abs(got / got.sum() - want).max() < 0.04


def test_noise_edges():
    labels = [[0, 1], [2], [1]]
    assert add_label_noise(labels, 0.0, 3, np.random.default_rng(0)) == labels
    flipped = add_label_noise(labels, 1.0, 3, np.random.default_rng(0))
    assert all(a != b for r, s in zip(labels, flipped) for a, b in zip(r, s))
    assert add_label_noise([[0], [0]], 1.0, 3, np.random.default_rng(0)) == [[0], [0]]  # nothing to swap in
    assert add_label_noise([], 0.5, 3, np.random.default_rng(0)) == []
    a = add_label_noise(labels * 50, 0.5, 3, np.random.default_rng(7))
    assert a == add_label_noise(labels * 50, 0.5, 3, np.random.default_rng(7))  # seeded
    with pytest.raises(ValueError, match="probability"):
        add_label_noise(labels, 1.5, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="label ids"):
        add_label_noise([[5]], 0.5, 3, np.random.default_rng(0))


@pytest.mark.parametrize("mode", ["natural", "sqrt", "uniform"])
def test_resampling_frequencies(mode):
    labels, p = _single_label_data()
    copies = resample_copies(labels, 5, mode, np.random.default_rng(3))
    assert abs(int(copies.sum()) - len(labels)) < 0.01 * len(labels)  # size stays near N
    freq = np.bincount(np.repeat([r[0] for r in labels], copies), minlength=5).astype(float)
    freq /= freq.sum()
    n = np.bincount([r[0] for r in labels], minlength=5).astype(float)
    want = {"natural": n, "sqrt": np.sqrt(n), "uniform": np.ones(5)}[mode]
    assert np.abs(freq - want / want.sum()).max() < 0.01
    if mode == "natural":
        assert (copies == 1).all()


def test_resampling_bad_input():
    with pytest.raises(ValueError, match="sampling"):
        resample_copies([[0]], 2, "log", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one label"):
        resample_copies([[0], []], 2, "sqrt", np.random.default_rng(0))
    assert resample_copies([], 2, "sqrt", np.random.default_rng(0)).size == 0


# --- the per-record (hashed) forms used by the shard pipeline ---------------------------------------------
from wslfast.data.build.targets import (WEIGHT_ONE, copies_hashed, noisy_labels_hashed, uniform,  # noqa: E402
                                  weights_fixed)


def _flat(labels):
    lengths = np.array([len(r) for r in labels])
    flat = np.concatenate([np.array(r, dtype=np.int64) for r in labels])
    slot = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return flat, lengths, slot


def test_uniform_is_uniform_and_keyed():
    keys = np.arange(200000, dtype=np.uint64)
    u = uniform(keys, 7, 1)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.003
    assert np.abs(np.histogram(u, 20, (0, 1))[0] / u.size - 0.05).max() < 0.002
    assert (uniform(keys[::-1], 7, 1) == u[::-1]).all()  # a function of the key, not of the position
    assert np.corrcoef(u, uniform(keys, 8, 1))[0, 1] < 0.01  # another seed, another stream
    assert np.corrcoef(u, uniform(keys, 7, 2))[0, 1] < 0.01


def test_hashed_noise_rate_and_marginal():
    rng = np.random.default_rng(0)
    V = 6
    labels = [list(rng.choice(V, size=int(rng.integers(1, 4)), replace=False,
                              p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])) for _ in range(8000)]
    flat, lengths, slot = _flat(labels)
    keys = np.repeat(rng.integers(0, 2**63, size=len(labels)).astype(np.uint64), lengths)
    m = label_marginal(labels, V)
    new = noisy_labels_hashed(flat, keys, slot, 0.3, m, seed=1)
    changed = new != flat
    assert abs(changed.mean() - 0.3) < 0.015
    for a in (0, 3):
        got = np.bincount(new[changed & (flat == a)], minlength=V).astype(float)
        want = m / m.sum()
        want[a] = 0
        assert got[a] == 0 and np.abs(got / got.sum() - want / want.sum()).max() < 0.04
    # the draws of a record do not depend on the other records of its batch
    part = slice(1000, 1500)
    assert (noisy_labels_hashed(flat[part], keys[part], slot[part], 0.3, m, seed=1) == new[part]).all()
    assert (noisy_labels_hashed(flat, keys, slot, 0.0, m, seed=1) == flat).all()


@pytest.mark.parametrize("mode", ["sqrt", "uniform"])
def test_hashed_resampling_frequencies(mode):
    labels, _ = _single_label_data()
    flat, lengths, _ = _flat(labels)
    n = np.bincount(flat, minlength=5)
    w = weights_fixed(flat, lengths, n, mode)
    keys = np.arange(len(labels), dtype=np.uint64) * np.uint64(7919)
    copies = copies_hashed(keys, w, len(labels), int(w.sum()), seed=3)
    assert abs(int(copies.sum()) - len(labels)) < 0.01 * len(labels)
    freq = np.bincount(np.repeat(flat, copies), minlength=5).astype(float)
    want = np.sqrt(n) if mode == "sqrt" else np.ones(5)
    assert np.abs(freq / freq.sum() - want / want.sum()).max() < 0.01
    assert w.max() <= WEIGHT_ONE
    with pytest.raises(ValueError, match="at least one label"):
        weights_fixed(flat[:2], np.array([2, 0]), n, mode)
