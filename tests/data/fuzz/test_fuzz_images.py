"""Fuzz: mutated image files of every format Pillow writes, through the build's per-sample guard
(wslfast.data.build.images) and through a whole build. Each example asserts: no exception escapes, no
hang (a timeout), the sample is counted (usable, or skipped with a known reason), and what a usable sample
puts in a shard is a JPEG that fully decodes. Seeded and bounded (fuzzing.fuzz_settings): ~20 s on 2 cores.
"""
import io
import json
import os
import tarfile

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fuzzing import fuzz_settings, mutate, mutations, no_hang
from wslfast.data.build import images as I
from wslfast.data.build import write_shards
from wslfast.data.format import list_shards
from wslfast.data.sources import MemberRef

REASONS = {"missing", "not_image", "corrupt"} | set(I.SKIPS)
# Small pixel limit: a mutated header that claims many pixels is refused before decoding, so no example
# decodes more than ~4 MB, whatever the mutation.
POLICIES = {"web": I.ImagePolicy(max_pixels=1_000_000, follow_symlinks=True),
            "every-format": I.ImagePolicy(max_pixels=1_000_000, follow_symlinks=True, formats=None)}


def _seeds() -> dict[str, bytes]:
    """One small valid file per format (and per notable variant) Pillow writes; EPS and PDF are left out
    (EPS needs Ghostscript; PDF is write-only), ICNS too (a 1.7 MB file whatever the image)."""
    rng = np.random.default_rng(5)
    im = Image.fromarray(np.kron(rng.integers(0, 255, (4, 6, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8)))
    cases = {
        "jpeg": ("RGB", "JPEG", {"quality": 90}), "jpeg-progressive": ("RGB", "JPEG", {"progressive": True}),
        "jpeg-grey": ("L", "JPEG", {}), "jpeg-cmyk": ("CMYK", "JPEG", {}),
        "jpeg-restarts": ("RGB", "JPEG", {"restart_marker_blocks": 1}),
        "png": ("RGB", "PNG", {}), "png-rgba": ("RGBA", "PNG", {}), "png-interlaced": ("RGB", "PNG", {"interlace": 1}),
        "png-1bit": ("1", "PNG", {}), "png-16bit": ("I;16", "PNG", {}),
        "png-palette-transparent": ("P", "PNG", {"transparency": 0}),
        "gif": ("P", "GIF", {}), "bmp": ("RGB", "BMP", {}), "bmp-palette": ("P", "BMP", {}),
        "tiff": ("RGB", "TIFF", {}), "tiff-lzw": ("RGB", "TIFF", {"compression": "tiff_lzw"}),
        "tiff-deflate": ("RGB", "TIFF", {"compression": "tiff_deflate"}),
        "tiff-packbits": ("RGB", "TIFF", {"compression": "packbits"}),
        "tiff-jpeg": ("RGB", "TIFF", {"compression": "jpeg"}), "tiff-16bit": ("I;16", "TIFF", {}),
        "tiff-float": ("F", "TIFF", {}), "webp": ("RGB", "WEBP", {}),
        "webp-lossless": ("RGBA", "WEBP", {"lossless": True}),
        "ppm": ("RGB", "PPM", {}), "pgm": ("L", "PPM", {}), "ico": ("RGBA", "ICO", {}),
        "dds": ("RGBA", "DDS", {}), "dds-dxt1": ("RGB", "DDS", {"pixel_format": "DXT1"}),
        "tga-rle": ("RGB", "TGA", {"compression": "tga_rle"}), "pcx": ("RGB", "PCX", {}), "sgi": ("RGB", "SGI", {}),
        "im": ("RGB", "IM", {}), "msp": ("1", "MSP", {}), "qoi": ("RGB", "QOI", {}), "blp": ("P", "BLP", {}),
        "spider": ("F", "SPIDER", {}), "jpeg2000": ("RGB", "JPEG2000", {}), "avif": ("RGB", "AVIF", {"quality": 50}),
        "xbm": ("1", "XBM", {}),
    }
    out = {}
    for name, (mode, fmt, kw) in cases.items():
        src = im.convert("L").convert("I;16") if mode == "I;16" else im.convert(mode)
        buf = io.BytesIO()
        try:
            src.save(buf, format=fmt, **kw)
        except (OSError, ValueError, KeyError):  # an encoder this Pillow was built without
            continue
        out[name] = buf.getvalue()
    frames = [im.convert("P"), im.rotate(90).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out["gif-animated"] = buf.getvalue()
    return out


SEEDS = _seeds()


def _assert_counted(r: I.Checked, seed: str):
    assert isinstance(r, I.Checked), seed
    if r.reason is not None:
        assert r.reason in REASONS and r.error and "\n" not in r.error, (seed, r)
        return
    assert r.phash is not None, seed


def _shard_jpeg(r: I.Checked, data: bytes) -> bytes:
    return r.jpeg if r.jpeg is not None else data


def test_every_seed_is_usable_or_refused_as_a_whole(tmp_path):
    """The seeds themselves: the web formats are usable (their shard JPEG decodes); the others are refused
    by the format list, and taken or counted when every format is allowed."""
    assert len(SEEDS) >= 35
    web_formats = ("jpeg", "png", "gif", "bmp", "tiff", "webp", "ppm", "pgm", "ico", "avif")
    for name, data in SEEDS.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        web = I.check_image(str(tmp_path), f"{name}.jpg", POLICIES["web"], want_hash=True)
        if name.split("-")[0] in web_formats:
            assert web.reason is None, (name, web)
            Image.open(io.BytesIO(_shard_jpeg(web, data))).load()
        else:
            assert web.reason == "not_image", (name, web)
        _assert_counted(I.check_image(str(tmp_path), f"{name}.jpg", POLICIES["every-format"], want_hash=True), name)


@given(seed=st.sampled_from(sorted(SEEDS)), muts=mutations(), policy=st.sampled_from(sorted(POLICIES)))
@fuzz_settings(max_examples=1500)
def test_mutated_images_are_counted_never_raised(tmp_path_factory, seed, muts, policy):
    data = mutate(SEEDS[seed], muts)
    path = tmp_path_factory.getbasetemp() / "fuzz.jpg"  # named .jpg whatever it holds, as on the web
    path.write_bytes(data)
    with no_hang(10):
        r = I.check_image(str(path.parent), path.name, POLICIES[policy], want_hash=True)
        _assert_counted(r, seed)
        if r.reason is None:  # what the shard gets decodes fully: the loaders never meet a broken sample
            with Image.open(io.BytesIO(_shard_jpeg(r, data))) as im:
                assert im.format == "JPEG" and im.mode in ("RGB", "L")
                im.load()


@given(seed=st.sampled_from(sorted(SEEDS)), muts=mutations())
@fuzz_settings(max_examples=300)
def test_mutated_tar_members_are_counted_never_raised(tmp_path_factory, seed, muts):
    """The same guard over bytes inside an input (a MemberRef, one ranged read)."""
    data = mutate(SEEDS[seed], muts)
    path = tmp_path_factory.getbasetemp() / "member.bin"
    path.write_bytes(b"x" * 512 + data)
    with no_hang(10):
        ref = MemberRef(str(path), 512, len(data), "m.jpg")
        _assert_counted(I.check_image(None, ref, POLICIES["web"], want_hash=True), seed)


def test_a_build_of_mutated_images_counts_every_record(tmp_path, vocab):
    """A whole build over ~120 mutated files of every seed (plus a FIFO, a folder and a missing file
    named .jpg): it finishes, every record is counted once (usable or skipped by reason), and every shard
    sample is a JPEG that decodes."""
    rng = np.random.default_rng(18)
    img = tmp_path / "img"
    img.mkdir()
    names = []
    kinds = ["flip", "set", "interesting", "cut", "delete", "insert", "duplicate", "zero"]
    for i in range(120):
        seed = sorted(SEEDS)[i % len(SEEDS)]
        muts = [(kinds[rng.integers(len(kinds))], float(rng.random()), int(rng.integers(4096)),
                 rng.bytes(int(rng.integers(1, 64)))) for _ in range(int(rng.integers(0, 4)))]
        (img / f"{i}.jpg").write_bytes(mutate(SEEDS[seed], muts))
        names.append(f"{i}.jpg")
    os.mkfifo(img / "fifo.jpg")
    (img / "dir.jpg").mkdir()
    names += ["fifo.jpg", "dir.jpg", "gone.jpg"]
    tags = tmp_path / "tags.jsonl"
    tags.write_text("".join(json.dumps({"image": n, "tags": ["#dog"]}) + "\n" for n in names))
    with no_hang(120):
        m = write_shards(img, tags, vocab, tmp_path / "out", shard_size=1000, max_pixels=1_000_000)
    assert m["records"] == len(names) == m["num_images"] + sum(m["skipped"].values())
    assert m["skipped"]["not_regular"] == 2 and m["skipped"]["missing"] == 1 and m["num_images"] > 20
    assert set(m["skip_examples"]) == {k for k, v in m["skipped"].items() if v}
    with tarfile.open(list_shards(tmp_path / "out")[0]) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    assert im.format == "JPEG"
                    im.load()
