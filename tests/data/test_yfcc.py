"""YFCC100M in every released form (23, 24, 25 fields), from the README's commands to shards; the hash file
and OpenAI's YFCC15M subset list (sorted on disk once, looked up per block); titles and descriptions as
text. Rows are made as the releases lay them out (tests/data/conftest.py: yfcc_line)."""
import bz2
import hashlib
import json
import pickle
import random
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wslfast.data.__main__ import main
from wslfast.data.format import list_shards
from wslfast.data.sources import IdIndex, TagFiles, YfccOptions, expand_inputs, read_tags
from wslfast.data.sources.yfcc import clean_text, flickr_hash
from wslfast.errors import ConfigError, DataError

FORMS = [23, "24", "24n", 25]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSLFAST_CACHE", str(tmp_path / "cache"))


def _img(path: Path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, quality=90)


def _infos(folder):
    out = []
    for f in list_shards(folder):
        with tarfile.open(f) as tar:
            out += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return sorted(out, key=lambda d: d["yfcc_id"])


def _corpus(tmp_path, yfcc_line, form, by_hash=True):
    """12 photos, 1 video, 1 broken line, split in two bz2 files as Webscope ships them. Photos 0-5 stored
    as <id>.jpg, 6-11 by hash (<h[:3]>/<h[3:6]>/<h>.jpg, the image bucket's layout) when by_hash."""
    img = tmp_path / "images"
    img.mkdir(exist_ok=True)
    lines = []
    tags = ["brown+bear,alaska,%23wildlife", "dog,caf%C3%A9", "pizza,new+york+city", "tree,sunset"]
    for i in range(12):
        pid = 6_985_418_900 + i * 37
        line, h = yfcc_line(pid, form, tags=tags[i % 4], line_no=i + 1)
        if i < 6:
            _img(img / f"{pid}.jpg", i)
        elif by_hash:
            _img(img / h[:3] / h[3:6] / f"{h}.jpg", i)
        lines.append(line)
    lines.insert(5, yfcc_line(5_000_000_001, form, tags="dog", marker="1", line_no=99)[0])  # a video
    lines.insert(9, "6985419999\tthis line\tlost its fields")
    (tmp_path / "yfcc100m_dataset-0.bz2").write_bytes(bz2.compress(("\n".join(lines[:7]) + "\n").encode()))
    (tmp_path / "yfcc100m_dataset-1.bz2").write_bytes(bz2.compress(("\n".join(lines[7:]) + "\n").encode()))
    return img, str(tmp_path / "yfcc100m_dataset-*.bz2")


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reads_to_the_same_records(tmp_path, yfcc_line, form):
    img, pattern = _corpus(tmp_path, yfcc_line, form)
    fmt, recs = read_tags(pattern, img)
    assert fmt == "yfcc" and len(recs) == 14
    skips = [r.skip for r in recs]
    assert skips.count("video") == 1 and skips.count("bad_record") == 1 and skips.count(None) == 12
    good = [r for r in recs if not r.skip]
    assert good[0].tags == ["brown bear", "alaska", "#wildlife"] and good[1].tags == ["dog", "café"]
    assert good[0].meta == {"yfcc_id": "6985418900"} and good[0].image == "6985418900.jpg"
    assert all("/" in r.image for r in good[6:])  # found by hash: the line's own, or the download URL's


def test_forms_24_are_told_apart(yfcc_line, tmp_path):
    with_hash, h = yfcc_line(123456789, "24", tags="cat", photo_hash="d29e7c6a3028418c64eb15e3cf577c2")
    with_line, _ = yfcc_line(123456789, "24n", tags="cat", line_no=4242)
    _img(tmp_path / "d29" / "e7c" / "d29e7c6a3028418c64eb15e3cf577c2.jpg", 0)
    src = TagFiles([], tmp_path)
    from wslfast.data.sources import Block

    a = list(src.records(Block(0, 0, "yfcc", [with_hash])))[0][1]
    b = list(src.records(Block(0, 0, "yfcc", [with_line])))[0][1]
    assert a.meta["yfcc_id"] == b.meta["yfcc_id"] == "123456789" and a.tags == b.tags == ["cat"]
    assert a.image == "d29/e7c/d29e7c6a3028418c64eb15e3cf577c2.jpg"


