"""Web-dataset inputs: webdataset tars and img2dataset output folders, read in place (nothing unpacked).

`WebDataset(expand_urls(["DIR/{00000..00999}.tar"]))` is the build's `Source` over tar files (local paths or
fsspec URLs: s3://, gs://, memory://, ... where the filesystem package is installed). What it reads:

- Samples as webdataset groups them: consecutive members with the same key, the key being the member's
  path up to the first dot of its file name, the rest (lower-cased) its extension ("a/b/0007.jpg",
  "a/b/0007.txt" -> key "a/b/0007", extensions jpg and txt). The image is the first of `.jpg .jpeg .png
  .webp`; the caption is `.txt` (UTF-8); `.json` holds metadata. Only the headers are read while grouping
  (sources/tarheaders.py): a record's image is a `MemberRef` (tar URL, offset, size), whose bytes the build
  reads by range when it checks the sample and again when it writes the shard; a block never holds image
  bytes. `.txt` and `.json` members (at most MAX_TEXT bytes each) are read into the block.
- Text (`Record.meta["text"]`, what caption labels read): the `.txt` member, else the img2dataset parquet's
  `caption`, else the `.json`'s `caption`; with `text_field=F` the `.json`'s field F, else the parquet's.
  Tags (`Record.tags`, for hashtag labels): with `tags_field=F` the `.json`'s field F, else the parquet's (a
  list of strings, or one string of comma-separated tags). meta also keeps the sample's `key` and, when
  given, its `url`.
- img2dataset's per-shard parquet (`00000.parquet` beside `00000.tar`, when it exists), used for three
  things: the status of every URL of the shard (rows whose `status` is not "success", e.g.
  failed_to_download with its `error_message`, are never in the tar: each is counted as a `not_downloaded`
  record, so the manifest says how much of the URL list did not make it; a tar sample whose row is not a
  success is skipped the same way); the caption when a sample has no `.txt`; and the text/tag fields when
  the `.json` lacks them. Only the columns needed are read (key, status, error_message, caption and the
  fields asked for), one shard's rows at a time.

Records of input f are numbered 1, 2, ... in tar order (one per sample), then the parquet's rows that are
not in the tar, in parquet order: the record keys (and every random draw of the build) depend only on the
files. Skips, each counted: `missing` (a sample with no image member), `not_downloaded`, `bad_record` (a
member name that is absolute or holds '..' or a NUL, a repeated extension within a sample, a member that is
not a regular file, a `.txt` that is not UTF-8 or longer than MAX_TEXT, a `.json` that is not one JSON
object), and `bad_tar`: the input is damaged from some point on (garbage, truncated, a size field past the
end; tarheaders.py says which): the samples before that point are kept, and the rest of the file is one
`bad_tar` skip. A missing input, or a parquet that cannot be read, is a one-line error.

Time: one header read and seek per member, plus the text members; memory: one block of samples, plus, with a
parquet, one shard's index (its keys, statuses and captions, and which keys the tar held: ~10^4 rows for
img2dataset's default shard size), never the whole corpus.
"""
from __future__ import annotations

import glob as _glob
import json
import os
from typing import Iterator

from ...errors import DataError
from .base import BLOCK_LINES, Block, MemberRef, Record
from .tarheaders import TarDamage, iter_members

