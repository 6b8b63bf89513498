"""TAGS files: JSONL or YFCC100M metadata (detected per file), plain or compressed, read as streams.

JSONL: one object a line, {"image": "rel/path.jpg", "tags": ["#a", "#b"]}.
YFCC100M metadata: tab-separated, 23, 24 or 25 fields, every released form (see yfcc.py: the fields, the
image lookup, titles and descriptions as text, the subset filter and the hash file).

Every line is counted: a blank line gives no record (it keeps its number); a line that does not parse
(not JSON, JSON that is not an object of the right types, too deep, a 5,000-digit number, a NUL byte, a
wrong YFCC field, longer than MAX_LINE_CHARS) is a `bad_record`; a line whose image or tags hold bytes
that are not UTF-8 is a `bad_encoding` (never repaired into another tag). A file with no line at all
(zero bytes, blank lines only, a compressed file of nothing) is skipped and counted once as `empty_file`
(a block of kind "empty"). A damaged compressed file (cut short, corrupt, junk after its last stream; see
streams.py) stops the read with a DataError naming the file and the last line read; when the damage
garbles the first line, the file is reported as damaged, not as of an unknown format.

`TagFiles` is the build's `Source` over such files (blocks of BLOCK_LINES lines; record n = line n);
`iter_tags` / `read_tags` give the records directly (tools and tests). Time: linear in the lines, plus a
few stat calls per YFCC record; memory: one block of lines (at most BLOCK_LINES x MAX_LINE_CHARS).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from ...errors import DataError
from .base import BLOCK_LINES, Block, Record, Source
from .streams import COMPRESSED, MAX_LINE_CHARS, STREAM_ERRORS, expand_inputs, has_bad_utf8, iter_lines, open_text
from .yfcc import YfccOptions, is_yfcc_line, yfcc_records

__all__ = ["TagFiles", "TagRecord", "read_tags", "iter_tags", "count_tags", "detect_format", "parse_line",
           "FORMATS"]

FORMATS = ("jsonl", "yfcc")
EMPTY = "empty"  # the kind of the one block of an input with no line
TagRecord = Record  # the name the records of TAGS files had
_DRAIN_CHARS = 64 << 20  # how far a compressed file whose first line is unknown is read for damage


def _format_of_line(line: str) -> str | None:
    if line.lstrip().startswith("{"):
        return "jsonl"
    if "\0" not in line and is_yfcc_line(line):
        return "yfcc"
    return None


def _unknown_format(path, line: str) -> DataError:
    n = line.count("\t") + 1
    hint = " (a YFCC subset list or hash file? give it as --subset or --yfcc-hash)" if n in (2, 3) else ""
    return DataError(f"{path}: TAGS must be JSONL ({{\"image\": ..., \"tags\": [...]}} a line) or YFCC100M "
                     f"metadata (23, 24 or 25 tab-separated fields); first line has {n} tab-separated "
                     f"fields{hint}")


def _detect(path) -> str:
    """'jsonl', 'yfcc' or 'empty', from the first non-blank line of the decompressed stream."""
    n = 0
    try:
        with open_text(path) as f:
            for n, line in enumerate(iter_lines(f, MAX_LINE_CHARS), 1):
                if not line.strip():
                    continue
                fmt = _format_of_line(line)
                if fmt:
                    return fmt
                if Path(str(path)).suffix.lower() in COMPRESSED:
                    # damage garbles what a decoder emits before its check fails (a bzip2 block's CRC comes
                    # at the block's end): read on, and name the damage rather than a format
                    read = 0
                    while read < _DRAIN_CHARS and (chunk := f.read(1 << 20)):
                        read += len(chunk)
                raise _unknown_format(path, line)
    except STREAM_ERRORS as e:
        raise DataError(f"{path}: damaged or unreadable: cannot read past line {n} ({e})") from None
    return EMPTY


def detect_format(path: str | os.PathLike) -> str:
    """'jsonl' or 'yfcc', from the first non-empty line (of the decompressed stream); DataError for an
    empty file or an unknown or damaged one."""
    fmt = _detect(path)
    if fmt == EMPTY:
        raise DataError(f"{path}: TAGS file is empty")
    return fmt


def _safe_rel(rel: str) -> bool:
    """No absolute paths or '..': images stay inside the images folder."""
    return bool(rel) and not rel.startswith("/") and ".." not in rel.split("/") and "\0" not in rel


def _jsonl_record(line: str, n: int) -> Record:
    bad = Record(None, [], skip="bad_record", meta={"line": n})
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, too deep, a number of thousands of digits
        return bad
    if not isinstance(obj, dict):
        return bad
    image, tags = obj.get("image"), obj.get("tags")
    if not (isinstance(image, str) and isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        return bad
    if has_bad_utf8(image) or any(has_bad_utf8(t) for t in tags):
        return Record(None, [], skip="bad_encoding", meta={"line": n})
    if not _safe_rel(image) or any("\0" in t for t in tags):
        return bad
    return Record(image, list(tags))


def parse_line(fmt: str, line: str, n: int, images_dir: Path, lookup: bool = True,
               yfcc: YfccOptions | None = None) -> Record | None:
    """One record of a TAGS line (None for a blank line). lookup=False skips the YFCC image search."""
    if not line.strip():
        return None
    if fmt == "jsonl":
        return _jsonl_record(line, n)
    return next((r for _, r in yfcc_records([line], n, Path(images_dir), lookup, yfcc)), None)


class TagFiles:
    """The `Source` of TAGS files (paths already expanded, see streams.expand_inputs); images are looked up
    under images_dir (YFCC) unless lookup=False; yfcc: what YFCC records carry and keep (yfcc.YfccOptions)."""

    def __init__(self, paths: list[str], images_dir, lookup: bool = True, block_lines: int = BLOCK_LINES,
                 yfcc: YfccOptions | None = None):
        self.paths, self.images_dir = list(paths), Path(images_dir) if images_dir is not None else Path(".")
        self.lookup, self.block_lines, self.yfcc = lookup, block_lines, yfcc

    def blocks(self, file_no: int) -> Iterator[Block]:
        """Blocks of `block_lines` physical lines: line n of the file (1-based) is item (n - 1) % block_lines
        of block (n - 1) // block_lines. A damaged compressed stream stops with the file and line; a file
        with no line gives one block of kind "empty"."""
        p = self.paths[file_no]
        fmt = _detect(p)
        if fmt == EMPTY:
            yield Block(file_no, 0, EMPTY, [])
            return
        lines, bi = [], 0
        try:
            with open_text(p) as f:
                for line in iter_lines(f, MAX_LINE_CHARS):
                    lines.append(line)
                    if len(lines) == self.block_lines:
                        yield Block(file_no, bi, fmt, lines)
                        lines, bi = [], bi + 1
        except STREAM_ERRORS as e:
            raise DataError(f"{p}: damaged or unreadable: cannot read past line "
                            f"{bi * self.block_lines + len(lines)} ({e})") from None
        if lines:
            yield Block(file_no, bi, fmt, lines)

    def records(self, block: Block) -> Iterator[tuple[int, Record]]:
        if block.kind == EMPTY:
            yield 0, Record(None, [], skip="empty_file", meta={"file": self.paths[block.file_no]})
            return
        first = block.block_no * self.block_lines + 1
        if block.kind == "yfcc":
            yield from yfcc_records(block.items, first, self.images_dir, self.lookup, self.yfcc)
            return
        for i, line in enumerate(block.items):
            if line.strip():
                yield first + i, _jsonl_record(line, first + i)


def _source(tags, images_dir, lookup: bool = True) -> TagFiles:
    return tags if isinstance(tags, Source) else TagFiles(expand_inputs(tags), images_dir, lookup)


def iter_tags(tags, images_dir, lookup: bool = True) -> Iterator[tuple[str, Record]]:
    """(format, record) for every record of TAGS inputs (paths or globs, or a Source), streaming; an empty
    input gives one record skipped as empty_file, of format "empty"."""
    source = _source(tags, images_dir, lookup)
    for fi in range(len(source.paths)):
        for block in source.blocks(fi):
            for _, r in source.records(block):
                yield block.kind, r


def read_tags(path, images_dir) -> tuple[str, list[Record]]:
    """(format, records) of small TAGS inputs, as a list (for tests and tools; the build streams)."""
    fmts, recs = set(), []
    for fmt, r in iter_tags(path, images_dir):
        if fmt != EMPTY:
            fmts.add(fmt)
            recs.append(r)
    if not fmts:
        fmts = {detect_format(p) for p in expand_inputs(path)}
    return ",".join(sorted(fmts)), recs


def count_tags(tags, images_dir, skipped: dict | None = None) -> dict[str, int]:
    """Images per hashtag over TAGS inputs (paths, globs or a Source; records the build would skip are not
    counted), streaming: memory is the distinct tags, not the records. `skipped`, when given, receives the
    count of every skip reason (empty_file per empty input)."""
    counts: Counter = Counter()
    for _, r in iter_tags(tags, images_dir, lookup=images_dir is not None):
        if r.skip:
            if skipped is not None:
                skipped[r.skip] = skipped.get(r.skip, 0) + 1
        else:
            counts.update(r.tags)
    return dict(counts)