def test_flickr_hash_is_the_bucket_key():
    url = "http://farm8.staticflickr.com/7100/6985418911_0a1b2c3d4e.jpg"
    digest = hashlib.md5(url.encode()).hexdigest()
    # each byte printed without its leading zero ('0a' -> 'a'), as the multimedia-commons keys are
    assert flickr_hash(url) == "".join(digest[i:i + 2].lstrip("0") or "0" for i in range(0, 32, 2))
    assert digest == "a71fc9de78750bdc2999aae2728a358a" and flickr_hash(url) == "a71fc9de7875bdc2999aae2728a358a"


@pytest.mark.parametrize("form", [23, "24", 25])
def test_readme_commands_take_every_form_to_shards(tmp_path, yfcc_line, vocab, wordnet, form, capsys):
    img, pattern = _corpus(tmp_path, yfcc_line, form)
    # the README's own command, on the split files as released (no --images: every photo's tags count)
    assert main(["vocab", "--tags", pattern, "--top", "17000", "--out", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert '"bad_record": 1' in out and '"video": 1' in out
    synsets = set(json.loads((tmp_path / "v.json").read_text())["synsets"])
    assert {"brown_bear.n.01", "dog.n.01", "pizza.n.01"} <= synsets
    vocab.save(tmp_path / "concepts.json")
    assert main(["shards", "--images", str(img), "--tags", pattern, "--vocab", str(tmp_path / "concepts.json"),
                 "--out", str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    m = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert m["tags_format"] == "yfcc" and m["name"].startswith("train-YFCC-") and m["records"] == 14
    assert m["skipped"]["video"] == 1 and m["skipped"]["bad_record"] == 1
    infos = _infos(tmp_path / "shards")
    assert len(infos) == m["num_samples"] == m["num_images"] == 12 - m["skipped"]["out_of_vocabulary"]
    assert {d["yfcc_id"] for d in infos} <= {str(6_985_418_900 + i * 37) for i in range(12)}
    assert all("text" not in d for d in infos)  # default --text tags: the samples as before


def test_hash_file_finds_images_stored_by_hash(tmp_path, yfcc_line, vocab):
    """23-field lines carry no hash; yfcc100m_hash.bz2 (id<TAB>hash) says where the image is."""
    img = tmp_path / "images"
    rows, hashes = [], []
    for i in range(8):
        pid = 40_000_000 + i
        h = hashlib.md5(f"photo {i}".encode()).hexdigest()  # not derivable from the line
        rows.append(yfcc_line(pid, 23, tags="dog,pizza", url="")[0])
        hashes.append(f"{pid}\t{h}")
        _img(img / h[:3] / h[3:6] / f"{h}.jpg", i)
    hashes += [f"{50_000_000 + i}\t{i:032x}" for i in range(1000)]  # the rest of the table
    random.Random(0).shuffle(hashes)
    (tmp_path / "yfcc100m_dataset-0").write_text("\n".join(rows) + "\n")
    (tmp_path / "yfcc100m_hash.bz2").write_bytes(bz2.compress(("\n".join(hashes) + "\n").encode()))
    vocab.save(tmp_path / "v.json")
    args = ["shards", "--images", str(img), "--tags", str(tmp_path / "yfcc100m_dataset-0"), "--vocab",
            str(tmp_path / "v.json"), "--shard-size", "4"]
    assert main(args + ["--out", str(tmp_path / "none")]) == 1  # without the table: every image missing
    assert main(args + ["--out", str(tmp_path / "s"), "--yfcc-hash", str(tmp_path / "yfcc100m_hash.bz2")]) == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["num_images"] == 8 and m["skipped"]["missing"] == 0
    assert len(list((tmp_path / "cache" / "yfcc").glob("hash-*/ids.u64"))) == 1  # sorted once, in the cache


@pytest.mark.parametrize("form", [23, 25])
def test_yfcc15m_subset_filter(tmp_path, yfcc_line, vocab, wordnet, form, capsys):
    """OpenAI's list: line number, photo id, hash a line (bz2). Only its photos are kept; its hashes find
    the images stored by hash even in 23-field files."""
    img, pattern = _corpus(tmp_path, yfcc_line, form, by_hash=False)
    keep = [0, 3, 6, 7, 10]
    rows = []
    for i in keep:
        pid = 6_985_418_900 + i * 37
        h = hashlib.sha1(str(pid).encode()).hexdigest()[:32]
        if i >= 6:
            _img(img / h[:3] / h[3:6] / f"{h}.jpg", i)
        rows.append(f"{i + 1}\t{pid}\t{h}")
    rows += [f"{100 + i}\t{90_000_000 + i}\t{i:032x}" for i in range(500)]  # photos not in these files
    (tmp_path / "yfcc100m_subset_data.tsv.bz2").write_bytes(bz2.compress(("\n".join(rows) + "\n").encode()))
    vocab.save(tmp_path / "v.json")
    assert main(["shards", "--images", str(img), "--tags", pattern, "--vocab", str(tmp_path / "v.json"),
                 "--out", str(tmp_path / "s"), "--subset", str(tmp_path / "yfcc100m_subset_data.tsv.bz2")]) == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    kept = {d["yfcc_id"] for d in _infos(tmp_path / "s")}
    tags = [["brown bear", "alaska", "#wildlife"], ["dog", "café"], ["pizza", "new york city"], ["tree", "sunset"]]
    assert kept == {str(6_985_418_900 + i * 37) for i in keep if vocab.labels_of(tags[i % 4])} and kept
    assert m["skipped"]["not_in_subset"] == 12 - len(keep) + 1  # the video is not in the list either
    assert m["skipped"]["missing"] == 0 and m["skipped"]["video"] == 0
    capsys.readouterr()
    assert main(["vocab", "--tags", pattern, "--subset", str(tmp_path / "yfcc100m_subset_data.tsv.bz2"),
                 "--out", str(tmp_path / "v2.json")]) == 0
    assert '"not_in_subset": 8' in capsys.readouterr().out


def test_titles_and_descriptions_become_text(tmp_path, yfcc_line, vocab, capsys):
    img = tmp_path / "images"
    desc = ("A+%3Cb%3Ebrown+bear%3C%2Fb%3E+fishing+for+salmon+at+%3Ca+href%3D%22http%3A%2F%2Fx.org%22%3E"
            "Brooks+Falls%3C%2Fa%3E%2C+Katmai+%26amp%3B+caf%C3%A9")
    rows = [yfcc_line(7_000_000 + i, 23, tags="brown+bear,dog", title="Bear+%26+salmon" if i else "",
                      description=desc if i != 1 else "")[0] for i in range(3)]
    for i in range(3):
        _img(img / f"{7_000_000 + i}.jpg", i)
    (tmp_path / "y.tsv").write_text("\n".join(rows) + "\n")
    src = TagFiles(expand_inputs(tmp_path / "y.tsv"), img, yfcc=YfccOptions(text=("title", "description")))
    from wslfast.data.sources import Block

    recs = [r for _, r in src.records(Block(0, 0, "yfcc", rows))]
    assert recs[0].meta["text"] == "A brown bear fishing for salmon at Brooks Falls , Katmai & café"
    assert recs[1].meta["text"] == "Bear & salmon" and recs[0].tags == []
    assert recs[2].meta["text"] == "Bear & salmon\n" + recs[0].meta["text"]
    with pytest.raises(UnicodeDecodeError):
        clean_text("caf%E9")  # Latin-1 escapes are not UTF-8: the record counts as bad_encoding
    vocab.save(tmp_path / "v.json")
    assert main(["shards", "--images", str(img), "--tags", str(tmp_path / "y.tsv"), "--vocab", str(tmp_path / "v.json"),
                 "--out", str(tmp_path / "s"), "--text", "tags,title,description"]) == 0
    infos = _infos(tmp_path / "s")
    assert [d["text"] for d in infos] == [r.meta["text"] for r in recs]
    assert all(d["tags"] == ["brown bear", "dog"] for d in infos)
    capsys.readouterr()
    assert main(["shards", "--images", str(img), "--tags", str(tmp_path / "y.tsv"), "--vocab", str(tmp_path / "v.json"),
                 "--out", str(tmp_path / "s2"), "--text", "title"]) == 1
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert len(err) == 1 and "--text title" in err[0]
    with pytest.raises(ConfigError, match="one or more of tags, title, description"):
        YfccOptions(text=("tags", "caption"))


# ---- the id tables -------------------------------------------------------------------------------------
def _table(tmp_path, entries, name="t.tsv", header=None):
    text = (header + "\n" if header else "") + "".join(f"{a}\t{b}\n" if b is not None else f"{a}\n"
                                                       for a, b in entries)
    p = tmp_path / name
    p.write_bytes(bz2.compress(text.encode()) if name.endswith(".bz2") else text.encode())
    return p


def test_id_table_matches_a_dict(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 63, 6000, dtype=np.uint64).tolist() + [0, (1 << 63) + 5, 10**19 - 1]
    ids += ids[:50]  # repeated ids: the first line wins
    entries = [(i, f"{rng.integers(0, 1 << 60):x}") for i in ids]
    p = _table(tmp_path, entries, "hash.bz2", header="photoid\thash")
    t = IdIndex(p, "hash", flush=1000).build()  # several spills
    want = {}
    for i, h in entries:
        want.setdefault(i, h)
    q = np.array(list(want)[:3000] + rng.integers(0, 1 << 63, 3000, dtype=np.uint64).tolist(), dtype=np.uint64)
    found, got = t.lookup(q)
    assert found.tolist() == [int(x) in want for x in q]
    assert got == [want.get(int(x)) for x in q]
    assert len(t) == len(want) + 50 and t.lookup(np.zeros(0, np.uint64))[1] == []
    # pickles as paths; a process that finds no table (another machine) sorts the file itself
    back = pickle.loads(pickle.dumps(t))
    shutil.rmtree(t.dir)
    assert back.lookup(q)[1] == got


def test_subset_list_forms(tmp_path):
    a = IdIndex(_table(tmp_path, [(f"{n}\t{i}", f"{i:x}") for n, i in enumerate([5, 9, 7], 1)], "a.tsv")).build()
    b = IdIndex(_table(tmp_path, [(i, None) for i in (5, 9, 7)], "b.tsv")).build()
    fa, ha = a.lookup([9, 8, 5])
    fb, hb = b.lookup([9, 8, 5])
    assert fa.tolist() == fb.tolist() == [True, False, True] and ha == ["9", None, "5"] and hb == ["", None, ""]


@pytest.mark.parametrize("text,line", [("1\t2\t3\t4\n", 1), ("5\tab\n6\tnot-a-hash\n", 2), ("x1\n", 1),
                                       ("7\t\n8\t%s\n" % ("a" * 40), 2)])
def test_a_malformed_table_line_is_named(tmp_path, text, line):
    (tmp_path / "s.tsv").write_text(text)
    with pytest.raises(DataError, match=rf"s.tsv: line {line}: not a YFCC subset line"):
        IdIndex(tmp_path / "s.tsv").build()
    assert not list((tmp_path / "cache").rglob("ids.u64"))


def test_a_damaged_table_is_named(tmp_path):
    good = bz2.compress("".join(f"{i}\t{i:x}\n" for i in range(5000)).encode())
    (tmp_path / "h.bz2").write_bytes(good[:-30])
    with pytest.raises(DataError, match="h.bz2: cannot read past line"):
        IdIndex(tmp_path / "h.bz2", "hash").build()


def test_table_build_memory_does_not_grow_with_the_file(tmp_path):
    def peak(n):
        p = tmp_path / f"h{n}.tsv"
        with open(p, "w") as f:
            for i in range(n):
                f.write(f"{(i * 2654435761) % (1 << 40)}\t{i:x}\n")
        tracemalloc.start()
        IdIndex(p, "hash", flush=2048).build()
        got = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return got

    # measured: ~0.4 MB at both sizes; buffering every entry instead grows ~90 bytes an entry (3.6 MB more)
    small, big = peak(4_000), peak(40_000)
    assert big < 1.3 * small, (small, big)


def test_source_with_tables_pickles_for_the_workers(tmp_path, yfcc_line):
    img, pattern = _corpus(tmp_path, yfcc_line, 23, by_hash=False)
    (tmp_path / "sub.tsv").write_text("".join(f"{6_985_418_900 + i * 37}\n" for i in range(0, 12, 2)))
    src = TagFiles(expand_inputs(pattern), img, yfcc=YfccOptions(subset=IdIndex(tmp_path / "sub.tsv").build()))
    before = [(n, r.skip, r.image) for fi in range(2) for b in src.blocks(fi) for n, r in src.records(b)]
    back = pickle.loads(pickle.dumps(src))
    after = [(n, r.skip, r.image) for fi in range(2) for b in back.blocks(fi) for n, r in back.records(b)]
    assert before == after and [s for _, s, _ in before].count("not_in_subset") == 7
