import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wslfast.data import format as shard_format
from wslfast.data.build import dataset_name, write_shards
from wslfast.data.build import passes as PL
from wslfast.data.format import list_shards, read_manifest


def _jpeg(seed, size=40, quality=90, fmt="JPEG"):
    rng = np.random.default_rng(seed)
    arr = np.repeat(np.repeat(rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture
def messy(tmp_path, vocab):
    """8 good JPEGs, one PNG, one truncated JPEG, one text file named .jpg, one missing, one all-OOV."""
    img = tmp_path / "img"
    img.mkdir()
    recs = []
    for i in range(8):
        (img / f"g{i}.jpg").write_bytes(_jpeg(i))
        recs.append({"image": f"g{i}.jpg", "tags": ["#dog", "#Pizzas"] if i % 2 else ["#BrownBear", "#love"]})
    (img / "p.png").write_bytes(_jpeg(50, fmt="PNG"))
    recs.append({"image": "p.png", "tags": ["#tree"]})
    (img / "trunc.jpg").write_bytes(_jpeg(51)[:300])
    recs.append({"image": "trunc.jpg", "tags": ["#tree"]})
    (img / "text.jpg").write_text("hello, I am not an image")
    recs.append({"image": "text.jpg", "tags": ["#tree"]})
    recs.append({"image": "gone.jpg", "tags": ["#tree"]})
    (img / "oov.jpg").write_bytes(_jpeg(52))
    recs.append({"image": "oov.jpg", "tags": ["#instagood", "#nofilter"]})
    tags = tmp_path / "tags.jsonl"
    tags.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return img, tags


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_skips_are_counted_and_samples_are_right(messy, vocab, tmp_path):
    img, tags = messy
    m = write_shards(img, tags, vocab, tmp_path / "out", shard_size=4, seed=3)
    assert m["skipped"] == {**dict.fromkeys(PL.SKIP_KINDS, 0), "missing": 1, "out_of_vocabulary": 1, "not_image": 1,
                            "corrupt": 1}
    assert m["num_samples"] == m["num_images"] == 9 and m["reencoded"] == 1
    assert m["num_classes"] == len(vocab) and m["name"] == "train-local-9-" + str(len(vocab))
    files = list_shards(tmp_path / "out")
    assert [Path(f).name for f in files] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    seen = {}
    for f in files:
        members = _members(f)
        keys = sorted({n.split(".")[0] for n in members})
        for k in keys:
            info = json.loads(members[f"{k}.json"])
            labels = np.frombuffer(members[f"{k}.labels"], dtype="<i4").tolist()
            assert labels == vocab.labels_of(info["tags"]) == info["labels"]
            data = members[f"{k}.jpg"]
            assert data[:2] == b"\xff\xd8"  # JPEG, the PNG re-encoded
            if info["image"] != "p.png":
                assert data == (img / info["image"]).read_bytes()  # original bytes
            seen[info["image"]] = labels
    assert sorted(seen) == sorted([f"g{i}.jpg" for i in range(8)] + ["p.png"])
    assert read_manifest(tmp_path / "out")["label_counts"] == \
        np.bincount([l for v in seen.values() for l in v], minlength=len(vocab)).tolist()


def test_index_files_point_at_the_members(shard_dir):
    for tar_path in list_shards(shard_dir):
        raw = Path(tar_path).read_bytes()
        members = _members(tar_path)
        lines = Path(tar_path).with_suffix(".idx").read_text().splitlines()
        assert lines[0] == f"v1.2 {len(lines) - 1}"
        for line in lines[1:]:
            f = line.split()
            for ext, off, size, name in zip(f[0::4], f[1::4], f[2::4], f[3::4]):
                assert name.endswith("." + ext)
                assert raw[int(off):int(off) + int(size)] == members[name]


def test_webdataset_library_reads_the_shards(shard_dir):
    wds = pytest.importorskip("webdataset")
    ds = wds.WebDataset(list_shards(shard_dir), shardshuffle=False)
    n = 0
    for sample in ds:
        labels = np.frombuffer(sample["labels"], dtype="<i4")
        assert labels.size >= 1 and json.loads(sample["json"])["labels"] == labels.tolist()
        Image.open(io.BytesIO(sample["jpg"])).load()
        n += 1
    assert n == read_manifest(shard_dir)["num_samples"]


def test_deterministic_and_resumable(corpus, vocab, tmp_path, monkeypatch):
    a = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "a", shard_size=64, seed=5)
    b = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "b", shard_size=64, seed=5)
    assert a["fingerprint"] == b["fingerprint"]
    fa, fb = list_shards(tmp_path / "a"), list_shards(tmp_path / "b")
    assert len(fa) >= 3 and [Path(x).read_bytes() for x in fa] == [Path(x).read_bytes() for x in fb]
    # resume: a lost shard is rebuilt identically, the others are kept as they are, and no image is
    # decoded again (the decode-check results are cached by path, size and mtime)
    before = [Path(x).stat().st_mtime_ns for x in fa]
    gone = Path(fa[1]).read_bytes()
    Path(fa[1]).unlink()
    monkeypatch.setattr(PL, "check_image", lambda *a: pytest.fail("image decoded again on resume"))
    write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "a", shard_size=64, seed=5)
    monkeypatch.undo()
    assert Path(fa[1]).read_bytes() == gone
    assert Path(fa[0]).stat().st_mtime_ns == before[0] and Path(fa[2]).stat().st_mtime_ns == before[2]
    # a changed setting rebuilds: different seed -> different order, no stale shard left
    c = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "a", shard_size=1000, seed=6)
    assert len(list_shards(tmp_path / "a")) == 1 and c["fingerprint"] != a["fingerprint"]


