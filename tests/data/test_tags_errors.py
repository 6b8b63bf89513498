"""Every TAGS input error is counted or named in one line (issue 18 item 3): a line that cannot be parsed is a
`bad_record`, invalid UTF-8 a `bad_encoding`, an empty file an `empty_file`, and a damaged compressed file
(any codec, cut or corrupt) stops with the file and the line. Each test here failed on the code before."""
import bz2
import gzip
import json
import lzma
import pickle
from pathlib import Path

import pytest
from PIL import Image

from wslfast.data.__main__ import main
from wslfast.data.build import write_shards
from wslfast.data.format import list_shards
from wslfast.data.sources import TagFiles, count_tags, expand_inputs, read_tags
from wslfast.errors import DataError


def _records(path, images="."):
    src = TagFiles(expand_inputs(path), images, lookup=False)
    return [(n, r) for fi in range(len(src.paths)) for b in src.blocks(fi) for n, r in src.records(b)]


def _lines(n):
    return "".join(json.dumps({"image": f"{i}.jpg", "tags": [f"#t{i % 7}", "#dog"]}) + "\n" for i in range(n))


def _zst(data: bytes, **kw) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(**kw).compress(data)


def _error_lines(capsys):
    """The CLI's error lines (stderr also carries the progress bars); a traceback fails the test."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error")]


CODECS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zst}


# ---- lines that cannot be parsed: bad_record, never a traceback ------------------------------------------
@pytest.mark.parametrize("line", [
    "[" * 100_000 + "]" * 100_000,                                  # RecursionError in json before
    '{"image": "a.jpg", "tags": ["#dog"], "n": ' + "9" * 5000 + "}",  # int digit limit: ValueError before
    '{"image": "a.jpg", "tags": ["#dog"], "n": [' * 3000 + "1" + "]}" * 3000,
    "[1, 2, 3]", '"a string"', "17", "null", "true",                 # JSON that is not an object
    '{"image": 5, "tags": ["#dog"]}', '{"image": "a.jpg", "tags": "dog"}', '{"image": "a.jpg", "tags": [1]}',
    '{"image": "a.jpg", "tags": [["#dog"]]}', '{"image": null, "tags": []}', '{"image": "a.jpg"}',
    '{"image": "a\\u0000.jpg", "tags": ["#dog"]}', '{"image": "a.jpg", "tags": ["#d\x00og"]}',
    '{"image": "a.jpg",\x00 "tags": ["#dog"]}', "{" + "x" * 300_000 + "}",
])
def test_unparsable_jsonl_lines_are_bad_records(tmp_path, line):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"image": "ok.jpg", "tags": ["#cat"]}) + "\n" + line + "\n"
                 + json.dumps({"image": "ok2.jpg", "tags": ["#cat"]}) + "\n")
    recs = _records(p)
    assert [n for n, _ in recs] == [1, 2, 3]
    assert [r.skip for _, r in recs] == [None, "bad_record", None]


def test_a_huge_line_does_not_shift_the_line_numbers(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(_lines(2) + '{"image": "x.jpg", "tags": ["' + "a" * 2_000_000 + '"]}\n' + _lines(3))
    recs = _records(p)
    assert [n for n, _ in recs] == [1, 2, 3, 4, 5, 6]
    assert [r.skip for _, r in recs] == [None, None, "bad_record", None, None, None]


# ---- invalid UTF-8: counted, never repaired into a label ------------------------------------------------
def test_invalid_utf8_is_counted_not_repaired(tmp_path, vocab):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"image": "a.jpg", "tags": ["#d\xffog"]}\n'       # was read as "#d\ufffdog" -> label "dog"
                  b'{"image": "b\xfe.jpg", "tags": ["#dog"]}\n'
                  b'{"image": "c.jpg", "tags": ["#dog"], "note": "caf\xe9"}\n'  # a field nobody reads: fine
                  b'{"image": "d.jpg", "tags": ["#d\\udcffog"]}\n'   # an escaped lone surrogate
                  + '{"image": "e.jpg", "tags": ["#café"]}\n'.encode())
    recs = _records(p)
    assert [r.skip for _, r in recs] == ["bad_encoding", "bad_encoding", None, "bad_encoding", None]
    assert recs[4][1].tags == ["#café"]
    assert count_tags(str(p), tmp_path) == {"#dog": 1, "#café": 1}


def test_invalid_utf8_in_a_yfcc_tag_is_counted(tmp_path, yfcc_row):
    p = tmp_path / "y.tsv"
    p.write_bytes((yfcc_row("1", "aa", "d%FFog,cat") + "\n" + yfcc_row("2", "bb", "dog") + "\n").encode()
                  + yfcc_row("3", "cc", "dog").encode().replace(b"dog", b"d\xffog") + b"\n")
    assert [r.skip for _, r in _records(p)] == ["bad_encoding", None, "bad_encoding"]


# ---- empty files: skipped and counted, never block the run ---------------------------------------------
@pytest.mark.parametrize("ext", ["", ".gz", ".bz2", ".xz", ".zst"])
def test_an_empty_file_among_others_is_skipped_and_counted(corpus, vocab, tmp_path, ext):
    empty = tmp_path / f"empty.jsonl{ext}"
    empty.write_bytes(CODECS[ext](b"") if ext else b"")
    (tmp_path / "blank.jsonl").write_text("\n \n\n")
    one = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "one", shard_size=64)
    m = write_shards(corpus["images"], [str(empty), str(tmp_path / "blank.jsonl"), corpus["tags"]], vocab,
                     tmp_path / "out", shard_size=64)
    assert m["skipped"]["empty_file"] == 2 and m["num_images"] == one["num_images"]
    assert m["tags_format"] == "jsonl" and m["name"] == one["name"]
    assert count_tags([str(empty), corpus["tags"]], corpus["images"]) == count_tags(corpus["tags"], corpus["images"])


def test_only_empty_files_say_so_in_one_line(vocab, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "e.jsonl").write_text("")
    vocab.save(tmp_path / "v.json")
    assert main(["shards", "--images", str(tmp_path / "img"), "--tags", str(tmp_path / "e.jsonl"), "--vocab",
                 str(tmp_path / "v.json"), "--out", str(tmp_path / "o")]) == 1
    err = _error_lines(capsys)
    assert len(err) == 1 and "no usable image" in err[0] and "'empty_file': 1" in err[0]


# ---- damaged compressed files: the file and the line, in one line ---------------------------------------
def _expect_damaged(path, n_lines):
    with pytest.raises(DataError) as e:
        _records(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "line" in msg, msg
    return msg


@pytest.mark.parametrize("ext", list(CODECS))
def test_a_truncated_file_is_named_not_read_short(tmp_path, ext):
    data = _lines(10_000).encode()
    packed = CODECS[ext](data)
    p = tmp_path / f"t.jsonl{ext}"
    p.write_bytes(packed[: len(packed) // 2])   # .zst: 4,968 of 10,000 records and exit 0 before
    _expect_damaged(p, 10_000)


@pytest.mark.parametrize("ext", list(CODECS))
def test_corrupt_data_is_named(tmp_path, ext):
    data = _lines(3_000).encode()
    packed = bytearray(CODECS[ext](data, **({"write_checksum": True} if ext == ".zst" else {})))
    for i in range(len(packed) // 3, len(packed) // 3 + 40):   # a run of damaged bytes mid-stream
        packed[i] ^= 0x5A
    p = tmp_path / f"t.jsonl{ext}"
    p.write_bytes(bytes(packed))   # .gz raised zlib.error, .zst ZstdError: tracebacks before
    _expect_damaged(p, 3_000)


def test_a_corrupt_single_block_bz2_is_reported_as_damaged(tmp_path, yfcc_row):
    data = ("\n".join(yfcc_row(str(i), f"{i:x}", "dog,cat") for i in range(200)) + "\n").encode()
    packed = bytearray(bz2.compress(data))
    packed[len(packed) // 2] ^= 0x10
    p = tmp_path / "yfcc100m_dataset-0.bz2"
    p.write_bytes(bytes(packed))
    msg = _expect_damaged(p, 200)
    assert "tab-separated fields" not in msg and "damaged" in msg


@pytest.mark.parametrize("ext", [".gz", ".bz2", ".xz", ".zst"])
def test_garbage_after_the_last_stream_is_named(tmp_path, ext):
    """A second stream that is not one (or junk appended) used to be dropped in silence for .bz2 / .xz."""
    data = _lines(50).encode()
    p = tmp_path / f"t.jsonl{ext}"
    p.write_bytes(CODECS[ext](data) + b"this is not a compressed stream")
    _expect_damaged(p, 50)
    # zero padding after the last stream (tape blocks, some tools) is no damage
    p.write_bytes(CODECS[ext](data[:1000]) + CODECS[ext](data[1000:]) + b"\0" * 512)
    assert len(_records(p)) == 50


def test_damaged_input_is_one_cli_line_and_nothing_is_written(corpus, vocab, tmp_path, capsys):
    import zstandard

    packed = zstandard.ZstdCompressor().compress(Path(corpus["tags"]).read_bytes())
    (tmp_path / "t.jsonl.zst").write_bytes(packed[:-7])
    vocab.save(tmp_path / "v.json")
    for argv in (["vocab", "--tags", str(tmp_path / "t.jsonl.zst"), "--out", str(tmp_path / "v2.json")],
                 ["shards", "--images", str(corpus["images"]), "--tags", str(tmp_path / "t.jsonl.zst"),
                  "--vocab", str(tmp_path / "v.json"), "--out", str(tmp_path / "o")]):
        assert main(argv) == 1
        err = _error_lines(capsys)
        assert len(err) == 1 and "t.jsonl.zst" in err[0] and "line" in err[0]
    assert not list_shards(tmp_path / "o") and not (tmp_path / "v2.json").exists()


def test_not_a_regular_file_is_named(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(DataError, match="not a regular file"):
        expand_inputs(str(tmp_path / "fifo.jsonl"))


def test_errors_cross_process_boundaries_as_they_are(tmp_path):
    """The build's workers raise wslfast.errors classes; they pickle, message and type intact."""
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(gzip.compress(_lines(100).encode())[:-9])
    with pytest.raises(DataError) as e:
        _records(p)
    back = pickle.loads(pickle.dumps(e.value))
    assert type(back) is DataError and str(back) == str(e.value)


def test_read_tags_still_reads_good_files(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "0.jpg")
    (tmp_path / "t.jsonl.xz").write_bytes(lzma.compress(_lines(3).encode()))
    fmt, recs = read_tags(tmp_path / "t.jsonl.xz", tmp_path)
    assert fmt == "jsonl" and [r.image for r in recs] == ["0.jpg", "1.jpg", "2.jpg"]
