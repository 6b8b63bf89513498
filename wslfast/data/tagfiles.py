"""Reading TAGS files as streams: JSONL or YFCC100M metadata (detected per file), plain or compressed.

Inputs: one or more paths or glob patterns (a pattern expands to its sorted matches; the order given is
kept, and it fixes every record's key). `.gz`, `.bz2` (multi-stream, as YFCC100M's split files are),
`.xz` and `.zst` files are decompressed as streams; nothing is read into memory whole.

JSONL: one object a line, {"image": "rel/path.jpg", "tags": ["#a", "#b"]}.
YFCC100M metadata (yfcc100m_dataset): tab-separated, 25 fields (with the leading line number) or 24
(without). Fields after the optional line number: photo id, photo hash, user id, nickname, date taken,
date uploaded, device, title, description, USER TAGS (comma-separated, URL-encoded, '+' for a space),
machine tags, longitude, latitude, accuracy, page URL, download URL, licence name, licence URL, server,
farm, secret, original secret, original extension, and the marker (0 photo, 1 video). Videos are skipped.
A YFCC image is looked up under the images folder as <id>.<ext>, <id>.jpg, <hash>.jpg, then
<hash[:3]>/<hash[3:6]>/<hash>.jpg (the layout of the public image bucket); the first that exists wins.

A record's identity is (file number in the input list, line number): `record_key` hashes it to the 64-bit
key that all per-record randomness derives from, so it does not depend on how the work is split.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

__all__ = ["TagRecord", "read_tags", "iter_tags", "detect_format", "expand_inputs", "open_text", "iter_blocks",
           "iter_file_blocks", "parse_line", "record_key", "BLOCK_LINES"]

BLOCK_LINES = 4096  # lines per block of work; fixed, so blocks (and their cached results) never depend on workers


@dataclass
class TagRecord:
    image: str | None  # path relative to the images folder; None when no file was found (counted)
    tags: list[str]
    skip: str | None = None  # "video", "missing", "bad_record" for records to count and drop
    meta: dict = field(default_factory=dict)


def open_text(path: str | os.PathLike):
    """A text stream of a TAGS file, decompressed by extension (.gz, .bz2, .xz, .zst)."""
    p = str(path)
    suffix = Path(p).suffix.lower()
    if suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8", errors="replace")
    if suffix == ".bz2":
        return bz2.open(p, "rt", encoding="utf-8", errors="replace")
    if suffix == ".xz":
        return lzma.open(p, "rt", encoding="utf-8", errors="replace")
    if suffix == ".zst":
        import zstandard

        raw = open(p, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.TextIOWrapper(reader, encoding="utf-8", errors="replace")
    return open(p, encoding="utf-8", errors="replace")


def expand_inputs(tags) -> list[str]:
    """The TAGS files of one or more paths or glob patterns, in the given order (patterns sorted)."""
    items = [tags] if isinstance(tags, (str, os.PathLike)) else list(tags)
    if not items:
        raise ValueError("no TAGS file given")
    out: list[str] = []
    for item in items:
        s = str(item)
        if any(c in s for c in "*?[") and not os.path.exists(s):
            matches = sorted(glob.glob(s))
            if not matches:
                raise FileNotFoundError(f"TAGS pattern {s!r} matches no file")
            out += matches
        elif not os.path.isfile(s):
            raise FileNotFoundError(f"TAGS file {s} does not exist")
        else:
            out.append(s)
    return out


def _format_of_line(line: str, path) -> str:
    if line.lstrip().startswith("{"):
        return "jsonl"
    if line.count("\t") in (23, 24):
        return "yfcc"
    raise ValueError(f"{path}: TAGS must be JSONL ({{\"image\": ..., \"tags\": [...]}} a line) "
                     f"or YFCC100M metadata (24/25 tab-separated fields); first line has "
                     f"{line.count(chr(9)) + 1} tab-separated fields")


def detect_format(path: str | os.PathLike) -> str:
    """'jsonl' or 'yfcc', from the first non-empty line (of the decompressed stream)."""
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return _format_of_line(line, path)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ValueError(f"{path}: cannot read TAGS file ({e})") from None
    raise ValueError(f"{path}: TAGS file is empty")


def _safe_rel(rel: str) -> bool:
    """No absolute paths or '..': images stay inside the images folder."""
    return bool(rel) and not rel.startswith("/") and ".." not in rel.split("/") and "\0" not in rel


def _yfcc_candidates(photo_id: str, photo_hash: str, ext: str) -> list[str]:
    out = [f"{photo_id}.{ext}" if ext else "", f"{photo_id}.jpg", f"{photo_hash}.jpg",
           f"{photo_hash[:3]}/{photo_hash[3:6]}/{photo_hash}.jpg"]
    return [c for c in out if c and _safe_rel(c)]


def parse_line(fmt: str, line: str, n: int, images_dir: Path, lookup: bool = True) -> TagRecord | None:
    """One record of a TAGS line (None for a blank line). lookup=False skips the YFCC image search."""
    if not line.strip():
        return None
    if fmt == "jsonl":
        try:
            obj = json.loads(line)
            image, tags = obj["image"], obj["tags"]
            ok = isinstance(image, str) and isinstance(tags, list) and all(isinstance(t, str) for t in tags)
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok or not _safe_rel(image):
            return TagRecord(None, [], skip="bad_record", meta={"line": n})
        return TagRecord(image, list(tags))
    fields = line.rstrip("\n").rstrip("\r").split("\t")
    if len(fields) not in (24, 25):
        return TagRecord(None, [], skip="bad_record", meta={"line": n})
    off = len(fields) - 24
    photo_id, photo_hash = fields[off], fields[off + 1]
    tags = [unquote_plus(t) for t in fields[off + 9].split(",") if t]
    meta = {"yfcc_id": photo_id}
    if fields[off + 23].strip() == "1":
        return TagRecord(None, tags, skip="video", meta=meta)
    if not lookup:
        return TagRecord(None, tags, meta=meta)
    found = next((c for c in _yfcc_candidates(photo_id, photo_hash, fields[off + 22].strip())
                  if (images_dir / c).is_file()), None)
    return TagRecord(found, tags, skip=None if found else "missing", meta=meta)


def record_key(file_no: int, line_no: int) -> int:
    """The 64-bit key of a record (see module docstring)."""
    return int.from_bytes(hashlib.blake2b(f"{file_no}:{line_no}".encode(), digest_size=8).digest(), "little")


def iter_file_blocks(fi: int, p: str, block_lines: int = BLOCK_LINES) -> Iterator[tuple[int, int, str, list[str]]]:
    """(file number, block number, format, lines) for blocks of `block_lines` physical lines of file p.
    Line n of a file (1-based) is lines[(n - 1) % block_lines] of block (n - 1) // block_lines."""
    fmt = detect_format(p)
    block, bi = [], 0
    with open_text(p) as f:
        try:
            for line in f:
                block.append(line)
                if len(block) == block_lines:
                    yield fi, bi, fmt, block
                    block, bi = [], bi + 1
        except (OSError, EOFError, lzma.LZMAError) as e:  # a damaged compressed stream: stop with a clear line
            raise ValueError(f"{p}: cannot read past line {bi * block_lines + len(block)} ({e})") from None
    if block:
        yield fi, bi, fmt, block


def iter_blocks(paths: list[str], block_lines: int = BLOCK_LINES) -> Iterator[tuple[int, int, str, list[str]]]:
    """iter_file_blocks over every file, in order."""
    for fi, p in enumerate(paths):
        yield from iter_file_blocks(fi, p, block_lines)


def iter_tags(tags, images_dir, lookup: bool = True) -> Iterator[tuple[str, TagRecord]]:
    """(format, record) for every record of every TAGS input, streaming."""
    images_dir = Path(images_dir)
    for fi, bi, fmt, lines in iter_blocks(expand_inputs(tags)):
        for i, line in enumerate(lines):
            r = parse_line(fmt, line, bi * BLOCK_LINES + i + 1, images_dir, lookup)
            if r is not None:
                yield fmt, r


def read_tags(path, images_dir) -> tuple[str, list[TagRecord]]:
    """(format, records) of small TAGS inputs, as a list (for tests and tools; the pipeline streams)."""
    fmts, recs = set(), []
    for fmt, r in iter_tags(path, images_dir):
        fmts.add(fmt)
        recs.append(r)
    if not fmts:
        fmts = {detect_format(p) for p in expand_inputs(path)}
    return ",".join(sorted(fmts)), recs
