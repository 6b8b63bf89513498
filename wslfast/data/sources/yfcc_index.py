"""YFCC100M photo id -> photo hash tables on disk: the `yfcc100m_hash` file (100M lines `id<TAB>hash`) for
`--yfcc-hash`, and the subset lists people train on for `--subset` (OpenAI's YFCC15M,
`yfcc100m_subset_data.tsv`: `line<TAB>id<TAB>hash` a line, no header, 14,829,396 lines; also `id<TAB>hash`
or one id a line). Plain or compressed, as open_text reads them.

`IdIndex` sorts such a file once into a folder of flat arrays and memory-maps it; a lookup of a block's
ids is a binary search per id, so no process holds the table:
- build (streaming, bounded memory): lines are validated and spread over 256 buckets by the id's low 8
  bits, appended to temporary bucket files in batches of FLUSH entries; then each bucket is read back,
  sorted by id (stable: the first line of an id wins) and appended to `ids.u64` (uint64) and `hashes.s32`
  (the hash's ASCII, NUL-padded to 32 bytes), with `offsets.i64` marking where each bucket starts.
  Memory: one batch (~40 MB at FLUSH = 2^19) plus one bucket (N / 256 entries x 40 B: ~16 MB for the
  100M-line hash file). Time: one pass over the file, one sort of each bucket. Disk: 40 B per id
  (4 GB for the hash file, 0.6 GB for YFCC15M).
- lookup: the block's ids grouped by bucket, `np.searchsorted` in each bucket's slice of the map; memory
  is the pages the searches touch (shared by every process on a machine through the page cache).

The folder is `$WSLFAST_CACHE/yfcc/<kind>-<key>` (default ~/.cache/wslfast), the key a hash of the file's
path, size and mtime: built once, reused by every later `vocab` / `shards` run and by every worker. It is
built in a temporary folder and renamed into place, under a lock file (fcntl; released by the kernel if
the process dies), so workers that find it missing (another machine without a shared cache) build it
once between them. A malformed line stops the build with the file and line in one DataError.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ...errors import DataError
from .streams import STREAM_ERRORS, iter_lines, open_text

__all__ = ["IdIndex", "cache_root", "parse_photo_id"]

_VERSION = 1
_BUCKETS = 256
FLUSH = 1 << 19
_HASH = re.compile(r"[0-9A-Za-z]{1,32}")  # hex in the releases; any letters or digits are a safe file name
_HEADER = re.compile(r"[A-Za-z_ #]+")


def cache_root() -> Path:
    """$WSLFAST_CACHE, else ~/.cache/wslfast (as the demo's cache)."""
    return Path(os.environ.get("WSLFAST_CACHE") or Path.home() / ".cache" / "wslfast")


def parse_photo_id(s: str) -> int | None:
    """A Flickr photo id (decimal, at most 19 digits: fits uint64), or None."""
    if 0 < len(s) <= 19 and s.isascii() and s.isdigit():
        return int(s)
    return None


def _parse(fields: list[str]) -> tuple[int, str] | None:
    """(id, hash or '') of one line's fields: `id`, `id hash` or `line id hash`."""
    if len(fields) == 1:
        pid, h = fields[0], ""
    elif len(fields) == 2:
        pid, h = fields
    elif len(fields) == 3:
        if parse_photo_id(fields[0]) is None:
            return None
        pid, h = fields[1], fields[2]
    else:
        return None
    i, h = parse_photo_id(pid.strip()), h.strip()
    if i is None or (h and not _HASH.fullmatch(h)):
        return None
    return i, h


class IdIndex:
    """The sorted table of one id file (see the module docstring). `kind` ("subset" or "hash") names it in
    messages and in the cache folder. Pickles as its paths: each process maps the folder itself."""

    def __init__(self, path, kind: str = "subset", cache_dir=None, flush: int = FLUSH):
        src = Path(path)
        try:
            st = src.stat()
        except OSError as e:
            raise FileNotFoundError(f"YFCC {kind} file {src} cannot be read ({e.strerror})") from None
        if not src.is_file():
            raise DataError(f"YFCC {kind} file {src} is not a regular file")
        self.path, self.kind, self.flush = str(src.resolve()), kind, flush
        key = hashlib.sha256(f"{_VERSION}\0{self.path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
        self.dir = str(Path(cache_dir or cache_root() / "yfcc") / f"{kind}-{key}")
        self._maps = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_maps"} | {"_maps": None}

    @property
    def ready(self) -> bool:
        """True when the sorted table is in the cache already."""
        return (Path(self.dir) / "meta.json").is_file()

    # ---- build ---------------------------------------------------------------------------------------------
    def build(self) -> "IdIndex":
        """Make sure the folder exists (building it if needed); returns self."""
        final = Path(self.dir)
        if (final / "meta.json").is_file():
            return self
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per folder; the others wait, then find it
            if not (final / "meta.json").is_file():
                tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                try:
                    self._build_into(tmp)
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return self

    def _build_into(self, out: Path):
        ids: list[list[int]] = [[] for _ in range(_BUCKETS)]
        hashes: list[list[bytes]] = [[] for _ in range(_BUCKETS)]
        parts = [(os.path.join(out, f"b{b:03d}.ids"), os.path.join(out, f"b{b:03d}.hashes")) for b in range(_BUCKETS)]
        pending = n_lines = 0
        with_hash = 0
        first = True
        try:
            with open_text(self.path) as f:
                for n_lines, line in enumerate(iter_lines(f), 1):
                    text = line.rstrip("\r\n")
                    if not text.strip():
                        continue
                    fields = text.split("\t")
                    got = _parse(fields)
                    if got is None:
                        if first and all(_HEADER.fullmatch(x) for x in fields):
                            first = False  # a header line (`line photoid hash`, ...)
                            continue
                        raise DataError(f"{self.path}: line {n_lines}: not a YFCC {self.kind} line (expected "
                                        f"'id', 'id<TAB>hash' or 'line<TAB>id<TAB>hash', got {text[:80]!r})")
                    first = False
                    i, h = got
                    b = i & (_BUCKETS - 1)
                    ids[b].append(i)
                    hashes[b].append(h.encode())
                    with_hash += bool(h)
                    pending += 1
                    if pending >= self.flush:
                        self._spill(parts, ids, hashes)
                        pending = 0
        except STREAM_ERRORS as e:
            raise DataError(f"{self.path}: cannot read past line {n_lines} ({e})") from None
        self._spill(parts, ids, hashes)
        offsets = np.zeros(_BUCKETS + 1, dtype=np.int64)
        with open(out / "ids.u64", "wb") as fi, open(out / "hashes.s32", "wb") as fh:
            for b, (part_i, part_h) in enumerate(parts):
                if os.path.exists(part_i):
                    bi = np.fromfile(part_i, dtype="<u8")
                    bh = np.fromfile(part_h, dtype="S32")
                    order = np.argsort(bi, kind="stable")
                    bi[order].tofile(fi)
                    bh[order].tofile(fh)
                    os.unlink(part_i)
                    os.unlink(part_h)
                    offsets[b + 1] = offsets[b] + bi.size
                else:
                    offsets[b + 1] = offsets[b]
        offsets.tofile(out / "offsets.i64")
        (out / "meta.json").write_text(json.dumps({"version": _VERSION, "source": self.path, "kind": self.kind,
                                                   "ids": int(offsets[-1]), "with_hash": with_hash}))

    @staticmethod
    def _spill(parts, ids, hashes):
        """Append the buffered entries to their bucket files and empty the buffers."""
        for b, (part_i, part_h) in enumerate(parts):
            if ids[b]:
                with open(part_i, "ab") as f:
                    np.asarray(ids[b], dtype="<u8").tofile(f)
                with open(part_h, "ab") as f:
                    np.asarray(hashes[b], dtype="S32").tofile(f)
                ids[b].clear()
                hashes[b].clear()

    # ---- lookup --------------------------------------------------------------------------------------------
    def _open(self):
        if self._maps is None:
            self.build()
            d = Path(self.dir)
            offsets = np.fromfile(d / "offsets.i64", dtype=np.int64)
            n = int(offsets[-1])
            ids = np.memmap(d / "ids.u64", dtype="<u8", mode="r") if n else np.zeros(0, "<u8")
            hashes = np.memmap(d / "hashes.s32", dtype="S32", mode="r") if n else np.zeros(0, "S32")
            self._maps = (offsets, ids, hashes)
        return self._maps

    def __len__(self) -> int:
        return int(self._open()[0][-1])

    def lookup(self, ids) -> tuple[np.ndarray, list[str | None]]:
        """(found: bool per id, hash per id: its ASCII, '' when the file gives none, None when not found)."""
        offsets, table, hashes = self._open()
        q = np.asarray(ids, dtype=np.uint64)
        pos = np.full(q.size, -1, dtype=np.int64)
        bucket = (q & np.uint64(_BUCKETS - 1)).astype(np.int64)
        for b in np.unique(bucket).tolist():
            sel = np.flatnonzero(bucket == b)
            lo, hi = int(offsets[b]), int(offsets[b + 1])
            if hi == lo:
                continue
            seg = table[lo:hi]
            p = np.searchsorted(seg, q[sel])
            ok = p < seg.size
            ok[ok] = seg[p[ok]] == q[sel][ok]
            pos[sel[ok]] = lo + p[ok]
        found = pos >= 0
        out: list[str | None] = [None] * q.size
        if found.any():
            got = hashes[pos[found]]
            for i, h in zip(np.flatnonzero(found).tolist(), got.tolist()):
                out[i] = h.decode("ascii")
        return found, out
