"""THE shard format: what the builder writes and the loaders read, and nothing else (no build logic here).

A shard folder holds `shard-NNNNNN.tar` files, each with DALI's index `shard-NNNNNN.idx`, and
`manifest.json` (written last by the builder: vocabulary, counts, settings; `read_manifest` /
`write_manifest`). The builder publishes a dataset as a versioned folder of that kind inside its --out:
`out/shards-<fingerprint>/` (shards + its own manifest.json) and `out/manifest.json`, the same manifest plus
`"shards_dir": "shards-<fingerprint>"`, swapped in last with one os.replace: that file names the current
version, so readers see the old set or the new one, never a mix. `published_dir` / `list_shards` follow it;
a folder without it (written before versions, or a version folder itself) holds its shards directly.

A .tar is USTAR with fixed member metadata (mtime 0, mode 644, no owner), so equal inputs give equal bytes;
per sample it holds `<key>.jpg` (the image bytes), `<key>.labels` (int32 little-endian label ids) and
`<key>.json` ({"tags", "image", "labels", ...}). The .idx (v1.2) has a first
line `v1.2 N` and a line per sample, `ext offset size name` per member (offset of the member's data).

`write_shard` renames the .idx into place first and the .tar last, so a .tar in place is a whole shard
unless something damaged it later; `verify_shard` catches that (a truncated, cut or overwritten tar, a lost
or wrong .idx) from the member headers alone, without reading the image bytes: `full=False` (the loaders,
at open: the last member only, a few KB a shard, any webdataset tar with an index) or `full=True` (the
builder's resume: every member header and the exact end of archive that write_shard leaves).

Also here, because the builder and the tools on both sides share them: `list_shards` (the whole shards of a
folder: of its published version), `published_dir`, `index_num_samples`, COUNTS.tsv (`hashtag<TAB>count` a
line: `read_counts` / `write_counts`) and `IMAGE_EXTENSIONS` (the file suffixes read as images), and what a
shard's JPEG of a non-JPEG image is (`to_rgb`: every Pillow mode to 8-bit RGB; `encode_jpeg`). Memory: one
sample's bytes while writing, one index line while verifying; time: verify reads a tar header per member
(full) or one per shard (quick).
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..errors import DataError

__all__ = ["write_shard", "verify_shard", "jpeg_bytes", "shard_stem", "list_shards", "published_dir",
           "index_num_samples", "read_manifest", "write_manifest", "read_counts", "write_counts", "MANIFEST",
           "MANIFEST_FORMAT", "SHARDS_DIR", "INDEX_VERSION", "IMAGE_EXTENSIONS",
           "encode_jpeg", "to_rgb"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "wslfast-shards"
SHARDS_DIR = "shards_dir"  # the manifest key of a versioned --out that names its current version's folder
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a plain child folder: never '..', never a path
INDEX_VERSION = "v1.2"
# Files read as images: the build's reference folders (dedup) and the loaders' ImageFolder trees.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_FIX = "write the shards again (`python -m wslfast.data shards ...`), or remove {name} and its .idx"


def shard_stem(k: int) -> str:
    """The file stem of shard number k: shard-NNNNNN."""
    return f"shard-{k:06d}"


# ---- writing ------------------------------------------------------------------------------------------------
JPEG_QUALITY = 95  # re-encoded samples: near-lossless, ~1/3 of a PNG photo's size
JPEG_MAX_SIDE = 65535  # the JPEG header's 16-bit width and height


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB image of any mode Pillow decodes, with values mapped, not clipped: 16-bit (I;16*) and
    I (Pillow's 16-bit range: PNG, PPM) by 257; F by 255 from [0, 1] (clipped to [0, 255] when its values
    exceed 1); transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) composited over white, as
    a page shows it; 1, L, P, CMYK, YCbCr, LAB, HSV through Pillow. Memory: ~2 copies of the pixels."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        else:
            a = a.astype(np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("LA").convert("RGBA") if mode == "La" else im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im if im.mode == "RGB" else im.convert("RGB")


def encode_jpeg(im: Image.Image) -> bytes:
    """A shard's JPEG of a decoded image: to_rgb, quality JPEG_QUALITY. ValueError past JPEG_MAX_SIDE."""
    if max(im.size) > JPEG_MAX_SIDE:
        raise ValueError(f"{im.width} x {im.height} pixels: a JPEG side is at most {JPEG_MAX_SIDE:,}")
    buf = io.BytesIO()
    to_rgb(im).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def jpeg_bytes(path: str, reencode: bool) -> bytes:
    """The bytes of an image file as a shard holds them: the original bytes, or (reencode) encode_jpeg of
    it. The build re-encodes in its check pass (build/images.py), so its writer only copies bytes."""
    if not reencode:
        return Path(path).read_bytes()
    with Image.open(path) as im:
        return encode_jpeg(im)


