"""The per-sample image guard (wslfast.data.build.images): every finding of issue 18 about images, each
failing on the code before it; the modes against a float64 reference; the scaled JPEG decode against a plain
full decode (same decisions on damaged files, pHash within a few bits on real photos)."""
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wslfast.data import format as shard_format
from wslfast.data.build import images as I
from wslfast.data.build import write_shards
from wslfast.data.build.dedup import hash_directory, phash, phash_file
from wslfast.data.build.engines import LocalEngine
from wslfast.data.format import list_shards
from wslfast.data.sources import Block, MemberRef, Record

ROOT = Path(__file__).resolve().parents[2]


class Hang(BaseException):
    """Not an Exception: the guard under test must not be able to count it as a bad image."""


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks forever)."""
    def boom(*_):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _save(im, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(seed, w=64, h=48):
    """A smooth random picture (a few sinusoids), so JPEG damage shows and hashes are meaningful."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.zeros((h, w, 3))
    for _ in range(5):
        f, ph, c = rng.uniform(0.5, 5, 2), rng.uniform(0, 6.3), rng.uniform(0, 255, 3)
        img += np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + ph)[..., None] * c / 5
    img += rng.uniform(0, 120, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(w, h, depth, colour, rows) -> bytes:
    """A PNG written by hand (sizes Pillow would take long to make); rows: the filtered scanlines."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))


def _huge_bilevel_png(side: int) -> bytes:
    """side x side 1-bit PNG, all white: ~side^2/8 bytes raw, a few hundred KB compressed."""
    z = zlib.compressobj(9)
    row = b"\0" + b"\xff" * ((side + 7) // 8)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return _png(side, side, 1, 0, data)


def _tiff_claiming(w: int, h: int) -> bytes:
    """A little-endian grey TIFF whose header claims w x h pixels but holds a few bytes."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, w * h)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\x80" * 64


def _sof_claiming(jpeg: bytes, w: int, h: int) -> bytes:
    """A JPEG whose frame header says w x h (the pixels that would be allocated), data unchanged."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:]


def _dds_unknown_fourcc() -> bytes:
    """The 1.8 KB-style DDS of the issue: a pixel format Pillow does not implement (NotImplementedError)."""
    hdr = (b"DDS " + struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + b"\0" * 44 + struct.pack("<2I", 32, 0x4)
           + b"XXXX" + b"\0" * 20 + struct.pack("<5I", 0x1000, 0, 0, 0, 0))
    return hdr + bytes(1700)


def _check(path: Path, **policy):
    return I.check_image(str(path.parent), path.name, I.ImagePolicy(**policy), want_hash=True)


# ---- the findings -------------------------------------------------------------------------------------------
@pytest.fixture
def good_images(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(4):
        (img / f"g{i}.jpg").write_bytes(_save(_photo(i), quality=90))
    return img


def _tags(tmp_path, names, tag="#dog"):
    p = tmp_path / "tags.jsonl"
    p.write_text("".join(json.dumps({"image": n, "tags": [tag]}) + "\n" for n in names))
    return p


def test_an_image_that_cannot_be_a_jpeg_is_skipped_before_anything_is_written(good_images, tmp_path, vocab):
    """A 10 x 70,000 PNG decodes but cannot become a JPEG (65,535-pixel sides): before, the write pass raised
    after the check had passed it; now pass 1 rejects it (from the header, before decoding) and counts it."""
    (good_images / "tall.png").write_bytes(_save(Image.new("L", (10, 70_000), 128), "PNG"))
    r = _check(good_images / "tall.png")
    assert r.reason == "unwritable" and "65,535" in r.error
    tags = _tags(tmp_path, [f"g{i}.jpg" for i in range(4)] + ["tall.png"])
    m = write_shards(good_images, tags, vocab, tmp_path / "out", shard_size=10)
    assert m["skipped"]["unwritable"] == 1 and m["num_images"] == 4
    assert m["skip_examples"]["unwritable"][0]["image"] == "tall.png"


def test_any_decoder_error_is_a_counted_skip(tmp_path):
    """A DDS named .jpg raised NotImplementedError, which escaped the fixed exception list. It is not a web
    format (not_image); with every Pillow format allowed, the broad guard still counts it."""
    (tmp_path / "x.jpg").write_bytes(_dds_unknown_fourcc())
    assert _check(tmp_path / "x.jpg").reason == "not_image"
    r = _check(tmp_path / "x.jpg", formats=None)
    assert r.reason == "corrupt" and r.error.startswith("NotImplementedError")


@pytest.mark.parametrize("exc", [MemoryError("bomb"), RecursionError(), struct.error("unpack"), ZeroDivisionError(),
                                 IndexError("x"), KeyError("y"), RuntimeError("z")])
def test_the_guard_catches_whatever_pillow_raises(tmp_path, monkeypatch, exc):
    (tmp_path / "a.jpg").write_bytes(_save(_photo(0)))

    def broken(self, *a, **k):
        raise exc

    monkeypatch.setattr(Image.Image, "load", broken)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken)
    r = _check(tmp_path / "a.jpg")
    assert r.reason == "corrupt" and type(exc).__name__ in r.error


def test_pixel_limit_from_the_header_before_decoding(tmp_path, monkeypatch):
    """Bombs: a 169-MP JPEG header and a 24 x 6,488,088 TIFF are refused from their headers; nothing loads."""
    (tmp_path / "big.jpg").write_bytes(_sof_claiming(_save(_photo(1)), 13_000, 13_000))
    (tmp_path / "tall.tif").write_bytes(_tiff_claiming(24, 6_488_088))
    loads = []
    real = Image.Image.load
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: loads.append(self.size) or real(self))
    for name in ("big.jpg", "tall.tif"):
        r = _check(tmp_path / name)
        assert r.reason == "too_many_pixels" and "--max-pixels 64,000,000" in r.error, (name, r)
    assert loads == []
    # a lower limit refuses a plain photo; under a higher one the TIFF still cannot become a JPEG (before:
    # a traceback from the write pass), and a TIFF lying about a size within bounds fails its decode
    (tmp_path / "photo.jpg").write_bytes(_save(_photo(1)))
    assert _check(tmp_path / "photo.jpg", max_pixels=1000).reason == "too_many_pixels"
    monkeypatch.undo()
    assert _check(tmp_path / "tall.tif", max_pixels=200_000_000).reason == "unwritable"
    (tmp_path / "lie.tif").write_bytes(_tiff_claiming(3000, 2000))
    r = _check(tmp_path / "lie.tif")
    assert r.reason == "corrupt", r


def test_a_png_bomb_is_refused_without_allocating_its_pixels(tmp_path):
    """13,000 x 13,000 PNG (~0.5 MB): before, Pillow only warned and the check decoded it (169 MB as 1-bit,
    1.37 GB as RGB). In a fresh process the refusal adds < 40 MB to the peak; a plain decode of the same
    file, measured the same way, adds > 150 MB (so the measure can fail)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_bilevel_png(13_000))
    assert path.stat().st_size < 1_000_000
    # VmHWM: the peak of this address space (ru_maxrss would start at the forking parent's size)
    code = ("import sys\nfrom PIL import Image\nfrom wslfast.data.build import images as I\n"
            "def peak():\n"
            "    return next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM'))\n"
            "base = peak()\n"
            "if sys.argv[2] == 'guard':\n"
            "    print(I.check_image(None, sys.argv[1], I.ImagePolicy(follow_symlinks=True)).reason)\n"
            "else:\n"
            "    Image.MAX_IMAGE_PIXELS = None\n"
            "    Image.open(sys.argv[1]).load()\n"
            "    print('decoded')\n"
            "print((peak() - base) // 1024)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = {}
    for how in ("guard", "plain"):
        res = subprocess.run([sys.executable, "-c", code, str(path), how], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        reason, mb = res.stdout.split()
        out[how] = (reason, int(mb))
    assert out["guard"][0] == "too_many_pixels" and out["guard"][1] < 40, out
    assert out["plain"][1] > 150, out


def test_non_regular_files_are_skipped_without_being_opened(tmp_path, monkeypatch):
    """A FIFO named .jpg hung the build forever; a folder or a device named .jpg are no images either."""
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    with deadline(20):
        assert _check(tmp_path / "fifo.jpg").reason == "not_regular"
        assert _check(tmp_path / "dir.jpg").reason == "not_regular"
        assert _check(tmp_path / "zero.jpg").reason == "outside_root"  # /dev is outside the images folder
        r = _check(tmp_path / "zero.jpg", follow_symlinks=True)
        assert r.reason == "not_regular" and "device" in r.error
    assert opened == []


def test_a_fifo_does_not_hang_the_build(good_images, tmp_path, vocab):
    os.mkfifo(good_images / "fifo.jpg")
    tags = _tags(tmp_path, [f"g{i}.jpg" for i in range(4)] + ["fifo.jpg"])
    with deadline(60):
        m = write_shards(good_images, tags, vocab, tmp_path / "out", shard_size=10)
    assert m["skipped"]["not_regular"] == 1 and m["num_images"] == 4


def test_a_fifo_among_the_dedup_references_does_not_hang(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_save(_photo(3)))
    os.mkfifo(tmp_path / "b.jpg")
    with deadline(30):
        hashes, unreadable = hash_directory(tmp_path)
    assert hashes.tolist() == [phash_file(tmp_path / "a.jpg")] and unreadable == 1


def test_symlinks_that_leave_the_images_folder_are_refused_unless_asked(tmp_path, vocab):
    img, outside = tmp_path / "img", tmp_path / "elsewhere"
    (img / "sub").mkdir(parents=True)
    outside.mkdir()
    (img / "sub" / "in.jpg").write_bytes(_save(_photo(4)))
    (outside / "secret.jpg").write_bytes(_save(_photo(5)))
    (img / "link_in.jpg").symlink_to("sub/in.jpg")
    (img / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (img / "sub" / "up").symlink_to("../../elsewhere")
    assert _check(img / "link_in.jpg").reason is None
    assert _check(img / "link_out.jpg").reason == "outside_root"
    assert I.check_image(str(img), "sub/up/secret.jpg", I.ImagePolicy()).reason == "outside_root"
    assert I.check_image(str(img), "sub/up/secret.jpg", I.ImagePolicy(follow_symlinks=True)).reason is None
    for bad in ("../elsewhere/secret.jpg", str(outside / "secret.jpg"), "a\0b.jpg", ""):  # never, even following
        assert I.check_image(str(img), bad, I.ImagePolicy(follow_symlinks=True)).reason == "outside_root", bad
    tags = _tags(tmp_path, ["sub/in.jpg", "link_in.jpg", "link_out.jpg"])
    m = write_shards(img, tags, vocab, tmp_path / "a", shard_size=10)
    assert m["skipped"]["outside_root"] == 1 and m["num_images"] == 2 and m["follow_symlinks"] is False
    m = write_shards(img, tags, vocab, tmp_path / "b", shard_size=10, follow_symlinks=True)
    assert m["skipped"]["outside_root"] == 0 and m["num_images"] == 3


# ---- modes ---------------------------------------------------------------------------------------------------
def _ref_over_white(rgb, alpha):
    a = alpha[..., None] / 255.0
    return rgb * a + 255.0 * (1 - a)


def _mode_cases():
    rng = np.random.default_rng(7)
    g16 = rng.integers(0, 65536, (6, 5)).astype(np.uint16)
    rgb = rng.integers(0, 256, (6, 5, 3)).astype(np.float64)
    alpha = rng.integers(0, 256, (6, 5)).astype(np.float64)
    grey = rng.integers(0, 256, (6, 5)).astype(np.float64)
    f01 = rng.uniform(0, 1, (6, 5)).astype(np.float32)
    cmyk = rng.integers(0, 256, (6, 5, 4)).astype(np.float64)
    ycc = rng.integers(16, 240, (6, 5, 3)).astype(np.float64)
    bits = rng.integers(0, 2, (6, 5)).astype(bool)
    pal = rng.integers(0, 256, (4, 3))
    idx = rng.integers(0, 4, (6, 5)).astype(np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(pal.astype(np.uint8).ravel().tolist())
    p_ref = np.where((idx == 2)[..., None], 255.0, pal[idx].astype(np.float64))
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    ycc_ref = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    k = cmyk[..., 3:]
    return {
        "I;16": (Image.open(io.BytesIO(_save(Image.fromarray(g16), "PNG"))), g16.astype(np.float64)[..., None] / 257),
        "I": (Image.fromarray(g16.astype(np.int32), "I"), g16.astype(np.float64)[..., None] / 257),
        "F": (Image.fromarray(f01, "F"), f01.astype(np.float64)[..., None] * 255),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA"), _ref_over_white(rgb, alpha)),
        "LA": (Image.fromarray(np.dstack([grey, alpha]).astype(np.uint8), "LA"),
               _ref_over_white(np.repeat(grey[..., None], 3, -1), alpha)),
        "P+transparency": (Image.open(io.BytesIO(_save(p, "PNG", transparency=2))), p_ref),
        "CMYK": (Image.fromarray(cmyk.astype(np.uint8), "CMYK"), (255 - cmyk[..., :3]) * (255 - k) / 255),
        "YCbCr": (Image.fromarray(ycc.astype(np.uint8), "YCbCr"), ycc_ref),
        "1": (Image.fromarray(bits).convert("1"), bits.astype(np.float64)[..., None] * 255),
        "L": (Image.fromarray(grey.astype(np.uint8), "L"), grey[..., None]),
    }


@pytest.mark.parametrize("mode", list(_mode_cases()))
def test_every_mode_converts_like_a_float64_reference(mode):
    im, ref = _mode_cases()[mode]
    out = np.asarray(shard_format.to_rgb(im), dtype=np.float64)
    assert out.shape == im.size[::-1] + (3,)
    assert np.abs(out - np.broadcast_to(np.clip(ref, 0, 255), out.shape)).max() <= 1.01, mode


def test_sixteen_bit_pngs_are_no_longer_white(good_images, tmp_path, vocab):
    """Before, a 16-bit grey PNG was clipped to 255 when re-encoded (almost all white)."""
    ramp = np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)
    (good_images / "deep.png").write_bytes(_save(Image.fromarray(ramp), "PNG"))
    m = write_shards(good_images, _tags(tmp_path, ["deep.png"]), vocab, tmp_path / "out", shard_size=10)
    assert m["reencoded"] == 1
    with tarfile.open(list_shards(tmp_path / "out")[0]) as tar:
        jpg = next(tar.extractfile(x).read() for x in tar.getmembers() if x.name.endswith(".jpg"))
    got = np.asarray(Image.open(io.BytesIO(jpg)).convert("L"), dtype=np.float64)
    assert np.abs(got - ramp / 257).mean() < 2.0 and got.mean() < 140


# ---- tar members -----------------------------------------------------------------------------------------------
class _MemberSource:
    """A Source whose records' images are members of one local tar (as a webdataset reader makes them)."""

    def __init__(self, tar_path, refs):
        self.paths, self.refs = [str(tar_path)], refs

    def blocks(self, file_no):
        yield Block(file_no, 0, "members", [r.name for r in self.refs])

    def records(self, block):
        for n, ref in enumerate(self.refs, 1):
            yield n, Record(ref, ["#dog"])


def _member_tar(tmp_path, members: dict) -> tuple[Path, list]:
    path = tmp_path / "in.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    with tarfile.open(path) as tar:
        refs = [MemberRef(str(path), m.offset_data, m.size, m.name) for m in tar.getmembers()]
    return path, refs


def test_tar_members_go_through_the_same_guard(tmp_path, vocab):
    good = _save(_photo(8), quality=92)
    png = _save(_photo(9), "PNG")
    tall = _save(Image.new("L", (10, 70_000)), "PNG")
    path, refs = _member_tar(tmp_path, {"a.jpg": good, "b.png": png, "c.jpg": good[:400],
                                        "d.jpg": _dds_unknown_fourcc(), "e.png": tall})
    refs += [MemberRef(str(path), 0, 1 << 40, "huge.jpg"),  # bounded read: refused before reading
             MemberRef(str(path), refs[0].offset, refs[0].size + (1 << 20), "past-the-end.jpg"),
             MemberRef(str(tmp_path / "gone.tar"), 0, 10, "x.jpg")]
    policy = I.ImagePolicy()
    reasons = [I.check_image(None, r, policy).reason for r in refs]
    assert reasons == [None, None, "corrupt", "not_image", "unwritable", "too_large", "unreadable", "missing"]
    img = tmp_path / "img"
    img.mkdir()
    m = write_shards(img, _MemberSource(path, refs), vocab, tmp_path / "out", shard_size=100)
    assert m["num_images"] == 2 and m["reencoded"] == 1 and sum(m["skipped"].values()) == 6
    with tarfile.open(list_shards(tmp_path / "out")[0]) as tar:
        got = {json.loads(tar.extractfile(k.name.replace(".jpg", ".json")).read())["image"]:
               tar.extractfile(k).read() for k in tar.getmembers() if k.name.endswith(".jpg")}
    assert got[f"{path}:a.jpg"] == good  # a JPEG member's own bytes
    assert got[f"{path}:b.png"] == shard_format.encode_jpeg(Image.open(io.BytesIO(png)))


# ---- the write pass only copies what the check proved ------------------------------------------------------------
class _NoDecodeEngine(LocalEngine):
    def write(self, blocks):
        real = Image.open

        def refuse(*a, **k):
            raise AssertionError("an image was decoded in the write pass")

        Image.open = refuse
        try:
            yield from super().write(blocks)
        finally:
            Image.open = real


def test_reencoded_jpegs_are_kept_from_the_check_and_survive_reruns(good_images, tmp_path, vocab, monkeypatch):
    for name, seed in (("p.png", 20), ("q.webp", 21), ("r.gif", 22)):
        (good_images / name).write_bytes(_save(_photo(seed), name.split(".")[1].upper().replace("JPG", "JPEG")))
    names = ["p.png", "g0.jpg", "q.webp", "g1.jpg", "r.gif"]
    tags = _tags(tmp_path, names)

    def shard_images(out):
        with tarfile.open(list_shards(out)[0]) as tar:
            return {json.loads(tar.extractfile(k.name.replace(".jpg", ".json")).read())["image"]:
                    tar.extractfile(k).read() for k in tar.getmembers() if k.name.endswith(".jpg")}

    def expected(name):
        data = (good_images / name).read_bytes()
        return data if name.endswith(".jpg") else shard_format.encode_jpeg(Image.open(io.BytesIO(data)))

    out = tmp_path / "out"
    m = write_shards(good_images, tags, vocab, out, shard_size=100, engine=_NoDecodeEngine())
    assert m["reencoded"] == 3 and shard_images(out) == {n: expected(n) for n in names}
    pack = next((out / ".work").glob("enc-*.bin"))
    assert pack.stat().st_size == sum(len(expected(n)) for n in names if not n.endswith(".jpg"))
    # the middle re-encoded image changes: the pack is rebuilt, the others keep their bytes
    (good_images / "q.webp").write_bytes(_save(_photo(99), "WEBP"))
    write_shards(good_images, tags, vocab, out, shard_size=100, engine=_NoDecodeEngine())
    assert shard_images(out) == {n: expected(n) for n in names}
    # nothing changed: nothing decoded, the pack untouched
    mtime = pack.stat().st_mtime_ns
    monkeypatch.setattr(I, "check_image", lambda *a: pytest.fail("image checked again"))
    (out / "manifest.json").unlink()
    write_shards(good_images, tags, vocab, out, shard_size=100, engine=_NoDecodeEngine())
    assert pack.stat().st_mtime_ns == mtime and shard_images(out) == {n: expected(n) for n in names}
    # a lost pack is noticed: the re-encoded rows are checked again
    monkeypatch.undo()
    pack.unlink()
    write_shards(good_images, tags, vocab, out, shard_size=100, engine=_NoDecodeEngine())
    assert shard_images(out) == {n: expected(n) for n in names}


def test_examples_are_the_first_by_input_and_line_whatever_the_block_order():
    blocks = [(1, {"corrupt": [[3, "c.jpg", "e3"]]}), (0, {"corrupt": [[9, "b.jpg", "e9"], [2, "a.jpg", "e2"]],
                                                            "missing": [[4, "m.jpg", "no"]]})]
    results = []
    for order in (blocks, blocks[::-1]):
        acc = {}
        for fi, ex in order:
            I.merge_examples(acc, ex, fi, f"in{fi}")
        results.append(I.manifest_examples(acc))
    assert results[0] == results[1]
    assert [(e["input"], e["line"]) for e in results[0]["corrupt"]] == [("in0", 2), ("in0", 9), ("in1", 3)]
    acc = {}
    I.merge_examples(acc, {"corrupt": [[n, f"{n}.jpg", "x"] for n in range(20, 0, -1)]}, 0, "in0")
    assert [e["line"] for e in I.manifest_examples(acc)["corrupt"]] == [1, 2, 3, 4, 5]


def test_cli_max_pixels_and_follow_symlinks(good_images, tmp_path, vocab, capsys):
    from wslfast.data.__main__ import main

    vocab.save(tmp_path / "v.json")
    tags = _tags(tmp_path, [f"g{i}.jpg" for i in range(4)])
    args = ["shards", "--images", str(good_images), "--tags", str(tags), "--vocab", str(tmp_path / "v.json")]
    assert main(args + ["--out", str(tmp_path / "o"), "--max-pixels", "3.1e3", "--follow-symlinks"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["max_pixels"] == 3100 and m["follow_symlinks"] is True and m["num_images"] == 4  # 64 x 48 = 3,072
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "p"), "--max-pixels", "3000"]) == 1  # every image above it
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar)
    assert err.startswith("error:") and "'too_many_pixels': 4" in err
    for bad in ("abc", "0", "2.5"):
        with pytest.raises(SystemExit):
            main(args + ["--out", str(tmp_path / "q"), "--max-pixels", bad])


# ---- the scaled decode (issue 18 item 6) -----------------------------------------------------------------------
def _jpeg_variants(seed, w, h):
    im = _photo(seed, w, h)
    return [_save(im, quality=90), _save(im, quality=85, progressive=True), _save(im.convert("L"), quality=80),
            _save(im, quality=75, subsampling=0), _save(im, quality=70, optimize=True),
            _save(im, quality=90, restart_marker_blocks=4)]


def _damaged(data: bytes, rng) -> tuple[str, bytes]:
    d = bytearray(data)
    kind = ["cut", "flip", "bytes", "zeros", "drop"][rng.integers(5)]
    scan = data.index(b"\xff\xda") + 12  # inside the entropy-coded data
    if kind == "cut":
        d = d[:rng.integers(2, len(d))]
    elif kind == "flip":
        i = int(rng.integers(scan, len(d)))
        d[i] ^= 1 << int(rng.integers(8))
    elif kind == "bytes":
        for i in rng.integers(scan, len(d), 12):
            d[int(i)] = int(rng.integers(256))
    elif kind == "zeros":
        i = int(rng.integers(scan, len(d)))
        d[i:i + int(rng.integers(1, 400))] = bytes(len(d[i:i + 400]))[:len(d[i:i + int(rng.integers(1, 400))])]
    else:
        i = int(rng.integers(scan, len(d)))
        del d[i:i + int(rng.integers(1, 300))]
    return kind, bytes(d)


def _full_decode_reason(data: bytes) -> str | None:
    """The check before (passes.check_image of commit 18f214a): a plain full decode, the reference."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Image.UnidentifiedImageError:
        return "not_image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "corrupt"
    return None


def test_scaled_decode_makes_the_full_decodes_decisions(tmp_path):
    """Cut at random points, bits flipped and bytes replaced in the scan, zeroed or dropped ranges, on
    baseline, progressive, grey, 4:4:4, optimized and restart-marker JPEGs: the guard's DCT-scaled decode
    rejects exactly what a full decode rejects (libjpeg reads every coefficient either way)."""
    rng = np.random.default_rng(18)
    tally = {}
    for seed, (w, h) in enumerate(((200, 150), (333, 241), (640, 480))):
        for v, data in enumerate(_jpeg_variants(seed, w, h)):
            for k in range(25):
                kind, bad = _damaged(data, rng)
                path = _write(tmp_path / f"{seed}-{v}-{k}.jpg", bad)
                mem = I.check_image(None, path, I.ImagePolicy(follow_symlinks=True), want_hash=True)
                want = _full_decode_reason(bad)
                assert mem.reason == want, (kind, seed, v, k, mem)
                tally[kind, want] = tally.get((kind, want), 0) + 1
    assert tally.get(("cut", "corrupt"), 0) > 50 and sum(n for (_, r), n in tally.items() if r is None) > 50, tally


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_plain_jpegs_go_in_as_they_are_from_a_scaled_grey_decode(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(I, "phash", lambda im: seen.append((im.mode, im.size)) or phash(im))
    for name, im, kw in (("a.jpg", _photo(1, 640, 480), {}), ("b.jpg", _photo(2, 1600, 1200).convert("L"), {}),
                         ("c.jpg", _photo(3, 640, 480), {"progressive": True}), ("d.jpg", _photo(4, 40, 30), {})):
        (tmp_path / name).write_bytes(_save(im, quality=90, **kw))
        r = _check(tmp_path / name)
        assert r.reason is None and r.jpeg is None  # no re-encode: the original bytes go in
    assert seen == [("L", (80, 60)), ("L", (200, 150)), ("L", (80, 60)), ("L", (40, 30))]
    cmyk = _save(Image.new("CMYK", (64, 48), (10, 20, 30, 40)))
    (tmp_path / "e.jpg").write_bytes(cmyk)
    r = _check(tmp_path / "e.jpg")
    assert r.reason is None and r.jpeg is not None  # CMYK: re-encoded to RGB


def _real_photos(size):
    data = pytest.importorskip("skimage.data")
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field",
                 "immunohistochemistry", "retina", "camera", "coins", "moon", "page"):
        arr = getattr(data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr
        im = Image.fromarray(arr).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        out.append(_save(im, quality=90))
    return out


@pytest.mark.parametrize("size", [(640, 480), (1600, 1200)])
def test_phash_of_the_scaled_decode_is_within_the_dedup_tolerance(size, capsys):
    """Hamming distance between the pHash of a full decode (before) and of the DCT-scaled decode (now), on
    scikit-image's photos at real sizes: measured 0-2 bits, against a dedup radius of 10."""
    dist = []
    for data in _real_photos(size):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            full = phash(im)
        dist.append(bin(full ^ phash_file(io.BytesIO(data))).count("1"))
    with capsys.disabled():
        print(f"\npHash full vs scaled at {size[0]}x{size[1]}: Hamming distances {sorted(dist)}")
    assert max(dist) <= 4 and np.mean(dist) <= 1.5, dist


@pytest.mark.slow
@pytest.mark.dist
def test_ray_writes_the_same_reencoded_bytes_and_examples(tmp_path, vocab):
    """Blocks of 3 records checked by two Ray workers: the packs of re-encoded JPEGs and the first skip
    examples (merged whatever order the blocks finish in) give the in-process build's manifest and bytes."""
    pytest.importorskip("ray")
    from wslfast.data.sources import TagFiles

    img = tmp_path / "img"
    img.mkdir()
    names = []
    for i in range(12):
        kind = ("jpg", "png", "trunc", "jpg")[i % 4]
        data = _save(_photo(i), "PNG") if kind == "png" else _save(_photo(i), quality=90)
        name = f"{i}.{'png' if kind == 'png' else 'jpg'}"
        (img / name).write_bytes(data[:300] if kind == "trunc" else data)
        names.append(name)
    names += [f"gone{i}.jpg" for i in range(7)]
    tags = _tags(tmp_path, names)
    local = write_shards(img, TagFiles([str(tags)], img, block_lines=3), vocab, tmp_path / "local", shard_size=4)
    dist = write_shards(img, TagFiles([str(tags)], img, block_lines=3), vocab, tmp_path / "ray", shard_size=4,
                        workers=2)
    assert local["reencoded"] == 3 and local["skipped"]["corrupt"] == 3 and local["skipped"]["missing"] == 7
    assert [e["line"] for e in local["skip_examples"]["missing"]] == [13, 14, 15, 16, 17]
    assert dist == local
    assert [Path(f).read_bytes() for f in list_shards(tmp_path / "ray")] == \
        [Path(f).read_bytes() for f in list_shards(tmp_path / "local")]


def test_references_are_hashed_as_the_build_hashes_its_images(tmp_path):
    """dedup's reference folders and the build's samples get the same pHash for every kind of file (the
    scaled decode for plain JPEGs, the RGB of the re-encode for the others), so a copy is found at 0 bits."""
    pic = _photo(30, 160, 120)
    files = {"a.jpg": _save(pic, quality=90), "b.jpg": _save(pic.convert("L")), "c.jpg": _save(pic.convert("CMYK")),
             "d.png": _save(pic.convert("RGBA"), "PNG"), "e.webp": _save(pic, "WEBP"),
             "f.png": _save(Image.fromarray((np.asarray(pic.convert("L"), np.uint16) * 257)), "PNG")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    hashes, unreadable = hash_directory(tmp_path)
    assert unreadable == 0
    build = [_check(tmp_path / n).phash for n in sorted(files)]
    assert hashes.tolist() == build == [phash_file(tmp_path / n) for n in sorted(files)]
