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


# ---- MetaCLIP's per-label cap and SuperClass's IDF target weights -------------------------------------------
def _multi_label_data(n=6000, V=8, seed=3):
    rng = np.random.default_rng(seed)
    p = np.array([0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02])[:V]
    return [sorted(set(rng.choice(V, size=int(rng.integers(1, 4)), p=p / p.sum()).tolist())) for _ in range(n)]


def test_cap_keep_hashed_matches_a_brute_force_reference():
    from wslfast.data.build.targets import STREAM_CAP, cap_keep_hashed, uniform

    labels = _multi_label_data(500)
    V, t, seed = 8, 40, 11
    keys = np.arange(1, 501, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    n = np.bincount([l for r in labels for l in r], minlength=V)
    want = []
    for key, row in zip(keys, labels):  # MetaCLIP's balance_sampling, one record at a time
        kept = 0
        for slot, j in enumerate(row):
            p = min(1.0, t / max(int(n[j]), 1))
            if float(uniform(np.array([key]), seed, STREAM_CAP, np.uint64(slot))[0]) < p:
                kept = 1
                break
        want.append(kept)
    flat = [l for r in labels for l in r]
    got = cap_keep_hashed(keys, flat, [len(r) for r in labels], n, t, seed)
    assert got.tolist() == want
    perm = np.random.default_rng(0).permutation(len(labels))
    pl = [labels[i] for i in perm]
    assert cap_keep_hashed(keys[perm], [l for r in pl for l in r], [len(r) for r in pl], n, t, seed).tolist() == \
        [want[i] for i in perm]


@pytest.mark.parametrize("hashed", [False, True])
def test_cap_flattens_the_head_and_keeps_the_tail(hashed):
    from wslfast.data.build.targets import cap_keep_hashed, cap_sample

    labels, _ = _single_label_data(n=20000)  # label counts ~10000, 5000, 3000, 1400, 600
    t = 2000
    n = label_marginal(labels, 5)
    if hashed:
        keys = np.arange(len(labels), dtype=np.uint64) * np.uint64(2654435761) + np.uint64(7)
        kept = cap_keep_hashed(keys, [r[0] for r in labels], [1] * len(labels), n, t, seed=1)
    else:
        kept = cap_sample(labels, 5, t, np.random.default_rng(1))
    after = np.bincount([r[0] for r, k in zip(labels, kept) if k], minlength=5)
    for j in range(5):
        if n[j] <= t:
            assert after[j] == n[j]  # at or under the cap: every image kept
        else:
            sd = np.sqrt(t * (1 - t / n[j]))
            assert abs(after[j] - t) < 4 * sd, (j, after[j])  # binomial(n, t/n) around t
    # an image is kept when ANY of its labels keeps it: P = 1 - prod(1 - p_j)
    multi = _multi_label_data(20000)
    m = label_marginal(multi, 8)
    p = np.minimum(1.0, 500 / m)
    kept = cap_sample(multi, 8, 500, np.random.default_rng(2))
    rows = [i for i, r in enumerate(multi) if r == [0, 1]]
    assert abs(kept[rows].mean() - (1 - (1 - p[0]) * (1 - p[1]))) < 0.05
    with pytest.raises(ValueError, match="cap must be >= 1"):
        cap_sample(multi, 8, 0, np.random.default_rng(0))


def test_idf_weights_match_the_direct_formula():
    from wslfast.data.build.targets import idf_class_weights, idf_row_weights
    from wslfast.data.labels.vocabulary import document_frequencies, idf_weights

    labels = _multi_label_data(3000) + [[0], [7, 0]]
    df, n = document_frequencies(labels)
    cw = idf_class_weights([df.get(j, 0) for j in range(9)], n)
    assert cw[8] == 0.0 and cw.shape == (9,)
    got = idf_row_weights([l for r in labels for l in r], [len(r) for r in labels], cw)
    want = [w for r in labels for w in idf_weights(r, df, n)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # a label in every document has weight 0; a row of only such labels falls back to 1/k
    np.testing.assert_allclose(idf_row_weights([0, 1, 2], [1, 2], [0.0, 0.0, 1.0]), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(idf_row_weights([0, 1], [2, 0], [0.0, 0.0]), [0.5, 0.5])
    with pytest.raises(ValueError, match="num_docs"):
        idf_class_weights([1], 0)
    with pytest.raises(ValueError, match="document frequencies"):
        idf_class_weights([5], 3)


def test_build_with_cap_matches_brute_force(corpus, vocab, tmp_path):
    """--sampling cap through the build: the samples are exactly the records the per-record rule keeps."""
    import json

    from wslfast.data.build import write_shards
    from wslfast.data.build.targets import STREAM_CAP, uniform
    from wslfast.data.sources import record_key

    t, seed = 12, 4
    m = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "cap", shard_size=40, sampling="cap",
                     cap=t, seed=seed)
    rows = []
    with open(corpus["tags"]) as f:
        for line_no, line in enumerate(f, 1):
            rec = json.loads(line)
            labels = vocab.labels_of(rec["tags"])
            if labels:
                rows.append((record_key(0, line_no), labels))
    n = np.bincount([l for _, r in rows for l in r], minlength=len(vocab))
    assert m["image_label_counts"] == n.tolist() and m["num_images"] == len(rows)
    kept = np.zeros(len(vocab), dtype=np.int64)
    total = 0
    for key, labels in rows:
        u = [float(uniform(np.array([key], dtype=np.uint64), seed, STREAM_CAP, np.uint64(s))[0])
             for s in range(len(labels))]
        if any(ui < min(1.0, t / n[j]) for ui, j in zip(u, labels)):
            kept[labels] += 1
            total += 1
    assert m["num_samples"] == total < len(rows) and m["label_counts"] == kept.tolist() and m["cap"] == t
    assert (kept[n <= t] == n[n <= t]).all()


def test_idf_target_weights_reach_the_loader(corpus, vocab, tmp_path):
    """--target-weights idf: the manifest's class_weights become each row's weights in the train batches."""
    pytest.importorskip("nvidia.dali")
    import torch

    from wslfast.data.build import write_shards
    from wslfast.data.labels.vocabulary import idf_weights
    from wslfast.data.loaders import padded_to_targets, train_loader

    m = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "idf", shard_size=60, target_weights="idf")
    df, n = m["image_label_counts"], m["num_images"]
    assert m["class_weights"] == pytest.approx([np.log(n / d) if d else 0.0 for d in df], abs=1e-6)
    loader = train_loader(tmp_path / "idf", 16, device="cpu", image_size=32, num_threads=1)
    _, t = next(iter(loader))
    o = t.offsets.tolist()
    for i in range(t.batch_size):
        ids = t.indices[o[i]:o[i + 1]].tolist()
        want = idf_weights(ids, {j: df[j] for j in ids}, n)
        np.testing.assert_allclose(t.weights[o[i]:o[i + 1]].numpy(), want, rtol=1e-5)
    # without class weights: 1/k, as before
    padded = torch.tensor([[2, 0, -1], [1, -1, -1]])
    assert padded_to_targets(padded, 3).weights.tolist() == [0.5, 0.5, 1.0]
    w = padded_to_targets(padded, 3, torch.tensor([0.0, 2.0, 1.0])).weights.tolist()
    assert w == [0.0, 1.0, 1.0]  # row 0 sorted: ids (0, 2) -> (0, 1); row 1 alone -> 1
    assert padded_to_targets(torch.tensor([[0, -1]]), 3, torch.tensor([0.0, 2.0, 1.0])).weights.tolist() == [1.0]
