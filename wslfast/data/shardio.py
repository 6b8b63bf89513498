"""One shard on disk: writing it atomically and checking a kept one against its index.

A shard is `shard-NNNNNN.tar` (USTAR, fixed member metadata so equal inputs give equal bytes) holding
`<key>.jpg`, `<key>.labels` (int32 little-endian label ids) and `<key>.json`, with DALI's index
`shard-NNNNNN.idx` (v1.2: a line per sample, `ext offset size name` per member). The .idx is renamed into
place first and the .tar last, so a .tar in place is a whole shard unless something damaged it later;
`verify_shard` catches that (a truncated, cut or overwritten tar, a lost or wrong .idx) from the member
headers alone, without reading the image bytes.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_shard", "verify_shard", "jpeg_bytes"]

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def jpeg_bytes(path: str, reencode: bool) -> bytes:
    """The original bytes, or a quality-95 JPEG of a non-JPEG / non-RGB image."""
    if not reencode:
        return Path(path).read_bytes()
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()


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
    image bytes are read here, by the writer. info: a dict, or its JSON (sort_keys) as a str. Returns the number of samples. The bytes are what
    tarfile.open(mode="w", format=USTAR) writes for these members (headers made once, written directly)."""
    out, images_dir = Path(out), Path(images_dir)
    read = read or jpeg_bytes
    tmp_tar = out / f".{stem}.tar.tmp"
    index_lines = []
    with open(tmp_tar, "wb") as f:
        pos = 0
        for key, image, reencode, labels, info in samples:
            parts = []
            for ext, data in (("jpg", read(str(images_dir / image), reencode)),
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
    tmp_idx.write_text(f"v1.2 {len(index_lines)}\n" + "\n".join(index_lines) + "\n")
    os.replace(tmp_idx, out / f"{stem}.idx")
    os.replace(tmp_tar, out / f"{stem}.tar")  # last: a .tar in place is a whole shard
    return len(index_lines)


def _header_ok(raw: bytes, name: str, size: int) -> bool:
    try:
        info = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")  # checks the header checksum
    except tarfile.HeaderError:
        return False
    return info.name == name and info.size == size and info.isreg()


def verify_shard(tar_path, num_samples: int | None = None) -> bool:
    """True when tar_path and its .idx agree: the index parses (and lists num_samples samples when given),
    every member header sits where the index says with the right name, size and checksum, and the file ends
    where a whole archive written by write_shard ends (end-of-archive blocks, record padding)."""
    tar_path = Path(tar_path)
    try:
        lines = tar_path.with_suffix(".idx").read_text().splitlines()
        head = lines[0].split()
        if head[0] != "v1.2" or int(head[1]) != len(lines) - 1 or (num_samples is not None
                                                                   and len(lines) - 1 != num_samples):
            return False
        end = 0
        with open(tar_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for line in lines[1:]:
                fields = line.split()
                if not fields or len(fields) % 4:
                    return False
                for k in range(0, len(fields), 4):
                    off, n, name = int(fields[k + 1]), int(fields[k + 2]), fields[k + 3]
                    if off < _BLOCK or off < end or off + n > size:
                        return False
                    f.seek(off - _BLOCK)
                    if not _header_ok(f.read(_BLOCK), name, n):
                        return False
                    end = off + n + (-n % _BLOCK)
            f.seek(end)
            tail = f.read(2 * _BLOCK)
        want = end + 2 * _BLOCK
        want += -want % _RECORD
        return tail == bytes(2 * _BLOCK) and size == want
    except (OSError, ValueError, IndexError):
        return False
