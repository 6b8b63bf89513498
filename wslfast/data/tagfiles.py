"""Reading TAGS files: JSONL or YFCC100M metadata, detected from the first non-empty line.

JSONL: one object a line, {"image": "rel/path.jpg", "tags": ["#a", "#b"]}.
YFCC100M metadata (yfcc100m_dataset): tab-separated, 25 fields (with the leading line number) or 24
(without). Fields after the optional line number: photo id, photo hash, user id, nickname, date taken,
date uploaded, device, title, description, USER TAGS (comma-separated, URL-encoded, '+' for a space),
machine tags, longitude, latitude, accuracy, page URL, download URL, licence name, licence URL, server,
farm, secret, original secret, original extension, and the marker (0 photo, 1 video). Videos are skipped.
A YFCC image is looked up under the images folder as <id>.<ext>, <id>.jpg, <hash>.jpg, then
<hash[:3]>/<hash[3:6]>/<hash>.jpg (the layout of the public image bucket); the first that exists wins.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

__all__ = ["TagRecord", "read_tags", "detect_format"]


@dataclass
class TagRecord:
    image: str | None  # path relative to the images folder; None when no file was found (counted)
    tags: list[str]
    skip: str | None = None  # "video", "missing", "bad_record" for records to count and drop
    meta: dict = field(default_factory=dict)


def detect_format(path: str | os.PathLike) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                if line.lstrip().startswith("{"):
                    return "jsonl"
                if line.count("\t") in (23, 24):
                    return "yfcc"
                raise ValueError(f"{path}: TAGS must be JSONL ({{\"image\": ..., \"tags\": [...]}} a line) "
                                 f"or YFCC100M metadata (24/25 tab-separated fields); first line has "
                                 f"{line.count(chr(9)) + 1} tab-separated fields")
    raise ValueError(f"{path}: TAGS file is empty")


def _safe_rel(rel: str) -> bool:
    """No absolute paths or '..': images stay inside the images folder."""
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def _jsonl(path) -> Iterator[TagRecord]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image, tags = obj["image"], obj["tags"]
                ok = isinstance(image, str) and isinstance(tags, list) and all(isinstance(t, str) for t in tags)
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok or not _safe_rel(image):
                yield TagRecord(None, [], skip="bad_record", meta={"line": n})
            else:
                yield TagRecord(image, list(tags))


def _yfcc_candidates(photo_id: str, photo_hash: str, ext: str) -> list[str]:
    out = [f"{photo_id}.{ext}" if ext else "", f"{photo_id}.jpg", f"{photo_hash}.jpg",
           f"{photo_hash[:3]}/{photo_hash[3:6]}/{photo_hash}.jpg"]
    return [c for c in out if c and _safe_rel(c)]


def _yfcc(path, images_dir: Path) -> Iterator[TagRecord]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) not in (24, 25):
                yield TagRecord(None, [], skip="bad_record", meta={"line": n})
                continue
            off = len(fields) - 24
            photo_id, photo_hash = fields[off], fields[off + 1]
            tags = [unquote_plus(t) for t in fields[off + 9].split(",") if t]
            meta = {"yfcc_id": photo_id}
            if fields[off + 23].strip() == "1":
                yield TagRecord(None, tags, skip="video", meta=meta)
                continue
            found = next((c for c in _yfcc_candidates(photo_id, photo_hash, fields[off + 22].strip())
                          if (images_dir / c).is_file()), None)
            yield TagRecord(found, tags, skip=None if found else "missing", meta=meta)


def read_tags(path: str | os.PathLike, images_dir: str | os.PathLike) -> tuple[str, list[TagRecord]]:
    """(format, records) of a TAGS file; format is 'jsonl' or 'yfcc'."""
    fmt = detect_format(path)
    records = list(_jsonl(path) if fmt == "jsonl" else _yfcc(path, Path(images_dir)))
    return fmt, records
