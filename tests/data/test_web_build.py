"""Web-dataset inputs and caption labels through the build: the README's commands from an img2dataset folder
and from plain webdataset tars to verified shards (also through memory://), what the labels are (the
SenseTagger's, caption or tags), the hashtag path's bytes kept where the tagger agrees, and the engines."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.data import webfixtures as W
from wslfast.data.__main__ import main
from wslfast.data.build import write_shards
from wslfast.data.format import list_shards, read_manifest, verify_shard
from wslfast.data.labels.vocab import HashtagVocabulary
from wslfast.data.sources import WebDataset, expand_urls
from wslfast.errors import ConfigError


def _samples(folder):
    """(json, labels, jpg bytes) of every sample of a shard folder, plain tarfile."""
    out = []
    for f in list_shards(folder):
        with tarfile.open(f) as t:
            m = {x.name: t.extractfile(x).read() for x in t.getmembers()}
        for name in sorted(n for n in m if n.endswith(".json")):
            stem = name[:-5]
            out.append((json.loads(m[name]), np.frombuffer(m[stem + ".labels"], "<i4").tolist(), m[stem + ".jpg"]))
    return out


@pytest.fixture(scope="module")
def tagger_vocab(tmp_path_factory, wordnet):
    """A caption vocabulary of the fixture captions (vocab --webdataset --kind caption), and its tagger."""
    root = tmp_path_factory.mktemp("cc")
    W.write_img2dataset(root / "cc", W.cc_rows(60), number_sample_per_shard=20, failed=[3, 17, 44])
    assert main(["vocab", "--webdataset", str(root / "cc" / "{00000..00002}.tar"), "--kind", "caption",
                 "--min-count", "2", "--out", str(root / "vocab.json")]) == 0
    from wslfast.data.labels.senses import SenseTagger

    vocab = HashtagVocabulary.load(root / "vocab.json")
    return root, vocab, SenseTagger(vocab=vocab)


def test_img2dataset_folder_readme_commands(tagger_vocab, capsys):
    root, vocab, tagger = tagger_vocab
    assert vocab.source == "wordnet-captions" and 10 <= len(vocab) <= 60
    assert "steel.n.01" in vocab.synsets and "sword.n.01" not in vocab.synsets  # "steel bridge over the river"
    assert vocab.counts == sorted(vocab.counts, reverse=True) and min(vocab.counts) >= 2
    out = root / "shards"
    assert main(["shards", "--webdataset", str(root / "cc" / "*.tar"), "--vocab", str(root / "vocab.json"),
                 "--out", str(out), "--shard-size", "16"]) == 0
    m = read_manifest(out)
    assert m["tags_format"] == "img2dataset" and m["records"] == 60 and m["labels_from"] == "caption+tags"
    assert m["skipped"]["not_downloaded"] == 3 and m["name"].startswith("train-web-")
    assert m["num_images"] == 57 - m["skipped"]["out_of_vocabulary"]
    samples = _samples(out)
    assert len(samples) == m["num_samples"] == m["num_images"]
    for f, s in zip(list_shards(out), m["shards"]):
        verify_shard(f, s["num_samples"], full=True)
    rows = W.cc_rows(60)
    for info, labels, jpg in samples:
        i = int(info["key"])  # 20 samples a shard: key = 100 * shard + row
        i = i // 100 * 20 + i % 100
        assert info["text"] == rows[i][1] and info["url"] == rows[i][0]
        assert labels == info["labels"] == tagger.caption_labels(info["text"])  # the SenseTagger's labels
        assert jpg == W.jpeg(i)  # the original JPEG bytes, read from inside the tar


def test_webdataset_tars_with_fields_and_idf_weights(tagger_vocab, tmp_path):
    _, vocab, tagger = tagger_vocab
    caps = W.CAPTIONS
    for t in range(2):
        W.write_webdataset(tmp_path / f"shard-{t}.tar", [
            {"__key__": f"s{t}/{i:04d}", "jpg": W.jpeg(100 * t + i),
             "json": json.dumps({"alt": caps[(i + t) % len(caps)], "hashtags": ["#dog"] if i % 3 == 0 else []})}
            for i in range(12)])
    vpath = tmp_path / "vocab.json"
    vocab.save(vpath)
    out = tmp_path / "out"
    assert main(["shards", "--webdataset", str(tmp_path / "shard-{0..1}.tar"), "--text-field", "alt",
                 "--tags-field", "hashtags", "--vocab", str(vpath), "--out", str(out), "--shard-size", "10",
                 "--target-weights", "idf"]) == 0
    m = read_manifest(out)
    assert m["tags_format"] == "webdataset" and m["records"] == 24 and m["target_weights"] == "idf"
    samples = _samples(out)
    df = np.zeros(len(vocab), dtype=np.int64)
    for info, labels, _ in samples:
        want = list(dict.fromkeys(tagger.caption_labels(info["text"]) + tagger.tag_labels(info["tags"])))
        assert labels == want
        df[labels] += 1
    n = len(samples)
    assert m["image_label_counts"] == df.tolist()
    np.testing.assert_allclose(m["class_weights"], np.where(df > 0, np.log(n / np.maximum(df, 1)), 0.0), atol=1e-6)


def test_memory_filesystem_readme_commands(tagger_vocab, tmp_path):
    import fsspec

    root, vocab, _ = tagger_vocab
    fs = fsspec.filesystem("memory")
    rows = W.cc_rows(30, seed=4)
    W.write_img2dataset("/bucket/cc", rows, number_sample_per_shard=10, fs=fs, failed=[5])
    W.write_img2dataset(tmp_path / "cc", rows, number_sample_per_shard=10, failed=[5])
    try:
        for name, url in (("mem", "memory://bucket/cc/{00000..00002}.tar"), ("local", str(tmp_path / "cc"))):
            assert main(["shards", "--webdataset", url, "--vocab", str(root / "vocab.json"),
                         "--out", str(tmp_path / name), "--shard-size", "8"]) == 0
        mem, local = read_manifest(tmp_path / "mem"), read_manifest(tmp_path / "local")
        assert {k: mem[k] for k in ("num_samples", "skipped", "label_counts", "records")} == \
               {k: local[k] for k in ("num_samples", "skipped", "label_counts", "records")}
        strip = [(i["key"], labels, jpg) for i, labels, jpg in _samples(tmp_path / "mem")]
        assert strip == [(i["key"], labels, jpg) for i, labels, jpg in _samples(tmp_path / "local")]
        assert mem["skipped"]["not_downloaded"] == 1 and mem["tags"][0].startswith("memory://")
    finally:
        fs.rm("/bucket", recursive=True)


def test_broken_inputs_are_counted_in_the_build(tagger_vocab, tmp_path):
    root, vocab, _ = tagger_vocab
    W.write_img2dataset(tmp_path / "cc", W.cc_rows(20), number_sample_per_shard=10)
    good = (tmp_path / "cc" / "00001.tar").read_bytes()
    (tmp_path / "cc" / "00001.tar").write_bytes(good[: len(good) // 2])  # a download cut in the middle
    (tmp_path / "cc" / "00002.tar").write_bytes(b"<html>403 Forbidden</html>")
    W.write_webdataset(tmp_path / "cc" / "00003.tar", [{"__key__": "x", "jpg": b"not a jpeg", "txt": "a dog"}])
    m = write_shards(None, WebDataset(expand_urls(str(tmp_path / "cc"))), vocab, tmp_path / "out", shard_size=10)
    assert m["skipped"]["bad_tar"] == 2 and m["skipped"]["not_image"] == 1
    assert 10 < m["num_images"] + m["skipped"]["out_of_vocabulary"] < 20  # shard 1's samples before the cut


def test_caption_labels_need_a_wordnet_vocabulary(vocab, tmp_path):
    W.write_webdataset(tmp_path / "a.tar", [{"__key__": "k", "jpg": W.jpeg(0), "txt": "a dog"}])
    with pytest.raises(ConfigError, match="caption labels need a vocabulary of WordNet synsets"):
        write_shards(None, WebDataset([str(tmp_path / "a.tar")]), vocab, tmp_path / "out")
    with pytest.raises(ConfigError, match="images folder is needed"):
        write_shards(None, str(tmp_path / "x.jsonl"), vocab, tmp_path / "out")


def test_tag_senses_from_context_and_bytes_kept_where_they_agree(wordnet, tmp_path):
    """--kind tags with a WordNet vocabulary: the tagger's choice among the vocabulary's synsets; where it
    is the plain lookup's, the shards are byte-identical to the lookup's."""
    from wslfast.data.labels.senses import SenseTagger

    images = tmp_path / "img"
    images.mkdir()
    plain = [["#dog", "#beach"], ["#car", "#street"], ["#horse", "#field"], ["#cat", "#sofa"]] * 4
    ambiguous = [["#kitty", "#cat", "#cute"], ["#crane", "#marsh", "#bird"]] * 3
    counts = {}
    for tags in plain + ambiguous:
        for t in tags:
            counts[t] = counts.get(t, 0) + 1
    counts.update({"#kitten": 3, "#pool": 3, "#heron": 2})  # so the vocabulary has both senses of #kitty
    vocab = HashtagVocabulary.from_counts(counts)
    for name, rows in (("plain", plain), ("mixed", plain + ambiguous)):
        lines = []
        for i, tags in enumerate(rows):
            (images / f"{name}{i}.jpg").write_bytes(W.jpeg(i))
            lines.append(json.dumps({"image": f"{name}{i}.jpg", "tags": tags}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    kw = dict(shard_size=5, seed=2)
    ctx = write_shards(images, tmp_path / "plain.jsonl", vocab, tmp_path / "ctx", **kw)
    first = write_shards(images, tmp_path / "plain.jsonl", vocab, tmp_path / "first", tag_senses="first", **kw)
    assert ctx["labels_from"] == "tags-context" and first["labels_from"] == "tags-first"
    assert [Path(f).read_bytes() for f in list_shards(tmp_path / "ctx")] == \
           [Path(f).read_bytes() for f in list_shards(tmp_path / "first")]
    write_shards(images, tmp_path / "mixed.jsonl", vocab, tmp_path / "mixed", **kw)
    tagger = SenseTagger(vocab=vocab)
    got = {tuple(i["tags"]): labels for i, labels, _ in _samples(tmp_path / "mixed")}
    assert all(got[tuple(t)] == tagger.tag_labels(t) for t in plain + ambiguous)
    kitty = [vocab.synsets[j] for j in got[("#kitty", "#cat", "#cute")]]
    assert "kitten.n.01" in kitty and "pool.n.07" not in kitty  # beside #cat, #kitty is a kitten
    assert vocab.synsets[vocab.label_of("#kitty")] != "kitten.n.01"  # the lookup's most frequent sense


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.xdist_group("ray")
def test_ray_engine_writes_the_same_bytes(tagger_vocab, tmp_path):
    pytest.importorskip("ray")
    root, vocab, _ = tagger_vocab
    src = WebDataset(expand_urls(str(root / "cc")), block_items=7)
    kw = dict(shard_size=12, sampling="cap", cap=4, seed=5)
    local = write_shards(None, src, vocab, tmp_path / "local", **kw)
    dist = write_shards(None, src, vocab, tmp_path / "ray", workers=2, **kw)
    assert dist == local
    assert [Path(f).read_bytes() for f in list_shards(tmp_path / "ray")] == \
           [Path(f).read_bytes() for f in list_shards(tmp_path / "local")]


def test_hashtag_vocabulary_from_tars_and_cli_errors(wordnet, tmp_path, capsys):
    W.write_webdataset(tmp_path / "a.tar", [
        {"__key__": f"{i:03d}", "jpg": W.jpeg(i), "json": json.dumps({"tags": ["#dog", "#beach"] if i % 2 else "cat"})}
        for i in range(6)])
    assert main(["vocab", "--webdataset", str(tmp_path / "a.tar"), "--kind", "tags", "--tags-field", "tags",
                 "--out", str(tmp_path / "v.json")]) == 0
    v = HashtagVocabulary.load(tmp_path / "v.json")
    assert v.source == "wordnet-nouns" and v.counts == [3, 3, 3]
    assert {v.synsets[v.label_of(t)] for t in ("#dog", "beach", "cat")} == {"dog.n.01", "beach.n.01", "cat.n.01"}
    capsys.readouterr()
    bad = [(["--webdataset", str(tmp_path / "a.tar"), "--images", str(tmp_path)], "drop --images"),
           (["--tags", str(tmp_path / "t.jsonl")], "--tags needs --images"),
           (["--webdataset", str(tmp_path / "a.tar"), "--cap", "5"], "--cap goes with --sampling cap"),
           (["--webdataset", str(tmp_path / "nope-{0..3}.tar")], "matches no file")]
    for args, msg in bad:
        assert main(["shards", *args, "--vocab", str(tmp_path / "v.json"), "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