def _tarfile_header(name: str, size: int) -> bytes:
    """The USTAR header tarfile writes for a regular member with fixed metadata (mtime 0, mode 644, no owner)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = bytearray(_tarfile_header("", 0))
_TEMPLATE[148:156] = b" " * 8  # the checksum field counts as spaces while summing


def _header(name: str, size: int) -> bytes:
    """_tarfile_header, byte for byte, without tarfile's per-field encoding (a third of a shard's write
    time): short ASCII names (our keys) fill the name and size fields of a template, then the checksum."""
    raw = name.encode("ascii", "replace")
    if len(raw) >= 100 or not name.isascii() or size >= 8**11:
        return _tarfile_header(name, size)
    buf = _TEMPLATE.copy()
    buf[0:len(raw)] = raw
    buf[124:136] = b"%011o\0" % size
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


def write_shard(out, stem: str, samples, images_dir, read=None) -> int:
    """Write out/stem.{tar,idx} from samples (key, image, reencode, labels, info), in that order; the
    image bytes are read here, by the writer: `read(images_dir / image, reencode)` (default jpeg_bytes) for
    a str image, `read(image, reencode)` for anything else a custom `read` takes (the build passes byte
    ranges of its inputs and of its own re-encoded JPEGs: build/images.py). info: a dict, or
    its JSON (sort_keys) as a str. Returns the number of samples. The bytes are what
    tarfile.open(mode="w", format=USTAR) writes for these members (headers made once, written directly)."""
    out, images_dir = Path(out), Path(images_dir)
    read = read or jpeg_bytes
    tmp_tar = out / f".{stem}.tar.tmp"
    index_lines = []
    with open(tmp_tar, "wb") as f:
        pos = 0
        for key, image, reencode, labels, info in samples:
            parts = []
            src = str(images_dir / image) if isinstance(image, str) else image
            for ext, data in (("jpg", read(src, reencode)),
                              ("labels", np.asarray(labels, dtype="<i4").tobytes()),
                              ("json", info.encode() if isinstance(info, str)
                               else json.dumps(info, sort_keys=True).encode())):
                name = f"{key}.{ext}"
                hdr = _header(name, len(data))
                pad = -len(data) % _BLOCK
                f.write(hdr + data + bytes(pad))
                parts.append(f"{ext} {pos + len(hdr)} {len(data)} {name}")
                pos += len(hdr) + len(data) + pad
            index_lines.append(" ".join(parts))
        end = pos + 2 * _BLOCK  # end-of-archive blocks, then padding to a whole record, as tarfile does
        f.write(bytes(end + (-end % _RECORD) - pos))
    tmp_idx = out / f".{stem}.idx.tmp"
    tmp_idx.write_text(f"{INDEX_VERSION} {len(index_lines)}\n" + "\n".join(index_lines) + "\n")
    os.replace(tmp_idx, out / f"{stem}.idx")
    os.replace(tmp_tar, out / f"{stem}.tar")  # last: a .tar in place is a whole shard
    return len(index_lines)


# ---- the index and verifying a shard against it ---------------------------------------------------------------
def _index_head(idx: Path) -> tuple[str, int]:
    """(version, sample count) of an index's first line `vX.Y N`; DataError if it is not one."""
    try:
        with open(idx, encoding="utf-8") as f:
            head = f.readline().split()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"shard index {idx} is unreadable ({e})") from None
    if len(head) != 2 or not head[0].startswith("v") or not head[1].isdigit():
        raise DataError(f"shard index {idx} is not a webdataset index (first line {' '.join(head)!r})")
    return head[0], int(head[1])


