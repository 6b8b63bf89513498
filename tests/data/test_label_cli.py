"""`python -m wslfast.data label`: a file, stdin, JSONL fields, vocabulary ids, details, bad lines counted."""
import io
import json
import subprocess
import sys

import pytest

from wslfast.data.__main__ import main


def _run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def test_captions_from_a_file(wordnet, tmp_path, capsys):
    f = tmp_path / "c.txt"
    f.write_bytes(b"a crane wading through the marsh\nphoto of a kid on a bike\n\xff\xfe broken\n\nfish tank\n")
    rc, recs, err = _run(["label", "--kind", "caption", str(f)], capsys)
    assert rc == 0 and len(recs) == 5  # one object per input line, in order
    assert recs[0] == {"text": "a crane wading through the marsh", "synsets": ["crane.n.05", "marsh.n.01"]}
    assert recs[1]["synsets"] == ["child.n.01", "bicycle.n.01"]  # photo: meta, on purpose
    assert recs[2]["line"] == 3 and "UTF-8" in recs[2]["error"] and recs[2]["synsets"] == []
    assert recs[3] == {"text": "", "synsets": []}
    assert recs[4]["synsets"] == ["aquarium.n.01"]
    assert "5 lines, 1 bad" in err and "line 3" in err


def test_tags_from_stdin_in_three_layouts(wordnet, capsys, monkeypatch):
    data = b'#kitty #cat #cute\n["crane", "bird"]\nbass, fishing,lake\n[1, 2]\n["unclosed"\n'
    rc, recs, err = _run(["label", "--kind", "tags", "-"], capsys, data, monkeypatch)
    assert rc == 0 and len(recs) == 5
    assert recs[0]["text"] == ["#kitty", "#cat", "#cute"] and recs[0]["synsets"][0] in ("kitten.n.01", "kitty.n.04")
    assert recs[1]["synsets"] == ["crane.n.05", "bird.n.01"]
    assert recs[2]["text"] == ["bass", "fishing", "lake"] and recs[2]["synsets"][0] == "bass.n.08"
    assert "not a list of strings" in recs[3]["error"] and "not a JSON list" in recs[4]["error"]
    assert "5 lines, 2 bad" in err


def test_jsonl_fields_vocab_and_details(wordnet, tmp_path, capsys):
    from wslfast.data.labels.vocabulary import caption_vocabulary

    vocab = caption_vocabulary({"crane.n.05": 4, "marsh.n.01": 2, "bicycle.n.01": 1})
    vocab.save(tmp_path / "v.json")
    f = tmp_path / "d.jsonl"
    f.write_text('{"caption": "a crane in the marsh", "tags": ["#bike"]}\n{"text": "no caption field"}\n'
                 '["a list"]\n{"caption": 7}\n')
    rc, recs, err = _run(["label", "--kind", "caption", str(f), "--text-field", "caption", "--vocab",
                          str(tmp_path / "v.json"), "--details"], capsys)
    assert rc == 0
    assert recs[0]["synsets"] == ["crane.n.05", "marsh.n.01"] and recs[0]["labels"] == [0, 1]
    assert [u["span"] for u in recs[0]["units"]] == ["crane", "marsh"]
    assert "no field 'caption'" in recs[1]["error"] and "not a JSON object" in recs[2]["error"]
    assert "not a string" in recs[3]["error"] and "4 lines, 3 bad" in err
    rc, recs, _ = _run(["label", "--kind", "tags", str(f), "--tags-field", "tags", "--vocab",
                        str(tmp_path / "v.json")], capsys)
    assert recs[0]["synsets"] == ["bicycle.n.01"] and recs[0]["labels"] == [2]


def test_count_stats_two_passes(wordnet, tmp_path, capsys):
    f = tmp_path / "c.txt"
    f.write_text("heron wading in the marsh\n" * 20 + "a crane in the marsh\n")
    rc, recs, _ = _run(["label", "--kind", "caption", str(f), "--count-stats", "--save-stats",
                        str(tmp_path / "s.json")], capsys)
    assert rc == 0 and len(recs) == 21 and recs[-1]["synsets"][0] == "crane.n.05"
    assert json.loads((tmp_path / "s.json").read_text())["texts"] == 21
    rc, recs2, _ = _run(["label", "--kind", "caption", str(f), "--stats", str(tmp_path / "s.json")], capsys)
    assert recs2 == recs


def test_user_errors_are_one_line(wordnet, tmp_path, capsys):
    rc, _, err = _run(["label", "--kind", "caption", "-", "--count-stats"], capsys)
    assert rc == 1 and "stdin" in err
    rc, _, err = _run(["label", "--kind", "caption", str(tmp_path / "missing.txt")], capsys)
    assert rc == 1 and err.startswith("error:") and "missing.txt" in err
    (tmp_path / "v.json").write_text("not json")
    rc, _, err = _run(["label", "--kind", "caption", str(tmp_path / "v.json"), "--vocab", str(tmp_path / "v.json")],
                      capsys)
    assert rc == 1 and "not a JSON vocabulary" in err
    with pytest.raises(SystemExit):
        main(["label", "--kind", "words", "x"])


def test_real_stdin_subprocess(wordnet, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wslfast.data", "label", "--kind", "caption", "-"],
                          input=b"baseball player swings his bat during the game\nplane over the clouds\n", capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert "bat.n.05" in recs[0]["synsets"] and recs[1]["synsets"][0] == "airplane.n.01"
