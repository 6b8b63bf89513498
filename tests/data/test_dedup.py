import io

import numpy as np
import pytest
from PIL import Image

from wslfast.data.build import dedup


def _photo(seed, size=96):
    """A smooth random 'photo' (sum of a few random sinusoids and blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        f, ph, c = rng.uniform(0.5, 4, 2), rng.uniform(0, 6.3), rng.uniform(0, 255, 3)
        img += np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + ph)[..., None] * c / 6
    img += rng.uniform(0, 120, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _reencode(im, fmt="JPEG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_dct_is_orthonormal_dct2():
    m = dedup._dct_matrix(8)
    assert np.allclose(m @ m.T, np.eye(8))
    x = np.random.default_rng(0).normal(size=8)
    n = np.arange(8)
    ref = np.array([np.sum(x * np.cos(np.pi * (2 * n + 1) * k / 16)) for k in range(8)])
    ref *= np.sqrt(2 / 8)
    ref[0] /= np.sqrt(2)
    assert np.allclose(m @ x, ref)


def test_phash_matches_its_definition():
    """phash (the 8x8 block of the DCT, the median by sort, bits packed) against the definition written
    out: the full 32x32 DCT-II in float64 by loops over cosines, np.median, bit k set for coefficient k."""
    n = np.arange(32)
    cos = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64) * np.sqrt(2 / 32)
    cos[0] /= np.sqrt(2)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (int(h), int(w)), dtype=np.uint8))
              for h, w in rng.integers(1, 120, (150, 2))] + [_photo(s, 100) for s in range(20)]
    exact = 0
    for im in images:
        grey = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
        low = (cos @ grey @ cos.T)[:8, :8].ravel()
        med = np.median(low[1:])
        want = sum(1 << k for k in range(64) if low[k] > med)
        # bits of coefficients that tie with the median up to rounding (flat images) may go either way
        ties = sum(1 << k for k in range(64) if abs(low[k] - med) <= 1e-9 * (1 + np.abs(low).max()))
        assert (dedup.phash(im) ^ want) & ~ties == 0
        exact += dedup.phash(im) == want
    assert exact >= len(images) - 3


def test_hamming_matches_python_popcount():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=50, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    assert dedup.hamming(a, b).tolist() == [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)]


def test_copies_are_caught_and_others_are_not():
    originals = [_photo(s) for s in range(12)]
    ref = np.array([dedup.phash(im) for im in originals], dtype=np.uint64)
    copies = [_reencode(originals[0].resize((61, 61)), quality=70),
              _reencode(originals[1], quality=40),
              _reencode(originals[2].resize((200, 200), Image.Resampling.BICUBIC), "PNG"),
              _reencode(originals[3].convert("L").convert("RGB"), quality=85)]
    others = [_photo(s) for s in range(100, 130)]
    q = np.array([dedup.phash(im) for im in copies + others], dtype=np.uint64)
    dup = dedup.near_duplicates(q, ref)
    assert dup[:4].all()
    assert not dup[4:].any()
    assert not dedup.near_duplicates(q, np.zeros(0, np.uint64)).any()


def test_hash_directory_counts_unreadable(tmp_path):
    _photo(0).save(tmp_path / "a.jpg")
    (tmp_path / "sub").mkdir()
    _photo(1).save(tmp_path / "sub" / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    hashes, bad = dedup.hash_directory(tmp_path)
    assert hashes.size == 2 and bad == 1
    assert int(hashes[0]) == dedup.phash_file(tmp_path / "a.jpg")
    par, bad2 = dedup.hash_directory(tmp_path, workers=2)
    assert par.tolist() == hashes.tolist() and bad2 == 1


def _near_set(rng, ref, n, max_flips):
    """Queries: copies of reference hashes with 0..max_flips random bits flipped."""
    base = ref[rng.integers(0, ref.size, n)]
    masks = [sum(1 << int(b) for b in rng.choice(64, size=int(k), replace=False))
             for k in rng.integers(0, max_flips + 1, n)]
    return base ^ np.array(masks, dtype=np.uint64)


@pytest.mark.parametrize("n_ref", [0, 1, 7, 3000, pytest.param(20000, marks=pytest.mark.slow)])
def test_index_equals_brute_force_and_faiss(n_ref):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(n_ref)
    ref = rng.integers(0, 2**64 - 1, size=n_ref, dtype=np.uint64, endpoint=True)
    if n_ref > 10:
        ref[:5] = ref[5:10]  # repeated reference hashes
        ref[10] = 0
    q = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64, endpoint=True)
    if n_ref:
        q = np.concatenate([q, _near_set(rng, ref, 2000, 16), np.array([~np.uint64(0)], dtype=np.uint64)])
    flat = faiss.IndexBinaryFlat(64)  # independent exact reference: faiss's brute-force range search
    flat.add(ref.view(np.uint8).reshape(-1, 8))
    mind = np.full(q.size, 65)  # every pair once: the nearest reference distance of each query
    for s in range(0, ref.size, 2048):
        mind = np.minimum(mind, dedup.hamming(q[:, None], ref[None, s:s + 2048]).min(axis=1))
    assert dedup.near_duplicates_brute(q, ref, 10).tolist() == (mind <= 10).tolist()
    for radius in (0, 1, 4, 10, 13, 40, 64):
        index = dedup.HashIndex(ref, radius)
        got = index.contains_near(q)
        assert got.tolist() == (mind <= radius).tolist(), radius
        assert index.contains_near(q, use_extension=False).tolist() == got.tolist(), radius  # numpy lookup
        lims, _, _ = flat.range_search(q.view(np.uint8).reshape(-1, 8), radius + 1)  # faiss: distance < radius
        assert got.tolist() == (np.diff(lims) > 0).tolist(), radius
        if n_ref > 10 and radius >= 4:
            assert got[3000:5000].mean() > 0.2  # the near set is really near


def test_index_is_shared_and_checked():
    import pickle

    ref = np.arange(1, 2000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    index = dedup.HashIndex(ref, 10)
    q = ref[:50] ^ np.uint64(0b111)
    again = pickle.loads(pickle.dumps(index))  # how workers receive it
    assert again.contains_near(q).all() and dedup.near_duplicates(q, index, 10).all()
    with pytest.raises(ValueError, match="radius"):
        dedup.near_duplicates(q, index, 9)
    with pytest.raises(ValueError, match="radius"):
        dedup.HashIndex(ref, 65)


needs_extension = pytest.mark.skipif(dedup._lookup_extension() is None, reason="wslfast._dedup is not built")


@needs_extension
@pytest.mark.parametrize("subs", [3, 4, 5, 6, 7, 11, 16])
def test_every_layout_equals_brute_force(monkeypatch, subs):
    """Each substring count the cost model can pick (uneven widths, 4 to 22 bits, flips 0 to 3) finds
    exactly the brute-force matches, in C++ and in numpy, at radii around its pigeonhole bounds."""
    rng = np.random.default_rng(subs)
    ref = rng.integers(0, 2**64 - 1, size=2500, dtype=np.uint64, endpoint=True)
    q = np.concatenate([rng.integers(0, 2**64 - 1, size=500, dtype=np.uint64, endpoint=True),
                        _near_set(rng, ref, 1500, 14)])
    monkeypatch.setattr(dedup, "choose_substrings", lambda n, r: subs)
    monkeypatch.setattr(dedup, "_layout_cost", lambda n, r, s: 0.0)  # never brute force
    for radius in sorted({subs - 1, subs, 2 * subs, 3 * subs + 1, 10}):
        index = dedup.HashIndex(ref, radius)
        assert index.subs == subs and index._brute is None
        want = dedup.near_duplicates_brute(q, ref, radius)
        assert index.contains_near(q).tolist() == want.tolist(), (subs, radius)
        assert index.contains_near(q, use_extension=False).tolist() == want.tolist(), (subs, radius)
        baseline_isa = dedup._lookup_extension()(q, index._refs, index._widths, index._starts,
                                                 index._masks.astype(np.uint64), radius, simd=False)
        assert baseline_isa.tolist() == want.tolist(), (subs, radius)


def test_layout_choice_and_memory_bound():
    """6 substrings at the paper's radius for evaluation-set sizes, 4 for tens of millions; tables never
    hold more than max(2^10, 4 N) buckets, so a small reference set gets small tables."""
    assert dedup.choose_substrings(100_000, 10) == 6 and dedup.choose_substrings(1_000_000, 10) == 6
    assert dedup.choose_substrings(30_000_000, 10) == 4
    for n in (1, 100, 10_000, 10**6, 10**8):
        for r in (0, 5, 10, 20):
            s = dedup.choose_substrings(n, r)
            assert 2 ** max(dedup._widths(s)) <= max(1 << 10, 4 * n) and sum(dedup._widths(s)) == 64


@needs_extension
def test_lookup_rejects_tables_it_could_read_outside_of():
    """The C++ entry point validates what it is given: no input makes it read outside its arrays."""
    lookup = dedup._lookup_extension()
    index = dedup.HashIndex(np.arange(1, 5000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), 10)
    q = np.arange(10, dtype=np.uint64)
    refs, widths, starts, masks = index._refs, index._widths, index._starts, index._masks.astype(np.uint64)
    assert lookup(q, refs, widths, starts, masks, 10).shape == (10,)
    bad_starts = starts.copy()
    bad_starts[5] = 10**9  # a bucket past the end
    bad_end = starts.copy()
    bad_end[(1 << int(widths[0]))] += 1
    cases = {
        "radius": (q, refs, widths, starts, masks, 65),
        "decrease": (q, refs, widths, bad_starts, masks, 10),
        "from 0 to N": (q, refs, widths, bad_end, masks, 10),
        "shorter": (q, refs, widths, starts[:-5], masks, 10),
        "longer": (q, refs, widths, np.concatenate([starts, [0]]), masks, 10),
        "sorted": (q, refs, widths, starts, np.array([1, 0], dtype=np.uint64), 10),
        "above the substring": (q, refs, widths, starts, np.array([0, 1 << 40], dtype=np.uint64), 10),
        "widths": (q, refs, widths[:-1], starts, masks, 10),
        "sum to at most 64": (q, refs, widths + 30, starts, masks, 10),
        "expected queries": (q.reshape(2, 5), refs, widths, starts, masks, 10),
    }
    for what, args in cases.items():
        with pytest.raises(ValueError, match=what):
            lookup(*args)
