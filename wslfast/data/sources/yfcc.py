"""YFCC100M metadata in every released form, detected per line, with the options people train with.

The forms (tab-separated, one photo or video a line):
- 23 fields: Yahoo Webscope's split files `yfcc100m_dataset-0` ... `-9` (bz2) and the single
  `yfcc100m_dataset.bz2` of the multimedia-commons bucket: photo id, user NSID, nickname, date taken,
  date uploaded, capture device, title, description, user tags, machine tags, longitude, latitude,
  accuracy, page URL, download URL, licence name, licence URL, server, farm, secret, original secret,
  original extension, marker (0 photo, 1 video). No line number, no hash.
- 25 fields: the re-release with the line number, photo id and photo hash first (the TSV whose "first
  three columns" OpenAI's YFCC15M list repeats), then the 22 fields after the id.
- 24 fields: one of the two leading columns: photo id + hash (a dump without line numbers) or line number
  + photo id (Webscope's lines with their number); told apart by the second field (a hash is hex, longer
  than any photo id).
Title, description and user tags are URL-encoded ('+' a space, %XX UTF-8 bytes); tags are comma-separated
and each is decoded on its own (an encoded comma stays in its tag). Descriptions carry HTML (links, <b>,
&amp;), removed from the text.

What a record carries (`YfccOptions.text`, the CLI's `--text tags,title,description`; default tags):
`tags` puts the user tags in Record.tags (the hashtag vocabulary's path); `title` / `description` put
their decoded text, joined by a newline, in Record.meta["text"] (for the caption labeller; it also lands in
the sample's .json). meta["yfcc_id"] is the photo id.

Skips, in this order: `bad_record` (wrong field count, an id that is not a number, a bad hash, a marker
that is not 0/1, a NUL byte), `bad_encoding` (a used field with bytes or %-escapes that are not UTF-8),
`not_in_subset` (with `--subset`), `video`, `missing` (no image file found).

Images: looked up under the images folder as <id>.<ext>, <id>.jpg, then by hash as <hash>.jpg and
<hash[:3]>/<hash[3:6]>/<hash>.jpg (the layout of the multimedia-commons image bucket). The hash is the
line's own, else the subset list's, else the `--yfcc-hash` file's (`IdIndex`, looked up per block), else
the one the bucket's keys are made of: MD5 of the download URL, each byte printed as '%x' (without zero
padding), as jfolz/yfcc100m derives it. Time per record: the parse plus up to ~6 stat calls for a missing
image; per block: one index search per id. Memory: one block.
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

import numpy as np

from ...errors import ConfigError
from .base import Record
from .streams import has_bad_utf8
from .yfcc_index import IdIndex, parse_photo_id

__all__ = ["YfccOptions", "TEXT_FIELDS", "yfcc_records", "is_yfcc_line", "flickr_hash", "clean_text"]

TEXT_FIELDS = ("tags", "title", "description")
_FIELD_COUNTS = (23, 24, 25)
# positions after the user NSID (the first field after the id and the optional line number / hash)
_TITLE, _DESCRIPTION, _TAGS, _URL, _EXT, _MARKER = 5, 6, 7, 13, 20, 21
_HASH = re.compile(r"[0-9A-Za-z]{1,32}")  # hex in the releases; any letters or digits are a safe file name
_EXT_OK = re.compile(r"[A-Za-z0-9]{1,8}")
_HTML_TAG = re.compile(r"<[^<>]{0,2000}>")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class YfccOptions:
    """What YFCC records carry and which are kept (see the module docstring). subset / hashes: IdIndex."""
    text: tuple = ("tags",)
    subset: IdIndex | None = None
    hashes: IdIndex | None = None

    def __post_init__(self):
        text = tuple(self.text)
        bad = [t for t in text if t not in TEXT_FIELDS]
        if not text or bad or len(set(text)) != len(text):
            raise ConfigError(f"YFCC text fields must be one or more of {', '.join(TEXT_FIELDS)} (each once), "
                              f"got {','.join(text) or 'none'}")
        object.__setattr__(self, "text", text)


def is_yfcc_line(line: str) -> bool:
    """A line with a YFCC100M field count (23, 24 or 25): how a file's format is detected."""
    return line.count("\t") + 1 in _FIELD_COUNTS


def flickr_hash(download_url: str) -> str:
    """The multimedia-commons key of a photo: MD5 of its download URL, each byte as '%x'."""
    return "".join(f"{b:x}" for b in hashlib.md5(download_url.encode("utf-8", "surrogateescape")).digest())


def clean_text(field: str) -> str:
    """A URL-encoded title or description as plain text: decoded, HTML tags and entities removed, spaces
    collapsed. Raises UnicodeDecodeError for %-escapes that are not UTF-8."""
    s = unquote_plus(field, errors="strict")
    s = html.unescape(_HTML_TAG.sub(" ", s))
    return _SPACES.sub(" ", s).strip()


