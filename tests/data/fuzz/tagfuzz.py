"""Helpers of the TAGS part of the fuzz suite (issue 18 item 5): Hypothesis strategies for bad TAGS lines
(JSONL and YFCC100M, as bytes: invalid UTF-8, NUL, deep JSON, huge numbers, wrong types, wrong field
counts, bad %-escapes), the four codecs (one or several streams, zstd with or without its checksum), byte
mutations of a compressed file (cut, flipped bytes, junk appended), the reader under test, and a guard
that turns a hang into a failure. Import `tagfuzz` from a test in this folder (pytest puts it on the path).
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
from urllib.parse import quote_plus

from fuzzing import Hang, fuzz_settings, no_hang  # noqa: F401  (one set of fuzz guards for the suite)
from hypothesis import strategies as st

__all__ = ["fuzz_settings", "no_hang", "Hang", "CODECS", "compress", "jsonl_lines", "yfcc_lines", "tags_lines",
           "read_records", "SKIPS"]

SKIPS = {"bad_record", "bad_encoding", "video", "missing", "not_in_subset", "empty_file"}


# ---- codecs --------------------------------------------------------------------------------------------
def _zstd(data: bytes, checksum: bool) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(write_checksum=checksum).compress(data)


CODECS = {  # name -> (file suffix, compress one stream, whether every damage is detectable)
    "gz": (".gz", gzip.compress, True),
    "bz2": (".bz2", bz2.compress, True),
    "xz": (".xz", lzma.compress, True),
    "zst": (".zst", lambda d: _zstd(d, True), True),
    "zst-nocheck": (".zst", lambda d: _zstd(d, False), False),  # python-zstandard's default: no checksum
}


def compress(codec: str, data: bytes, splits=()) -> bytes:
    """data as one stream, or several back to back cut at the given fractions."""
    fn = CODECS[codec][1]
    cuts = sorted({int(f * len(data)) for f in splits} | {0, len(data)})
    return b"".join(fn(data[a:b]) for a, b in zip(cuts, cuts[1:])) or fn(b"")


# ---- lines ---------------------------------------------------------------------------------------------
def _no_breaks(b: bytes) -> bytes:
    return b.replace(b"\n", b" ").replace(b"\r", b" ")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)
_tag_text = st.text(max_size=10) | st.sampled_from(["#dog", "#d\\udcffog", "brown bear", "café", "#"])
_image = st.sampled_from(["a.jpg", "dir/b.png", "../x.jpg", "/abs.jpg", "", "a\\u0000.jpg", "c\\udcff.jpg"]) | \
    st.text(max_size=12)


@st.composite
def _jsonl_line(draw) -> bytes:
    kind = draw(st.sampled_from(["record", "record", "value", "deep", "bigint", "bytes", "mutated"]))
    if kind == "deep":
        k = draw(st.integers(1, 4000))
        return (b"[" * k + b"]" * draw(st.integers(0, k))) if draw(st.booleans()) else \
            b'{"image": "a.jpg", "tags": ["#dog"], "x": ' + b"[" * k + b"]" * k + b"}"
    if kind == "bigint":
        return b'{"image": "a.jpg", "tags": ["#dog"], "n": ' + b"9" * draw(st.integers(4000, 6000)) + b"}"
    if kind == "bytes":
        return _no_breaks(draw(st.binary(max_size=120)))
    if kind == "value":
        return _no_breaks(json.dumps(draw(_json_values), ensure_ascii=draw(st.booleans())).encode())
    obj = {"image": draw(_image), "tags": draw(st.lists(_tag_text, max_size=5))}
    if draw(st.booleans()):
        obj = {draw(st.sampled_from(["image", "tags", "extra"])): draw(_json_values), **obj}
    text = json.dumps(obj, ensure_ascii=draw(st.booleans())).replace("\\\\u", "\\u").encode("utf-8", "surrogatepass")
    if kind == "mutated":  # raw bytes put in at a few places: invalid UTF-8, NUL, quotes, brackets
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b'"', b"]", b"{", b"\xed\xa0\x80"])) \
                + text[at + draw(st.integers(0, 2)):]
    return _no_breaks(text)


_pct = st.sampled_from(["%FF", "%C3", "%C3%A9", "%23", "%2C", "%E9", "%ED%A0%80", "%", "%G1", "+"])


@st.composite
def _yfcc_text(draw) -> bytes:
    raw = st.binary(max_size=3).map(lambda b: b.decode("utf-8", "surrogateescape"))  # maybe not UTF-8
    parts = draw(st.lists(st.one_of(st.text(max_size=6).map(lambda t: quote_plus(t, safe="")), _pct, raw),
                          max_size=5))
    return "".join(parts).encode("utf-8", "surrogateescape")


@st.composite
def _yfcc_line(draw) -> bytes:
    pid = draw(st.sampled_from([b"6985418911", b"0", b"99999999999999999999", b"12a", b"", b"\xff1"]) |
               st.integers(0, 10**12).map(lambda i: str(i).encode()))
    h = draw(st.sampled_from([b"d29e7c6a3028418c64eb15e3cf577c2", b"", b"../../x", b"ab cd", b"\xff"]))
    tags = b",".join(draw(st.lists(_yfcc_text(), max_size=4)))
    core = [pid, b"12345@N00", b"nick", b"2012-04-29 12:49:23.0", b"1335749363", b"Canon", draw(_yfcc_text()),
            draw(_yfcc_text()), tags, b"", b"-152.3", b"58.1", b"12", b"http://page", b"http://farm1/1_a.jpg",
            b"licence", b"http://lic", b"7100", b"8", b"secret", b"orig",
            draw(st.sampled_from([b"jpg", b"png", b"", b"../x", b"j\xffg"])),
            draw(st.sampled_from([b"0", b"1", b"2", b"", b" 1", b"0\x00"]))]
    form = draw(st.sampled_from(["23", "24", "24n", "25"]))
    fields = {"23": core, "24": [pid, h] + core[1:], "24n": [b"7"] + core, "25": [b"7", pid, h] + core[1:]}[form]
    for _ in range(draw(st.integers(0, 2))):  # a field lost or split, bytes put in
        op = draw(st.sampled_from(["drop", "split", "bytes"]))
        i = draw(st.integers(0, len(fields) - 1))
        if op == "drop" and len(fields) > 1:
            fields = fields[:i] + fields[i + 1:]
        elif op == "split":
            fields = fields[:i] + [b"x", b"y"] + fields[i + 1:]
        else:
            fields[i] = fields[i] + draw(st.binary(min_size=1, max_size=4))
    return _no_breaks(b"\t".join(fields))


jsonl_lines = _jsonl_line
yfcc_lines = _yfcc_line
tags_lines = st.lists(st.one_of(_jsonl_line(), _yfcc_line(), st.sampled_from([b"", b"   ", b"\x0c"])),
                      min_size=1, max_size=30)


def read_records(path, images=".", lookup: bool = True, yfcc=None):
    """[(n, record)] of one TAGS file through the build's Source (blocks of 7 lines: several blocks)."""
    from wslfast.data.sources import TagFiles

    src = TagFiles([str(path)], images, lookup=lookup, block_lines=7, yfcc=yfcc)
    return [(n, r) for b in src.blocks(0) for n, r in src.records(b)]
