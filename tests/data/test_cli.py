import json

import pytest

from wslfast.data.__main__ import main


@pytest.mark.slow
def test_end_to_end(wordnet, tmp_path, capsys):
    root = tmp_path / "demo"
    assert main(["synthetic", "--out", str(root), "--num-images", "60", "--image-size", "32"]) == 0
    assert main(["vocab", "--counts", str(root / "counts.tsv"), "--wordnet-nouns", "--min-count", "2",
                 "--out", str(tmp_path / "v.json")]) == 0
    assert main(["vocab", "--tags", str(root / "tags.jsonl"), "--top", "5", "--out", str(tmp_path / "v5.json")]) == 0
    assert len(json.loads((tmp_path / "v5.json").read_text())["synsets"]) == 5
    assert main(["shards", "--images", str(root / "images"), "--tags", str(root / "tags.jsonl"), "--vocab",
                 str(tmp_path / "v.json"), "--out", str(tmp_path / "s"), "--shard-size", "25", "--sampling",
                 "uniform", "--label-noise", "0.1", "--seed", "2", "--name", "train-demo-60-x"]) == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["name"] == "train-demo-60-x" and m["sampling"] == "uniform" and m["seed"] == 2
    assert main(["setup-wordnet"]) == 0
    assert "WordNet 3.0" in capsys.readouterr().out


def test_imagenet1k_vocab(wordnet, tmp_path):
    assert main(["vocab", "--imagenet1k", "--out", str(tmp_path / "in1k.json")]) == 0
    assert len(json.loads((tmp_path / "in1k.json").read_text())["synsets"]) == 1000


def test_errors_are_reported(tmp_path, capsys):
    (tmp_path / "c.tsv").write_text("dog 3\n")
    assert main(["vocab", "--counts", str(tmp_path / "c.tsv"), "--out", str(tmp_path / "v.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'c.tsv'}:1: expected 'hashtag<TAB>count', got 'dog 3'"]
    assert main(["shards", "--images", str(tmp_path / "no"), "--tags", str(tmp_path / "c.tsv"), "--vocab",
                 str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bogus"])


def test_demo_is_built_once_and_reused(wordnet, tmp_path, monkeypatch):
    from wslfast.data import demo, synthetic

    info = demo.prepare_demo(tmp_path, num_images=80, image_size=32, min_count=2, shard_size=30)
    assert info["num_classes"] >= 10 and info["name"].startswith("train-demo-")
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["num_samples"] == info["num_samples"]
    monkeypatch.setattr(synthetic, "make_synthetic_corpus", lambda *a, **k: pytest.fail("rebuilt"))
    assert demo.prepare_demo(tmp_path, num_images=80, image_size=32, min_count=2, shard_size=30) == info
    monkeypatch.undo()
    assert main(["demo", "--out", str(tmp_path / "cli"), "--num-images", "40", "--image-size", "32"]) == 0


def test_demo_without_wordnet_uses_the_concept_vocabulary(tmp_path, monkeypatch):
    from wslfast.data import demo
    from wslfast.data.labels import HashtagVocabulary
    from wslfast.errors import WordNetMissingError

    def missing(*a, **k):
        raise WordNetMissingError("WordNet 3.0 not found")

    monkeypatch.setattr(HashtagVocabulary, "from_counts", missing)
    with pytest.warns(UserWarning, match="built-in vocabulary"):
        info = demo.prepare_demo(tmp_path, num_images=40, image_size=32, shard_size=20)
    assert info["num_classes"] == 24
    assert HashtagVocabulary.load(info["vocab"]).source == "synthetic-concepts"


@pytest.mark.parametrize("text", ["dog\t3\n", '{"synsets": 5}'])
def test_vocabulary_that_is_not_ours_is_named(tmp_path, capsys, text):
    (tmp_path / "images").mkdir()
    (tmp_path / "tags.jsonl").write_text('{"image": "a.jpg", "tags": ["dog"]}\n')
    bad = tmp_path / "vocab.json"
    bad.write_text(text)
    assert main(["shards", "--images", str(tmp_path / "images"), "--tags", str(tmp_path / "tags.jsonl"),
                 "--vocab", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: vocabulary") and str(bad) in err[0]