@dataclass
class _Row:
    n: int
    photo_id: str
    pid: int
    hash: str | None
    tags: list
    text: str | None
    ext: str
    url: str
    video: bool


def _parse(line: str, n: int, text_fields: tuple) -> _Row | Record:
    """One YFCC line: a _Row, or a Record that is skipped (bad_record / bad_encoding)."""
    bad = Record(None, [], skip="bad_record", meta={"line": n})
    if "\0" in line:
        return bad
    fields = line.rstrip("\r\n").split("\t")
    nf = len(fields)
    if nf not in _FIELD_COUNTS:
        return bad
    if nf == 23:
        id_at, hash_at = 0, None
    elif nf == 25:
        id_at, hash_at = 1, 2
    elif parse_photo_id(fields[1]) is None:  # 24: id + hash
        id_at, hash_at = 0, 1
    else:  # 24: line number + id
        id_at, hash_at = 1, None
    pid = parse_photo_id(fields[id_at])
    if pid is None or (id_at == 1 and parse_photo_id(fields[0]) is None):
        return bad
    h = None
    if hash_at is not None:
        h = fields[hash_at].strip() or None
        if h is not None and not _HASH.fullmatch(h):
            return bad
    rest = fields[nf - 22:]  # from the user NSID on
    marker = rest[_MARKER].strip()
    if marker not in ("0", "1"):
        return bad
    try:
        tags = [unquote_plus(t, errors="strict") for t in rest[_TAGS].split(",") if t] if "tags" in text_fields \
            else []
        parts = [clean_text(rest[i]) for name, i in (("title", _TITLE), ("description", _DESCRIPTION))
                 if name in text_fields]
    except UnicodeDecodeError:
        return Record(None, [], skip="bad_encoding", meta={"line": n})
    text = "\n".join(p for p in parts if p) if any(t != "tags" for t in text_fields) else None
    if any(has_bad_utf8(t) for t in tags) or (text and has_bad_utf8(text)):
        return Record(None, [], skip="bad_encoding", meta={"line": n})
    ext = rest[_EXT].strip()
    return _Row(n, fields[id_at], pid, h, tags, text, ext if _EXT_OK.fullmatch(ext) else "",
                rest[_URL].strip(), marker == "1")


def _candidates(row: _Row, hashes: list[str]) -> list[str]:
    out = ([f"{row.photo_id}.{row.ext}"] if row.ext else []) + [f"{row.photo_id}.jpg"]
    for h in hashes:
        out += [f"{h}.jpg", f"{h[:3]}/{h[3:6]}/{h}.jpg"]
    return list(dict.fromkeys(out))


def yfcc_records(lines: list, first: int, images_dir: Path, lookup: bool,
                 opts: YfccOptions | None) -> Iterator[tuple[int, Record]]:
    """(n, record) for the non-blank lines of a block (line i is line first + i of its file)."""
    opts = opts or YfccOptions()
    parsed = [(first + i, _parse(line, first + i, opts.text)) for i, line in enumerate(lines) if line.strip()]
    rows = [p for _, p in parsed if isinstance(p, _Row)]
    in_subset = {}
    known = {}  # row n -> hashes to try, best first
    if opts.subset is not None and rows:
        found, sub_hash = opts.subset.lookup(np.array([r.pid for r in rows], dtype=np.uint64))
        for r, f, h in zip(rows, found.tolist(), sub_hash):
            in_subset[r.n] = f
            if f and h:
                known[r.n] = [h]
    if lookup:
        wanted = [r for r in rows if not r.video and in_subset.get(r.n, True)]
        need = [r for r in wanted if r.hash is None and r.n not in known]
        if opts.hashes is not None and need:
            found, idx_hash = opts.hashes.lookup(np.array([r.pid for r in need], dtype=np.uint64))
            for r, f, h in zip(need, found.tolist(), idx_hash):
                if f and h:
                    known[r.n] = [h]
        for r in wanted:
            hs = ([r.hash] if r.hash else []) + known.get(r.n, [])
            if not hs and r.url:
                hs = [flickr_hash(r.url)]
            known[r.n] = hs
    for n, p in parsed:
        if isinstance(p, Record):
            yield n, p
            continue
        meta = {"yfcc_id": p.photo_id}
        if p.text is not None:
            meta["text"] = p.text
        if not in_subset.get(p.n, True):
            yield p.n, Record(None, p.tags, skip="not_in_subset", meta=meta)
        elif p.video:
            yield p.n, Record(None, p.tags, skip="video", meta=meta)
        elif not lookup:
            yield p.n, Record(None, p.tags, meta=meta)
        else:
            found = next((c for c in _candidates(p, known.get(p.n, [])) if (images_dir / c).is_file()), None)
            yield p.n, Record(found, p.tags, skip=None if found else "missing", meta=meta)
