import io

import numpy as np
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
