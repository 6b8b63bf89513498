"""Opening inputs as they are distributed: several files or glob patterns, plain or compressed.

`expand_inputs` turns paths and patterns into the list of files (a pattern expands to its sorted matches;
the order given is kept, and it fixes every record's key). `open_text` decompresses `.gz`, `.bz2`, `.xz`
and `.zst` as streams, nothing read whole, and every stream is checked to its end: a file cut short, a
damaged block (each codec's own check: gzip's CRC32, bzip2's block CRCs, xz's CRC64, a zstd checksum when
the file has one, corrupt data wherever the decoder sees it) or bytes after the last stream that are not
another stream raise `DamagedStreamError`, never a silent short read. Several streams back to back (pbzip2,
`cat a.gz b.gz`, zstd frames) are one file; NUL padding after the last stream is allowed. Text is UTF-8 (a
BOM is dropped); bytes that are not UTF-8 become lone surrogates (errors="surrogateescape"), so a reader
can count them (`has_bad_utf8`) instead of having them repaired into other text.

`iter_lines` yields a file's physical lines with a bound on each: a line longer than MAX_LINE_CHARS is
consumed without being held and yielded as OVERLONG_LINE (one line, so later line numbers stay right).

Memory: one input chunk (64 KiB) and the output of a bounded step per stream: bz2 and xz are asked for at
most 1 MiB at a time; gzip and zstd get 16 KiB / 1 KiB of input per step, at most ~17 MB / ~33 MB of
output even for a crafted stream of zeros. Time: linear in the decompressed size.
"""
from __future__ import annotations

import bz2
import glob
import io
import lzma
import os
import re
import stat
import zlib
from pathlib import Path

from ...errors import DataError

__all__ = ["open_text", "expand_inputs", "iter_lines", "has_bad_utf8", "DamagedStreamError", "STREAM_ERRORS",
           "COMPRESSED", "MAX_LINE_CHARS", "OVERLONG_LINE"]

COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
MAX_LINE_CHARS = 1 << 18  # 256 Ki characters: far above any real metadata line; bounds a block to 1 GiB
OVERLONG_LINE = "\0"  # stands for a longer line: NUL parses as no format, so it is a bad_record
_CHUNK = 1 << 16
_OUT_STEP = 1 << 20
_LZMA_MEMLIMIT = 1 << 30  # xz -9 needs 65 MiB to decode; a damaged header cannot ask for more than this
_BAD_UTF8 = re.compile("[\ud800-\udfff]")


class DamagedStreamError(OSError):
    """A compressed input that is cut short or corrupt."""


# What reading a damaged or unreadable input raises (DamagedStreamError is an OSError).
STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


def has_bad_utf8(s: str) -> bool:
    """True when s holds bytes that were not UTF-8 (or an escaped lone surrogate, e.g. JSON "\\udcff")."""
    return _BAD_UTF8.search(s) is not None


# ---- one compressed stream at a time, each with eof / unused_data / needs_input and a bounded step --------
class _Bounded:
    """bz2 / xz: the decoder itself bounds each step's output (max_length)."""

    def __init__(self, dec):
        self._dec = dec

    def decompress(self, data) -> bytes:
        return self._dec.decompress(data, _OUT_STEP)

    @property
    def eof(self):
        return self._dec.eof

    @property
    def needs_input(self):
        return self._dec.needs_input

    @property
    def unused_data(self):
        return self._dec.unused_data


class _Fed:
    """gzip (zlib) / zstd: no output bound in the decoder, so it gets `step` bytes of input at a time."""

    def __init__(self, dec, step: int):
        self._dec, self._step, self._pending = dec, step, memoryview(b"")

    def decompress(self, data) -> bytes:
        if data:
            self._pending = memoryview(bytes(self._pending) + bytes(data)) if self._pending else memoryview(data)
        while self._pending and not self._dec.eof:
            piece, self._pending = self._pending[:self._step], self._pending[self._step:]
            out = self._dec.decompress(piece)
            if out:
                return out
        return b""

    @property
    def eof(self):
        return self._dec.eof

    @property
    def needs_input(self):
        return not self._pending and not self._dec.eof

    @property
    def unused_data(self):
        return bytes(self._dec.unused_data) + bytes(self._pending)