def index_num_samples(idx_paths) -> int:
    """Samples listed by these .idx files (their first lines only)."""
    return sum(_index_head(Path(p))[1] for p in idx_paths)


def _last_line(path: Path, chunk: int = 4096) -> str:
    """The last non-empty line of a text file, read from its end (index files can be large)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = pos = f.tell()
        while pos > 0:
            pos = max(0, pos - chunk)
            f.seek(pos)
            lines = [line for line in f.read(end - pos).splitlines() if line.strip()]
            if len(lines) >= 2 or (pos == 0 and lines):
                return lines[-1].decode("utf-8", "replace")
        return ""


def _members(fields: list[str], where: str) -> list[tuple[int, int, str]]:
    """(offset, size, name) of an index line's `ext offset size name` groups; DataError if malformed."""
    if not fields or len(fields) % 4 or not all(x.isdigit() for x in fields[1::4] + fields[2::4]):
        raise DataError(f"{where} is not 'ext offset size name ...'")
    return [(int(fields[j + 1]), int(fields[j + 2]), fields[j + 3]) for j in range(0, len(fields), 4)]


def _header_ok(raw: bytes, name: str, size: int, exact: bool) -> bool:
    if not exact:  # the loaders' check: the member's name where the index puts it
        return raw[:100].rstrip(b"\0").decode("utf-8", "replace") == name
    try:
        info = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")  # checks the header checksum
    except tarfile.HeaderError:
        return False
    return info.name == name and info.size == size and info.isreg()


def _index_lines(idx: Path, full: bool):
    """The sample lines of an index, split, streaming (full), or its last line only (quick)."""
    if not full:
        yield _last_line(idx).split()
        return
    with open(idx, encoding="utf-8", errors="replace") as f:
        next(f)
        for line in f:
            yield line.split()


def _verify(tar: Path, idx: Path, num_samples: int | None, full: bool) -> None:
    version, count = _index_head(idx)
    if full and version != INDEX_VERSION:
        raise DataError(f"shard index {idx} is version {version}, not {INDEX_VERSION}")
    if num_samples is not None and count != num_samples:
        raise DataError(f"shard index {idx} lists {count} samples, expected {num_samples}")
    size = os.path.getsize(tar)
    end = seen = 0
    with open(tar, "rb") as f:
        for seen, fields in enumerate(_index_lines(idx, full) if count or full else (), 1):
            members = _members(fields, f"shard index {idx}, line {seen + 1 if full else 'last'}")
            if not full:
                members = [max(members)]  # the member furthest into the tar: its end must be there
            for off, length, name in members:
                if off < _BLOCK or off < end:
                    raise DataError(f"shard index {idx} places {name} at byte {off:,}, where no member can start")
                if off + length > size:
                    raise DataError(f"shard {tar} is truncated: {size:,} bytes, but its index places {name} at "
                                    f"bytes {off:,}-{off + length:,}")
                if full or len(name) <= 100:  # (the quick check skips names split into USTAR's prefix field)
                    f.seek(off - _BLOCK)
                    if not _header_ok(f.read(_BLOCK), name, length, full):
                        raise DataError(f"shard {tar} does not match its index {idx.name}: no tar member {name} "
                                        f"at byte {off - _BLOCK:,}")
                end = off + length + (-length % _BLOCK)
        if not full:
            return
        if seen != count:
            raise DataError(f"shard index {idx} has {seen} sample lines, its first line says {count}")
        f.seek(end)
        tail = f.read(2 * _BLOCK)
    want = end + 2 * _BLOCK
    want += -want % _RECORD
    if tail != bytes(2 * _BLOCK) or size != want:
        raise DataError(f"shard {tar} does not end where its last member does ({size:,} bytes, a whole "
                        f"archive of these members has {want:,})")