__all__ = ["WebDataset", "expand_urls", "IMAGE_EXTENSIONS", "MAX_TEXT", "KINDS"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_TEXT = 1 << 20  # bytes of a .txt or .json member read into a block
KINDS = ("webdataset", "img2dataset")  # Block.kind: plain tars, or tars with img2dataset's parquet
_PARQUET_COLUMNS = ("key", "status", "error_message", "caption", "url")


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _local(url: str) -> str:
    return url.removeprefix("file://")


def expand_urls(patterns) -> list[str]:
    """The tar files of one or more patterns, in the given order: brace ranges ('{00000..00999}', as
    webdataset and img2dataset name shards), globs (sorted matches), a folder (its *.tar, sorted) or plain
    paths; local or fsspec URLs. A pattern that names no file is a FileNotFoundError."""
    from braceexpand import braceexpand

    items = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    if not items:
        raise DataError("no webdataset input given")
    out: list[str] = []
    for item in items:
        for p in braceexpand(str(item)):
            if _is_remote(p):
                import fsspec

                fs, path = fsspec.core.url_to_fs(p)
                if any(c in path for c in "*?["):
                    found = sorted(fs.glob(path))
                elif fs.isdir(path):
                    found = sorted(q for q in fs.ls(path, detail=False) if q.endswith(".tar"))
                else:
                    found = [path] if fs.isfile(path) else []
                if not found:
                    raise FileNotFoundError(f"webdataset input {p!r} matches no file")
                out += [fs.unstrip_protocol(q) for q in found]
                continue
            local = _local(p)
            if os.path.isdir(local):
                found = sorted(_glob.glob(os.path.join(_glob.escape(local), "*.tar")))
            elif any(c in local for c in "*?[") and not os.path.exists(local):
                found = sorted(_glob.glob(local))
            else:
                found = [local] if os.path.isfile(local) else []
            if not found:
                raise FileNotFoundError(f"webdataset input {p!r} matches no file")
            out += [os.path.abspath(q) for q in found]
    return out


def _open(url: str):
    """(binary file, size in bytes, modification stamp) of a local path or fsspec URL."""
    if _is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        stamp = str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created") or "")
        return fs.open(path, "rb"), int(info["size"]), stamp
    f = open(_local(url), "rb")
    st = os.fstat(f.fileno())
    return f, st.st_size, str(st.st_mtime_ns)


def _split(name: str) -> tuple[str, str | None]:
    """webdataset's key and extension of a member name: path up to the first dot of the file name."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, None
    return name[:dot], name[dot + 1:].lower()


def _unsafe(name: str) -> bool:
    return not name or name.startswith("/") or "\0" in name or ".." in name.split("/")


def _parquet_index(url: str, fields: tuple[str, ...]) -> dict | None:
    """img2dataset's parquet beside a tar: key -> {column: value} for the columns needed, or None if absent."""
    purl = url[: -len(".tar")] + ".parquet" if url.endswith(".tar") else None
    if purl is None:
        return None
    try:
        if _is_remote(purl):
            import fsspec

            fs, path = fsspec.core.url_to_fs(purl)
            if not fs.isfile(path):
                return None
            f = fs.open(path, "rb")
        elif os.path.isfile(_local(purl)):
            f = open(_local(purl), "rb")
        else:
            return None
        import pyarrow.parquet as pq

        with f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            if "key" not in names:
                raise DataError(f"{purl}: img2dataset parquet without a 'key' column (columns: {sorted(names)[:12]})")
            cols = [c for c in dict.fromkeys(_PARQUET_COLUMNS + fields) if c in names]
            index: dict[str, dict] = {}
            for batch in pf.iter_batches(columns=cols, batch_size=8192):
                d = batch.to_pydict()
                for i, key in enumerate(d["key"]):
                    if key is not None:
                        index[str(key)] = {c: d[c][i] for c in cols if c != "key"}
            return index
    except DataError:
        raise
    except Exception as e:  # pyarrow's errors for a damaged file are many kinds: one line, naming the file
        raise DataError(f"{purl}: cannot read the img2dataset parquet ({type(e).__name__}: {e})") from None


class _Sample:
    """Members of one sample while a tar is walked."""

    def __init__(self, key: str):
        self.key, self.exts = key, {}
        self.bad: str | None = None

    def add(self, ext: str | None, member, f) -> None:
        if self.bad:
            return
        if ext is None or not member.regular:
            self.bad = f"member {member.name!r} is not a regular file with an extension"
        elif ext in self.exts:
            self.bad = f"{self.key}: repeated .{ext}"
        elif ext in ("txt", "json"):
            if member.size > MAX_TEXT:
                self.bad = f"{member.name}: {member.size} bytes of {ext} (over {MAX_TEXT})"
                return
            f.seek(member.offset)
            data = f.read(member.size)
            if len(data) != member.size:
                self.bad = f"{member.name}: cut short"
                return
            try:
                self.exts[ext] = data.decode("utf-8")
            except UnicodeDecodeError:
                self.bad = f"{member.name}: not UTF-8"
        else:
            self.exts[ext] = [member.name, member.offset, member.size]


class WebDataset:
    """The `Source` of webdataset / img2dataset tars (paths already expanded, see `expand_urls`; see the
    module docstring). Picklable: it holds only paths and options."""

    def __init__(self, paths: list[str], text_field: str | None = None, tags_field: str | None = None,
                 block_items: int = BLOCK_LINES):
        self.paths = list(paths)
        self.text_field, self.tags_field, self.block_items = text_field, tags_field, block_items

    # ---- blocks: walk one tar ----------------------------------------------------------------------
    def blocks(self, file_no: int) -> Iterator[Block]:
        url = self.paths[file_no]
        fields = tuple(f for f in (self.text_field, self.tags_field) if f)
        index = _parquet_index(url, fields)
        kind = KINDS[index is not None]
        try:
            f, size, stamp = _open(url)
        except FileNotFoundError:
            raise FileNotFoundError(f"webdataset input {url} does not exist") from None
        except OSError as e:
            raise DataError(f"{url}: cannot open ({e})") from None
        items, bi, seen = [], 0, set()

        def emit(item: dict):
            nonlocal items, bi
            item["tar"] = stamp  # a changed tar changes its blocks, so no cached check of it is reused
            items.append(json.dumps(item, separators=(",", ":"), ensure_ascii=False))
            if len(items) == self.block_items:
                block = Block(file_no, bi, kind, items)
                items, bi = [], bi + 1
                return block
            return None

        with f:
            current: _Sample | None = None
            damage = None
            members = iter_members(f, size)
            while True:
                try:
                    m = next(members, None)
                except TarDamage as e:
                    damage = str(e)
                    m = None
                except OSError as e:  # a read error of the file system (remote or local)
                    damage = f"read error ({e})"
                    m = None
                key, ext = _split(m.name) if m is not None else (None, None)
                if m is not None and m.directory:
                    continue
                if current is not None and (m is None or key != current.key):
                    if index is not None:  # the parquet's keys found in the tar (one shard's, like the index)
                        seen.add(current.key.rsplit("/", 1)[-1])
                    block = emit(self._item(current, index))
                    if block is not None:
                        yield block
                    current = None
                if m is None:
                    break
                if current is None:
                    current = _Sample(key)
                if _unsafe(m.name):
                    current.bad = f"member name {m.name!r} is absolute or leaves the archive ('..')"
                else:
                    try:
                        current.add(ext, m, f)
                    except OSError as e:
                        current.bad = f"{m.name}: read error ({e})"
            if damage is not None:
                block = emit({"damage": damage})
                if block is not None:
                    yield block
        if index:  # the parquet's rows that never made it into the tar
            for key, row in index.items():
                if key not in seen:
                    block = emit({"k": key, "p": row, "absent": True})
                    if block is not None:
                        yield block
        if items:
            yield Block(file_no, bi, kind, items)

    def _item(self, s: _Sample, index: dict | None) -> dict:
        item: dict = {"k": s.key}
        if s.bad:
            item["bad"] = s.bad
            return item
        image = next((s.exts[e] for e in IMAGE_EXTENSIONS if e in s.exts), None)
        if image is not None:
            item["i"] = image
        if "txt" in s.exts:
            item["t"] = s.exts["txt"]
        if "json" in s.exts:
            try:
                meta = json.loads(s.exts["json"])
            except ValueError:
                meta = None
            if not isinstance(meta, dict):
                item["bad"] = f"{s.key}.json is not a JSON object"
                return item
            keep = {k: meta[k] for k in dict.fromkeys(("caption", "url", "status", self.text_field, self.tags_field))
                    if k and k in meta}
            if keep:
                item["j"] = keep
        if index is not None:
            row = index.get(s.key.rsplit("/", 1)[-1])
            if row is not None:
                item["p"] = row
        return item

    # ---- records ------------------------------------------------------------------------------------
    def records(self, block: Block) -> Iterator[tuple[int, Record]]:
        url = self.paths[block.file_no]
        first = block.block_no * self.block_items + 1
        for i, raw in enumerate(block.items):
            yield first + i, self._record(url, json.loads(raw))

    def _record(self, url: str, item: dict) -> Record:
        if "damage" in item:
            return Record(None, [], skip="bad_tar", meta={"error": item["damage"]})
        meta: dict = {"key": item["k"]}
        if "bad" in item:
            return Record(None, [], skip="bad_record", meta={**meta, "error": item["bad"]})
        js, row = item.get("j") or {}, item.get("p") or {}
        status = row.get("status") or js.get("status")
        if item.get("absent") or (status is not None and status != "success"):
            if status == "success":  # listed as downloaded, yet not in the tar
                return Record(None, [], skip="missing", meta=meta)
            err = row.get("error_message")
            error = f"{status}: {err}" if err else status
            return Record(None, [], skip="not_downloaded", meta={**meta, "error": error})
        if self.text_field:
            text = js.get(self.text_field, row.get(self.text_field))
        else:
            text = item.get("t")
            if text is None:
                text = row.get("caption", js.get("caption"))
        if text is not None and not isinstance(text, str):
            text = None  # a field that holds no text gives no caption (its labels are then counted as missing)
        tags = []
        if self.tags_field:
            raw = js.get(self.tags_field, row.get(self.tags_field))
            if isinstance(raw, str):
                tags = [t.strip() for t in raw.split(",") if t.strip()]
            elif isinstance(raw, list):
                tags = [t for t in raw if isinstance(t, str)]
        if text is not None:
            meta["text"] = text
        u = js.get("url", row.get("url"))
        if isinstance(u, str):
            meta["url"] = u
        if "i" not in item:
            return Record(None, tags, skip="missing", meta=meta)
        name, offset, size = item["i"]
        return Record(MemberRef(url, offset, size, name), tags, meta=meta)
