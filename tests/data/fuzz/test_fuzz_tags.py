"""Fuzz: generated bad TAGS lines (JSONL and YFCC100M) and compressed TAGS files cut at random points, with
flipped bytes or junk appended, for every codec. Each example asserts: no exception escapes but a one-line
DataError naming the file (and the line, for damage), no hang, and every line counted: each non-blank line
is one record (usable, or skipped with a known reason) under its own line number, and nothing a record
carries holds bytes that were not UTF-8. Seeded and bounded (tagfuzz.fuzz_settings): ~25 s on 2 cores.
"""
import hashlib
import io

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tagfuzz import CODECS, SKIPS, compress, fuzz_settings, no_hang, read_records, tags_lines
from wslfast.data.__main__ import main
from wslfast.data.sources import IdIndex, YfccOptions
from wslfast.data.sources import tagfiles as T
from wslfast.errors import DataError

FIRST = {"jsonl": b'{"image": "first.jpg", "tags": ["#dog"]}',
         "yfcc": b"\t".join([b"1"] + [b"x"] * 7 + [b"dog"] + [b""] * 12 + [b"jpg", b"0"])}  # 23 fields


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("tagfuzz")
    (d / "images").mkdir()
    (d / "images" / "first.jpg").write_bytes(b"not looked at here")
    (d / "subset.tsv").write_text("1\n6985418911\n7\n")
    return d


def _lines_of(data: bytes) -> list[str]:
    """The lines of a file as a UTF-8 text reader with universal newlines sees them (a BOM dropped, bytes
    that are not UTF-8 kept as surrogates): what 'line n' means."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape").readlines()


def _clean(s) -> bool:
    """Strictly UTF-8 and no NUL: what a label, a path or a caption may hold."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in s


def _check(recs, data: bytes):
    want = [i + 1 for i, line in enumerate(_lines_of(data)) if line.strip()]
    assert [n for n, _ in recs] == want  # every non-blank line, once, under its number
    for _, r in recs:
        assert r.skip in SKIPS or (r.skip is None and isinstance(r.image, (str, type(None))))
        if r.skip in ("bad_record", "bad_encoding"):
            continue
        assert all(isinstance(t, str) and _clean(t) for t in r.tags), r.tags
        assert r.image is None or _clean(r.image)
        assert _clean(r.meta.get("text", "")) and _clean(r.meta.get("yfcc_id", ""))


@fuzz_settings(200)
@given(fmt=st.sampled_from(["jsonl", "yfcc"]), lines=tags_lines, long_lines=st.booleans(),
       text=st.sampled_from([("tags",), ("tags", "title", "description"), ("description",)]),
       subset=st.booleans())
def test_bad_lines_are_counted(work, monkeypatch, fmt, lines, long_lines, text, subset):
    data = b"\n".join([FIRST[fmt]] + lines) + b"\n"
    path = work / "t.tsv"
    path.write_bytes(data)
    opts = YfccOptions(text=text, subset=IdIndex(work / "subset.tsv").build() if subset else None)
    with monkeypatch.context() as m:
        if long_lines:  # lines over the limit: read through, one bad_record each
            m.setattr(T, "MAX_LINE_CHARS", 64)
        with no_hang():
            recs = read_records(path, work / "images", yfcc=opts)
    _check(recs, data)
    for _, r in recs[1:]:
        event(f"{fmt}: {r.skip or 'usable'}")
    assert recs[0][1].skip in (None, "missing", "not_in_subset") and recs[0][1].tags in (["#dog"], ["dog"], [])


@fuzz_settings(100)
@given(lines=tags_lines)
def test_a_file_of_bad_lines_is_counted_or_named(work, lines):
    """No fixed first line: the first non-blank line decides the format, or the file is named."""
    path = work / "u.tsv"
    data = b"\n".join(lines)
    path.write_bytes(data)
    try:
        with no_hang():
            recs = read_records(path, work / "images")
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg and "TAGS must be JSONL" in msg
        first = next(line for line in _lines_of(data) if line.strip())
        assert not first.lstrip().startswith("{")
        return
    if not any(line.strip() for line in _lines_of(data)):
        assert [r.skip for _, r in recs] == ["empty_file"]
    else:
        _check(recs, data)


def _good_lines(n, seed):
    return [b'{"image": "%d.jpg", "tags": ["#t%d", "#dog"]}' % (seed + i, i % 5) for i in range(n)]


_mutation = st.one_of(
    st.tuples(st.just("cut"), st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("junk"), st.binary(min_size=1, max_size=40)))


@fuzz_settings(250)
@given(codec=st.sampled_from(sorted(CODECS)), n=st.integers(1, 400), seed=st.integers(0, 10**6),
       splits=st.lists(st.floats(0.05, 0.95), max_size=2), mutation=_mutation)
def test_damaged_compressed_files_are_named(work, codec, n, seed, splits, mutation):
    suffix, _, checked = CODECS[codec]
    lines = _good_lines(n, seed)
    data = b"\n".join(lines) + b"\n"
    kind, arg = mutation
    packed = compress(codec, data, () if kind == "cut" else splits)  # a cut between streams is a shorter file
    if kind == "cut":
        bad = packed[:max(1, int(arg * len(packed)))]
    elif kind == "flip":
        buf = bytearray(packed)
        for frac, mask in arg:
            buf[int(frac * len(buf))] ^= mask
        bad = bytes(buf)
    else:
        bad = packed + arg
    path = work / f"c.jsonl{suffix}"
    path.write_bytes(bad)
    try:
        with no_hang():
            recs = read_records(path, work / "images")
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg and "line" in msg
        event(f"{codec} {kind}: named")
        return
    event(f"{codec} {kind}: read")
    assert kind != "cut"  # a single stream cut anywhere is always seen
    if kind == "junk":
        assert not arg.strip(b"\0")  # only NUL padding passes
    if checked or kind == "junk":  # nothing was lost or changed: every line as written
        assert [(n, r.image, r.tags) for n, r in recs] == [(i + 1, f"{seed + i}.jpg", [f"#t{i % 5}", "#dog"])
                                                          for i in range(n)]
    else:  # zstd without a checksum cannot see every change: each line is still counted
        import zstandard

        try:
            out = b"".join(_frames(zstandard, bad))
        except zstandard.ZstdError:
            return
        _check(recs, out)


def _frames(zstandard, data):
    while data.strip(b"\0"):
        d = zstandard.ZstdDecompressor().decompressobj()
        yield d.decompress(data)
        data = d.unused_data


@fuzz_settings(12)
@given(codec=st.sampled_from(["gz", "bz2", "xz", "zst"]), cut=st.floats(0.1, 0.9))
def test_the_cli_says_one_line(work, wordnet, capsys, codec, cut):
    suffix = CODECS[codec][0]
    data = b"\n".join(_good_lines(300, 0)) + b"\n"
    packed = compress(codec, data)
    path = work / f"cli{hashlib.md5(packed).hexdigest()[:6]}.jsonl{suffix}"
    path.write_bytes(packed[:int(cut * len(packed))])
    capsys.readouterr()
    with no_hang(60):
        rc = main(["vocab", "--tags", str(path), "--out", str(work / "v.json")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert rc == 1 and "Traceback" not in err and len(lines) == 1 and str(path) in lines[0]