def verify_shard(tar, num_samples: int | None = None, *, full: bool = True, idx=None) -> None:
    """DataError (one line naming the file and what is wrong, and how to fix it) unless the .tar holds what
    its .idx (idx, default beside it) promises: the index parses (and lists num_samples samples when
    given), and the member headers sit where the index says. full=True checks every member's name, size
    and header checksum and that the file ends where a whole archive written by write_shard ends;
    full=False only the last member (a few KB a shard), for any webdataset tar with an index."""
    tar = Path(tar)
    idx = Path(idx) if idx is not None else tar.with_suffix(".idx")
    try:
        _verify(tar, idx, num_samples, full)
    except OSError as e:
        raise DataError(f"shard {tar} cannot be read ({e.strerror or e}); {_FIX.format(name=tar.name)}") from None
    except DataError as e:
        raise DataError(f"{e}; {_FIX.format(name=tar.name)}") from None


def published_dir(dir) -> Path:
    """The folder that holds a shard folder's published shards: dir/<shards_dir> when dir/manifest.json is a
    wslfast manifest naming its current version (a plain child folder name), else dir itself."""
    d = Path(dir)
    try:
        with open(d / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError, RecursionError):  # no manifest, or someone else's file: the folder itself
        return d
    name = m.get(SHARDS_DIR) if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT else None
    if name is None:
        return d
    if not isinstance(name, str) or not _VERSION_NAME.fullmatch(name):
        raise DataError(f"{d / MANIFEST}: {SHARDS_DIR} must name a folder inside {d}, got {name!r}")
    return d / name


def list_shards(dir) -> list[str]:
    """Whole shards of a folder, sorted: .tar files with their .idx (temporary files never count). In a
    versioned --out, those of the published version (`published_dir`)."""
    d = Path(dir)
    if not d.is_dir():
        raise FileNotFoundError(f"list_shards: {d} is not a folder")
    d = published_dir(d)
    if not d.is_dir():
        raise DataError(f"{Path(dir) / MANIFEST} names shard folder {d.name}, which is missing; write the shards "
                        f"again (`python -m wslfast.data shards ...`)")
    return [str(p) for p in sorted(d.glob("*.tar")) if not p.name.startswith(".") and p.with_suffix(".idx").is_file()]


# ---- manifest -----------------------------------------------------------------------------------------------
def write_manifest(out_dir, manifest: dict) -> Path:
    """out_dir/manifest.json, atomically (the builder writes it last, when every shard is in place): a
    temporary file, flushed to disk, renamed over the old one, and the folder's entry flushed too."""
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"write_manifest: a manifest starts with format={MANIFEST_FORMAT!r}")
    path = Path(out_dir) / MANIFEST
    with atomic_write(path, "w") as f:
        f.write(json.dumps(manifest, indent=1))
    return path


def read_manifest(path) -> dict:
    """The manifest of a shard folder (or of the folder holding the given shard)."""
    p = Path(path)
    p = p / MANIFEST if p.is_dir() else (p if p.name == MANIFEST else p.parent / MANIFEST)
    with open(p, encoding="utf-8") as f:
        try:
            m = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: not a wslfast shard manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{p}: not a wslfast shard manifest")
    return m


# ---- COUNTS.tsv ---------------------------------------------------------------------------------------------
def read_counts(path) -> dict[str, int]:
    """COUNTS.tsv: `hashtag<TAB>count` a line (blank lines ignored; a tag on several lines adds up).
    DataError naming the file and line for anything else."""
    counts: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                raise DataError(f"{path}:{n}: expected 'hashtag<TAB>count', got {line.strip()!r}")
            counts[parts[0]] += int(parts[1])
    return dict(counts)


def write_counts(path, counts) -> None:
    """COUNTS.tsv from {hashtag: count}, sorted by hashtag."""
    Path(path).write_text("".join(f"{t}\t{n}\n" for t, n in sorted(counts.items())), encoding="utf-8")
