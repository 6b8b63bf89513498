"""Opening inputs as they are distributed: several files or glob patterns, plain or compressed.

`expand_inputs` turns paths and patterns into the list of files (a pattern expands to its sorted matches;
the order given is kept, and it fixes every record's key). `open_text` decompresses `.gz`, `.bz2`
(multi-stream, as YFCC100M's split files are), `.xz` and `.zst` as streams: nothing is read whole.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import os
from pathlib import Path

from ...errors import DataError

__all__ = ["open_text", "expand_inputs", "STREAM_ERRORS"]

# What a damaged compressed stream raises while it is read.
STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError)


def open_text(path: str | os.PathLike):
    """A text stream of a file, decompressed by extension (.gz, .bz2, .xz, .zst); bad UTF-8 replaced."""
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


def expand_inputs(paths) -> list[str]:
    """The files of one or more paths or glob patterns, in the given order (patterns sorted)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise DataError("no TAGS file given")
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
