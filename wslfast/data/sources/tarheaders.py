"""The members of a tar archive from their headers alone: names, data offsets and sizes, the data skipped by
seeking (what a webdataset source needs: image bytes are read later by byte range, sources/base.read_member).

`iter_members(f, size)` walks the 512-byte headers of a seekable binary file of `size` bytes: USTAR and
old-style V7 headers, the name prefix field, GNU long names ('L') and POSIX pax extended headers ('x': path
and size), which are what Python's tarfile (so webdataset's TarWriter and img2dataset) and GNU tar write.
Nothing is ever extracted: a member's name is only reported, never used as a path here.

It stops with `TarDamage` (a message saying what and where) at the first thing that is not a whole tar:
a header whose checksum is wrong (garbage; "not a tar archive" at byte 0), a header or a member's data cut
short by the end of the file (a truncated download, or a size field claiming more than the file holds), a
size field that is no number, a pax or long-name record that does not parse or is larger than MAX_META, or
the file ending without the end-of-archive zero block (cut exactly at a member boundary). The members
before the damage have been yielded already; the caller decides what to keep.

Time: one header read (512 bytes) and one seek per member, plus the pax / long-name records; the data is
never read. Memory: one header.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

__all__ = ["Member", "TarDamage", "iter_members", "BLOCK", "MAX_META"]

BLOCK = 512
MAX_META = 1 << 20  # bytes of a pax header or GNU long name we read; a larger one is damage, not metadata
_REGULAR = (b"0", b"\0", b"7")  # regular file (old-style NUL), contiguous file
_SKIP = (b"g", b"K")  # pax global header, GNU long link name: nothing a sample needs
_HIGH = bytes(range(128, 256))


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, from the start of the file
    size: int
    regular: bool  # False for directories, links, devices, FIFOs (no data to read)
    directory: bool = False


class TarDamage(Exception):
    """The archive is not whole from `offset` on (see the module docstring)."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def _number(field: bytes, where: int, what: str) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit of the first byte)."""
    if field and field[0] & 0x80:
        n = int.from_bytes(field[1:], "big")
        return -n if field[0] & 0x40 else n  # 0xff: negative (we reject negatives below)
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarDamage(f"header at byte {where}: {what} field {field!r} is no number", where) from None


def _checksum_ok(header: bytes) -> bool:
    stored = header[148:156].split(b"\0", 1)[0].strip()
    try:
        want = int(stored, 8)
    except ValueError:
        return False
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    if want == unsigned:
        return True
    high = len(blanked) - len(blanked.translate(None, _HIGH))  # some old tars summed signed chars
    return want == unsigned - 256 * high


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax(data: bytes, where: int) -> dict[str, str]:
    """'%d %s=%s\\n' records (POSIX.1-2008); values as UTF-8 (raw bytes kept by surrogateescape)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp]) if sp > pos else 0
        except ValueError:
            length = 0
        rec = data[pos:pos + length]
        if length <= 0 or len(rec) != length or not rec.endswith(b"\n") or b"=" not in rec:
            raise TarDamage(f"pax header at byte {where}: a record does not parse", where)
        key, _, value = rec[sp - pos + 1:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read_exact(f: BinaryIO, n: int, where: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarDamage(f"{what} at byte {where} is cut short ({len(data)} of {n} bytes): a truncated file", where)
    return data


def iter_members(f: BinaryIO, size: int) -> Iterator[Member]:
    """The members of the tar in `f` (seekable, `size` bytes), in archive order (see module docstring)."""
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        f.seek(pos)
        header = f.read(BLOCK)
        if not header:
            raise TarDamage("the archive ends without its end-of-archive block (cut at a member boundary?)"
                            if pos else "empty file: not a tar archive", pos)
        if len(header) < BLOCK:
            raise TarDamage(f"header at byte {pos} is cut short ({len(header)} of {BLOCK} bytes): a truncated "
                            f"file", pos)
        if header == bytes(BLOCK):
            return  # end of archive (one zero block is enough, as for tarfile)
        if not _checksum_ok(header):
            raise TarDamage("not a tar archive (no valid header at byte 0)" if pos == 0
                            else f"header at byte {pos} is damaged (bad checksum)", pos)
        kind = header[156:157]
        length = _number(header[124:136], pos, "size")
        if length < 0:
            raise TarDamage(f"header at byte {pos}: negative size", pos)
        data_at = pos + BLOCK
        if kind in (b"x", b"L") or kind in _SKIP:
            if kind in (b"x", b"L") and length > MAX_META:
                raise TarDamage(f"header at byte {pos}: a {length}-byte {'pax' if kind == b'x' else 'long-name'} "
                                f"record (more than {MAX_META} is no metadata)", pos)
            if data_at + length > size:
                raise TarDamage(f"header at byte {pos}: its {length} bytes run past the end of the file "
                                f"({size} bytes): a truncated file", pos)
            if kind == b"x":
                pax = _pax(_read_exact(f, length, data_at, "pax header"), pos)
            elif kind == b"L":
                long_name = _read_exact(f, length, data_at, "long name").split(b"\0", 1)[0].decode(
                    "utf-8", "surrogateescape")
            pos = data_at + -(-length // BLOCK) * BLOCK
            continue
        name = pax.get("path") or long_name or _name(header)
        if "size" in pax:
            try:
                length = int(pax["size"])
            except ValueError:
                raise TarDamage(f"pax header before byte {pos}: size {pax['size']!r} is no number", pos) from None
        regular = kind in _REGULAR
        if not regular and kind not in (b"5",):
            length = length if kind in (b"S",) else 0  # links, devices, FIFOs carry no data
        if data_at + length > size:
            raise TarDamage(f"member {name!r} at byte {pos}: {length} bytes claimed, but the file ends at byte "
                            f"{size}: a truncated file or a damaged size field", pos)
        yield Member(name, data_at, length if regular else 0, regular, kind == b"5")
        pos = data_at + -(-length // BLOCK) * BLOCK
        long_name, pax = None, {}
