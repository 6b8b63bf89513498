import io

import numpy as np
import pytest
from PIL import Image

from wslfast.data import dedup


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
        got = dedup.HashIndex(ref, radius).contains_near(q)
        assert got.tolist() == (mind <= radius).tolist(), radius
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
