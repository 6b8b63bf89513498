"""TAGS files: JSONL or YFCC100M metadata (detected per file), plain or compressed, read as streams.

JSONL: one object a line, {"image": "rel/path.jpg", "tags": ["#a", "#b"]}.
YFCC100M metadata (yfcc100m_dataset): tab-separated, 25 fields (with the leading line number) or 24
(without). Fields after the optional line number: photo id, photo hash, user id, nickname, date taken,
date uploaded, device, title, description, USER TAGS (comma-separated, URL-encoded, '+' for a space),
machine tags, longitude, latitude, accuracy, page URL, download URL, licence name, licence URL, server,
farm, secret, original secret, original extension, and the marker (0 photo, 1 video). Videos are skipped.
A YFCC image is looked up under the images folder as <id>.<ext>, <id>.jpg, <hash>.jpg, then
<hash[:3]>/<hash[3:6]>/<hash>.jpg (the layout of the public image bucket); the first that exists wins.

`TagFiles` is the build's `Source` over such files (blocks of BLOCK_LINES lines; record n = line n);
`iter_tags` / `read_tags` give the records directly (tools and tests). Time: linear in the lines, plus a
few stat calls per YFCC record; memory: one block of lines.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

from ...errors import DataError
from .base import BLOCK_LINES, Block, Record
from .streams import STREAM_ERRORS, expand_inputs, open_text

__all__ = ["TagFiles", "TagRecord", "read_tags", "iter_tags", "count_tags", "detect_format", "parse_line",
           "FORMATS"]

FORMATS = ("jsonl", "yfcc")
TagRecord = Record  # the name the records of TAGS files had


def _format_of_line(line: str, path) -> str:
    if line.lstrip().startswith("{"):
        return "jsonl"
    if line.count("\t") in (23, 24):
        return "yfcc"
    raise DataError(f"{path}: TAGS must be JSONL ({{\"image\": ..., \"tags\": [...]}} a line) "
                    f"or YFCC100M metadata (24/25 tab-separated fields); first line has "
                    f"{line.count(chr(9)) + 1} tab-separated fields")


def detect_format(path: str | os.PathLike) -> str:
    """'jsonl' or 'yfcc', from the first non-empty line (of the decompressed stream)."""
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return _format_of_line(line, path)
    except STREAM_ERRORS as e:
        raise DataError(f"{path}: cannot read TAGS file ({e})") from None
    raise DataError(f"{path}: TAGS file is empty")


def _safe_rel(rel: str) -> bool:
    """No absolute paths or '..': images stay inside the images folder."""
    return bool(rel) and not rel.startswith("/") and ".." not in rel.split("/") and "\0" not in rel


def _yfcc_candidates(photo_id: str, photo_hash: str, ext: str) -> list[str]:
    out = [f"{photo_id}.{ext}" if ext else "", f"{photo_id}.jpg", f"{photo_hash}.jpg",
           f"{photo_hash[:3]}/{photo_hash[3:6]}/{photo_hash}.jpg"]
    return [c for c in out if c and _safe_rel(c)]


def parse_line(fmt: str, line: str, n: int, images_dir: Path, lookup: bool = True) -> Record | None:
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
            return Record(None, [], skip="bad_record", meta={"line": n})
        return Record(image, list(tags))
    fields = line.rstrip("\n").rstrip("\r").split("\t")
    if len(fields) not in (24, 25):
        return Record(None, [], skip="bad_record", meta={"line": n})
    off = len(fields) - 24
    photo_id, photo_hash = fields[off], fields[off + 1]
    tags = [unquote_plus(t) for t in fields[off + 9].split(",") if t]
    meta = {"yfcc_id": photo_id}
    if fields[off + 23].strip() == "1":
        return Record(None, tags, skip="video", meta=meta)
    if not lookup:
        return Record(None, tags, meta=meta)
    found = next((c for c in _yfcc_candidates(photo_id, photo_hash, fields[off + 22].strip())
                  if (images_dir / c).is_file()), None)
    return Record(found, tags, skip=None if found else "missing", meta=meta)


class TagFiles:
    """The `Source` of TAGS files (paths already expanded, see streams.expand_inputs); images are looked up
    under images_dir (YFCC) unless lookup=False."""

    def __init__(self, paths: list[str], images_dir, lookup: bool = True, block_lines: int = BLOCK_LINES):
        self.paths, self.images_dir = list(paths), Path(images_dir)
        self.lookup, self.block_lines = lookup, block_lines

    def blocks(self, file_no: int) -> Iterator[Block]:
        """Blocks of `block_lines` physical lines: line n of the file (1-based) is item (n - 1) % block_lines
        of block (n - 1) // block_lines. A damaged compressed stream stops with the file and line."""
        p = self.paths[file_no]
        fmt = detect_format(p)
        lines, bi = [], 0
        with open_text(p) as f:
            try:
                for line in f:
                    lines.append(line)
                    if len(lines) == self.block_lines:
                        yield Block(file_no, bi, fmt, lines)
                        lines, bi = [], bi + 1
            except STREAM_ERRORS as e:
                raise DataError(f"{p}: cannot read past line {bi * self.block_lines + len(lines)} ({e})") from None
        if lines:
            yield Block(file_no, bi, fmt, lines)

    def records(self, block: Block) -> Iterator[tuple[int, Record]]:
        first = block.block_no * self.block_lines + 1
        for i, line in enumerate(block.items):
            r = parse_line(block.kind, line, first + i, self.images_dir, self.lookup)
            if r is not None:
                yield first + i, r


def iter_tags(tags, images_dir, lookup: bool = True) -> Iterator[tuple[str, Record]]:
    """(format, record) for every record of every TAGS input (paths or globs), streaming."""
    source = TagFiles(expand_inputs(tags), images_dir, lookup)
    for fi in range(len(source.paths)):
        for block in source.blocks(fi):
            for _, r in source.records(block):
                yield block.kind, r


def read_tags(path, images_dir) -> tuple[str, list[Record]]:
    """(format, records) of small TAGS inputs, as a list (for tests and tools; the build streams)."""
    fmts, recs = set(), []
    for fmt, r in iter_tags(path, images_dir):
        fmts.add(fmt)
        recs.append(r)
    if not fmts:
        fmts = {detect_format(p) for p in expand_inputs(path)}
    return ",".join(sorted(fmts)), recs


def count_tags(tags, images_dir) -> dict[str, int]:
    """Images per hashtag over TAGS inputs (records the build would skip are not counted), streaming:
    memory is the distinct tags, not the records."""
    counts: Counter = Counter()
    for _, r in iter_tags(tags, images_dir):
        if not r.skip:
            counts.update(r.tags)
    return dict(counts)
