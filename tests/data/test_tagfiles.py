import json

import pytest

from wslfast.data.sources import detect_format, read_tags


def test_yfcc_with_encoded_tags(tmp_path, yfcc_row):
    _yfcc_row = yfcc_row
    img = tmp_path / "img"
    (img / "abc" / "def").mkdir(parents=True)
    (img / "101.jpg").write_bytes(b"x")
    (img / "abc" / "def" / "abcdef99.jpg").write_bytes(b"x")
    rows = [_yfcc_row("101", "ffff00", "brown+bear,%23dog,caf%C3%A9,new+york+city"),
            _yfcc_row("102", "abcdef99", "sunset", line_number=False),
            _yfcc_row("103", "000000", "cat", marker="1"),
            _yfcc_row("104", "111111", "tree"),
            _yfcc_row("105", "222222", "")]
    tags = tmp_path / "yfcc.tsv"
    tags.write_text("\n".join(rows) + "\n")
    fmt, recs = read_tags(tags, img)
    assert fmt == "yfcc"
    assert recs[0].image == "101.jpg" and recs[0].tags == ["brown bear", "#dog", "café", "new york city"]
    assert recs[1].image == "abc/def/abcdef99.jpg" and recs[1].tags == ["sunset"]
    assert recs[2].skip == "video"
    assert recs[3].skip == "missing" and recs[3].image is None
    assert recs[4].tags == [] and recs[4].skip == "missing"


def test_jsonl_and_bad_records(tmp_path):
    tags = tmp_path / "t.jsonl"
    lines = [json.dumps({"image": "a/1.jpg", "tags": ["#dog"]}), "", "{not json",
             json.dumps({"image": "../../etc/passwd", "tags": ["#x"]}), json.dumps({"image": "/abs.jpg", "tags": []}),
             json.dumps({"image": "b.jpg", "tags": "dog"}), json.dumps({"tags": ["#dog"]})]
    tags.write_text("\n".join(lines))
    fmt, recs = read_tags(tags, tmp_path)
    assert fmt == "jsonl"
    assert recs[0].image == "a/1.jpg" and recs[0].tags == ["#dog"] and recs[0].skip is None
    assert [r.skip for r in recs[1:]] == ["bad_record"] * 5


def test_unknown_and_empty_formats(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        detect_format(tmp_path / "e.txt")
    (tmp_path / "csv.txt").write_text("a,b,c\n")
    with pytest.raises(ValueError, match="JSONL"):
        detect_format(tmp_path / "csv.txt")