def _zstd_errors():
    import zstandard

    return (zstandard.ZstdError,)


def _new_stream(suffix: str):
    if suffix == ".gz":
        return _Fed(zlib.decompressobj(wbits=31), 1 << 14)  # 31: gzip header and trailer (CRC32, size)
    if suffix == ".bz2":
        return _Bounded(bz2.BZ2Decompressor())
    if suffix == ".xz":
        return _Bounded(lzma.LZMADecompressor(memlimit=_LZMA_MEMLIMIT))
    import zstandard

    return _Fed(zstandard.ZstdDecompressor().decompressobj(), 1 << 10)


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of a file of one or more streams of one codec, checked to the end."""

    def __init__(self, path: str, suffix: str):
        self._raw = open(path, "rb")
        self._suffix, self._name = suffix, path
        self._stream = _new_stream(suffix)
        self._errors = (zlib.error, lzma.LZMAError, EOFError, OSError) + (_zstd_errors() if suffix == ".zst" else ())
        self._started = False  # any input fed: a file of zero bytes is an empty file, not a cut one
        self._out = memoryview(b"")

    def readable(self):
        return True

    def readinto(self, b) -> int:
        while not self._out:
            try:
                data = self._step()
            except DamagedStreamError:
                raise
            except self._errors as e:
                raise DamagedStreamError(f"damaged {self._suffix} data ({e})") from None
            if data is None:
                return 0
            self._out = memoryview(data)
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _step(self) -> bytes | None:
        """Some output (maybe b""), or None at the clean end of the file."""
        s = self._stream
        if s.eof:
            rest = s.unused_data or self._raw.read(_CHUNK)
            if not rest:
                return None
            if not rest.strip(b"\0"):  # NUL padding after the last stream, up to the end of the file
                while rest:
                    if rest.strip(b"\0"):
                        raise DamagedStreamError(f"data after the end of the last {self._suffix} stream is "
                                                 f"not a {self._suffix} stream")
                    rest = self._raw.read(_CHUNK)
                return None
            self._stream = s = _new_stream(self._suffix)
            try:
                return s.decompress(rest)
            except self._errors as e:
                raise DamagedStreamError(f"data after the end of a {self._suffix} stream is not a "
                                         f"{self._suffix} stream ({e})") from None
        if s.needs_input:
            data = self._raw.read(_CHUNK)
            if not data:
                if not self._started:
                    return None
                raise DamagedStreamError(f"the {self._suffix} data ends before its stream does (cut short)")
            self._started = True
            return s.decompress(data)
        return s.decompress(b"")

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()


def open_text(path: str | os.PathLike):
    """A text stream of a file, decompressed by extension (.gz, .bz2, .xz, .zst) and checked to its end
    (see the module docstring); bytes that are not UTF-8 kept as lone surrogates."""
    p = str(path)
    suffix = Path(p).suffix.lower()
    raw = _Decompressed(p, suffix) if suffix in COMPRESSED else open(p, "rb", buffering=0)
    try:
        buffered = io.BufferedReader(raw, buffer_size=_CHUNK)
        return io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="surrogateescape")
    except BaseException:
        raw.close()
        raise


def iter_lines(f, max_chars: int = MAX_LINE_CHARS):
    """The physical lines of a text stream; a line over max_chars is read through in pieces, never held,
    and yielded as OVERLONG_LINE."""
    while True:
        line = f.readline(max_chars)
        if not line:
            return
        if len(line) == max_chars and not line.endswith(("\n", "\r")):
            while True:  # the rest of this line, piece by piece
                more = f.readline(max_chars)
                if not more or more.endswith(("\n", "\r")):
                    break
            yield OVERLONG_LINE
        else:
            yield line


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
            found = matches
        elif not os.path.exists(s):
            raise FileNotFoundError(f"TAGS file {s} does not exist")
        else:
            found = [s]
        for m in found:
            if not stat.S_ISREG(os.stat(m).st_mode):  # a FIFO would block the read, a folder is no file
                raise DataError(f"TAGS input {m} is not a regular file")
        out += found
    return out