def test_a_crash_leaves_only_whole_shards(corpus, vocab, tmp_path, monkeypatch):
    real, calls = shard_format.jpeg_bytes, {"n": 0}

    def failing(path, reencode):
        calls["n"] += 1
        if calls["n"] > 100:
            raise OSError("disk full")
        return real(path, reencode)

    monkeypatch.setattr(shard_format, "jpeg_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "o", shard_size=64)
    assert [Path(p).name for p in list_shards(tmp_path / "o")] == ["shard-000000.tar"]
    assert not (tmp_path / "o" / "manifest.json").exists()
    monkeypatch.setattr(shard_format, "jpeg_bytes", real)
    m = write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "o", shard_size=64)
    assert len(list_shards(tmp_path / "o")) == len(m["shards"])
    assert not list((tmp_path / "o").glob(".*.tmp"))


def test_noise_sampling_and_dedup(corpus, vocab, tmp_path):
    images = Path(corpus["images"])
    ref = tmp_path / "eval_set"
    ref.mkdir()
    lines = [json.loads(x) for x in Path(corpus["tags"]).read_text().splitlines()]
    lines = [r for r in lines if vocab.labels_of(r["tags"])]  # images that would be kept
    for rec in lines[:5]:  # resized and re-encoded copies of 5 training images
        im = Image.open(images / rec["image"])
        im.resize((40, 40)).save(ref / (Path(rec["image"]).stem + ".jpg"), quality=75)
    m = write_shards(images, corpus["tags"], vocab, tmp_path / "o", shard_size=100, label_noise=0.2,
                     sampling="sqrt", dedup_against=ref, seed=1)
    assert m["skipped"]["duplicate"] >= 5 and m["label_noise"] == 0.2 and m["sampling"] == "sqrt"
    names = set()
    for f in list_shards(tmp_path / "o"):
        names |= {json.loads(v)["image"] for k, v in _members(f).items() if k.endswith(".json")}
    assert not names & {r["image"] for r in lines[:5]}
    # the noise and resampling that landed in the shards follow the manifest's counts
    assert sum(m["label_counts"]) == sum(len(json.loads(v)["labels"]) for f in list_shards(tmp_path / "o")
                                         for k, v in _members(f).items() if k.endswith(".json"))


