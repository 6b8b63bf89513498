"""The sources interface (wslfast.data.sources): TAGS files cut into blocks and numbered, and a new kind of
input implemented against the interface alone going through the build to the same shards."""
import json
import pickle
from pathlib import Path

import pytest

from wslfast.data.build import write_shards
from wslfast.data.format import list_shards
from wslfast.data.sources import BLOCK_LINES, Block, Record, Source, TagFiles, count_tags, expand_inputs, record_key


def test_tag_files_blocks_and_record_numbers(tmp_path):
    lines = [json.dumps({"image": f"{i}.jpg", "tags": [f"#t{i}"]}) if i % 4 else "" for i in range(10)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    src = TagFiles(expand_inputs(tmp_path / "a.jsonl"), tmp_path, block_lines=3)
    assert isinstance(src, Source)
    blocks = list(src.blocks(0))
    assert [(b.file_no, b.block_no, b.kind, len(b.items)) for b in blocks] == [(0, 0, "jsonl", 3), (0, 1, "jsonl", 3),
                                                                              (0, 2, "jsonl", 3), (0, 3, "jsonl", 1)]
    assert pickle.loads(pickle.dumps(blocks[1])) == blocks[1]
    got = [(n, r.image) for b in blocks for n, r in src.records(b)]
    # blank lines give no record but keep their number: record n is line n of the file
    assert got == [(i + 1, f"{i}.jpg") for i in range(10) if i % 4]
    assert BLOCK_LINES == 4096 and TagFiles([], tmp_path).block_lines == BLOCK_LINES


def test_record_keys_depend_on_file_and_line_only():
    assert record_key(0, 1) == record_key(0, 1) != record_key(1, 1) != record_key(0, 2)
    assert 0 <= record_key(3, 4096) < 1 << 64


def test_count_tags_streams_and_skips_what_the_build_skips(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"image": "a.jpg", "tags": ["#dog", "#cat"]}\n{"image": "../x.jpg", '
                                      '"tags": ["#dog"]}\n{"image": "b.jpg", "tags": ["#dog"]}\n')
    assert count_tags(str(tmp_path / "t.jsonl"), tmp_path) == {"#dog": 2, "#cat": 1}
    (tmp_path / "empty.jsonl").write_text("\n\n")  # an empty input is skipped and counted, never an error
    skipped = {}
    assert count_tags([str(tmp_path / "empty.jsonl"), str(tmp_path / "t.jsonl")], tmp_path, skipped) == \
        {"#dog": 2, "#cat": 1}
    assert skipped == {"empty_file": 1, "bad_record": 1}


class CsvTags:
    """A new kind of input written against the interface alone: `image,tag tag ...` a line."""

    def __init__(self, path, block_lines=BLOCK_LINES):
        self.paths, self.block_lines = [str(path)], block_lines

    def blocks(self, file_no):
        with open(self.paths[file_no], encoding="utf-8") as f:
            lines = f.read().splitlines()
        for bi in range(0, len(lines), self.block_lines):
            yield Block(file_no, bi // self.block_lines, "csv", lines[bi:bi + self.block_lines])

    def records(self, block):
        for i, line in enumerate(block.items):
            image, _, tags = line.partition(",")
            yield block.block_no * self.block_lines + i + 1, Record(image, tags.split())


def test_a_new_source_writes_the_same_shards(corpus, vocab, tmp_path):
    """The same records through a CSV Source and through the JSONL TAGS file: the same shard bytes (record
    keys are (input, line), labels and .json the same), only the manifest's tags_format differs."""
    rows = [json.loads(line) for line in Path(corpus["tags"]).read_text().splitlines()]
    assert all(" " not in t and "," not in r["image"] for r in rows for t in r["tags"])
    (tmp_path / "tags.csv").write_text("".join(f"{r['image']},{' '.join(r['tags'])}\n" for r in rows))
    a = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "jsonl", shard_size=64, seed=3,
                     sampling="sqrt", label_noise=0.1)
    b = write_shards(corpus["images"], CsvTags(tmp_path / "tags.csv", block_lines=100), vocab, tmp_path / "csv",
                     shard_size=64, seed=3, sampling="sqrt", label_noise=0.1)
    assert a["tags_format"] == "jsonl" and b["tags_format"] == "csv" and b["tags"] == [str(tmp_path / "tags.csv")]
    assert {k: v for k, v in a.items() if k not in ("tags_format", "tags", "fingerprint", "shards_dir")} == \
        {k: v for k, v in b.items() if k not in ("tags_format", "tags", "fingerprint", "shards_dir")}
    ta, tb = list_shards(tmp_path / "jsonl"), list_shards(tmp_path / "csv")
    assert len(ta) == len(tb) > 1
    assert [Path(p).read_bytes() for p in ta] == [Path(p).read_bytes() for p in tb]


def test_member_ref_reads_its_byte_range_and_names_a_truncated_input(tmp_path):
    from wslfast.data.sources import MemberRef, read_member

    p = tmp_path / "00000.tar"
    p.write_bytes(bytes(range(256)) * 4)
    ref = MemberRef(str(p), 300, 17, "a.jpg")
    assert read_member(ref) == (bytes(range(256)) * 4)[300:317]
    assert MemberRef.from_list(ref.to_list()) == ref
    with pytest.raises(OSError, match="a.jpg: truncated"):
        read_member(MemberRef(str(p), 1020, 17, "a.jpg"))
    with pytest.raises(ValueError, match="above the limit"):
        read_member(ref, max_bytes=16)


def test_member_ref_reads_through_fsspec(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    from wslfast.data.sources import MemberRef, read_member

    with fsspec.open("memory://bucket/00001.tar", "wb") as f:
        f.write(b"header" + b"JPEGDATA" + b"tail")
    assert read_member(MemberRef("memory://bucket/00001.tar", 6, 8, "k.jpg")) == b"JPEGDATA"