def test_bad_arguments(corpus, vocab, tmp_path):
    args = (corpus["images"], corpus["tags"], vocab, tmp_path / "o")
    with pytest.raises(ValueError, match="sampling"):
        write_shards(*args, sampling="log")
    with pytest.raises(ValueError, match="label_noise"):
        write_shards(*args, label_noise=2)
    with pytest.raises(ValueError, match="shard_size"):
        write_shards(*args, shard_size=0)
    with pytest.raises(TypeError, match="vocab"):
        write_shards(corpus["images"], corpus["tags"], {"dog": 0}, tmp_path / "o")
    with pytest.raises(FileNotFoundError):
        write_shards(tmp_path / "nope", corpus["tags"], vocab, tmp_path / "o")
    with pytest.raises(FileNotFoundError):
        list_shards(tmp_path / "nope")


def test_dataset_name():
    assert dataset_name("train", "IG", 1_000_000, 17_000) == "train-IG-1M-17k"
    assert dataset_name("train", "IG", 3_500_000_000, 1500) == "train-IG-3.5B-1.5k"
    assert dataset_name("val", "YFCC", 940, 8_500) == "val-YFCC-940-8.5k"


def test_a_fixed_image_is_checked_again(messy, vocab, tmp_path):
    img, tags = messy
    m1 = write_shards(img, tags, vocab, tmp_path / "out", shard_size=4)
    (img / "trunc.jpg").write_bytes(_jpeg(99, size=48))  # repaired: new size and mtime
    m2 = write_shards(img, tags, vocab, tmp_path / "out", shard_size=4)
    assert m1["skipped"]["corrupt"] == 1 and m2["skipped"]["corrupt"] == 0
    assert m2["num_samples"] == m1["num_samples"] + 1


def test_yfcc_metadata_to_shards(vocab, tmp_path, yfcc_row):
    _yfcc_row = yfcc_row
    img = tmp_path / "img"
    img.mkdir()
    for i in range(3):
        (img / f"{100 + i}.jpg").write_bytes(_jpeg(i))
    rows = [_yfcc_row("100", "aa", "brown+bear,%23Pizzas"), _yfcc_row("101", "bb", "instagood"),
            _yfcc_row("102", "cc", "dog", marker="1"), _yfcc_row("103", "dd", "dog")]
    (tmp_path / "yfcc.tsv").write_text("\n".join(rows) + "\n")
    m = write_shards(img, tmp_path / "yfcc.tsv", vocab, tmp_path / "out")
    assert m["tags_format"] == "yfcc" and m["name"].startswith("train-YFCC-1-")
    assert m["skipped"]["video"] == 1 and m["skipped"]["missing"] == 1 and m["skipped"]["out_of_vocabulary"] == 1
    members = _members(list_shards(tmp_path / "out")[0])
    info = json.loads(next(v for k, v in members.items() if k.endswith(".json")))
    assert info["yfcc_id"] == "100" and info["tags"] == ["brown bear", "#Pizzas"]
    assert sorted(vocab.name_of(l) for l in info["labels"]) == ["brown_bear.n.01", "pizza.n.01"]


def test_a_changed_image_invalidates_resume(messy, vocab, tmp_path):
    img, tags = messy
    write_shards(img, tags, vocab, tmp_path / "out", shard_size=100)
    (img / "g0.jpg").write_bytes(_jpeg(123, size=48))  # same name, new picture
    write_shards(img, tags, vocab, tmp_path / "out", shard_size=100)
    members = _members(list_shards(tmp_path / "out")[0])
    key = next(k for k, v in members.items() if k.endswith(".json") and json.loads(v)["image"] == "g0.jpg")
    assert members[key.replace(".json", ".jpg")] == (img / "g0.jpg").read_bytes()
