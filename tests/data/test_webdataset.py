"""Web-dataset inputs (wslfast/data/sources/webdataset.py, tarheaders.py): img2dataset folders and plain
webdataset tars read in place, records numbered by the files alone, parquet status and captions, fsspec URLs
(memory://), and broken tars counted or named in one line with nothing written anywhere."""
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import fsspec
import pytest

from tests.data import webfixtures as W
from wslfast.data.sources import MemberRef, Source, WebDataset, expand_urls, read_member
from wslfast.data.sources.tarheaders import TarDamage, iter_members
from wslfast.errors import DataError


def _records(src):
    return [(fi, n, r) for fi in range(len(src.paths)) for b in src.blocks(fi) for n, r in src.records(b)]


def _tar_bytes(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


# ---- img2dataset's layout ---------------------------------------------------------------------------------
def test_img2dataset_folder_records(tmp_path):
    rows = W.cc_rows(25)
    tars = W.write_img2dataset(tmp_path / "cc", rows, number_sample_per_shard=10, failed=[3, 17])
    src = WebDataset(expand_urls([str(tmp_path / "cc" / "{00000..00002}.tar")]))
    assert isinstance(src, Source) and src.paths == [str(Path(t).resolve()) for t in tars]
    got = _records(src)
    assert len(got) == 25  # every URL of the list is a record: 23 samples + 2 failed downloads
    kinds = {b.kind for fi in range(3) for b in src.blocks(fi)}
    assert kinds == {"img2dataset"}
    ok = [(fi, n, r) for fi, n, r in got if not r.skip]
    failed = [r for _, _, r in got if r.skip]
    assert len(ok) == 23 and [r.skip for r in failed] == ["not_downloaded"] * 2
    # img2dataset's key: shard * 10^ceil(log10(samples a shard)) + row, 5 + 1 digits here: row 7 of shard 1
    assert {r.meta["key"] for r in failed} == {"000003", "000017"}
    assert "HTTP Error 404" in failed[0].meta["error"]
    # record n of input f: samples in tar order, then the parquet's rows missing from the tar
    assert [n for fi, n, _ in got if fi == 0] == list(range(1, 11))
    assert [r.skip for fi, _, r in got if fi == 0][-1] == "not_downloaded"
    members = {fi: _tar_bytes(t) for fi, t in enumerate(tars)}
    for fi, _, r in ok:
        key = r.meta["key"]
        i = int(key)  # back to the input row (10 samples a shard)
        assert isinstance(r.image, MemberRef) and r.image.name == f"{key}.jpg"
        assert read_member(r.image) == members[fi][f"{key}.jpg"] == W.jpeg(i)  # the bytes, by range
        assert r.meta["text"] == rows[i][1] and r.meta["url"] == rows[i][0] and r.tags == []


def test_parquet_gives_the_caption_when_the_txt_is_missing_and_its_status_rules(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    W.write_webdataset(tmp_path / "00000.tar", [
        {"__key__": "000000000", "jpg": W.jpeg(0)},  # no .txt: the caption comes from the parquet
        {"__key__": "000000001", "jpg": W.jpeg(1), "txt": "a cat on a sofa"},
        {"__key__": "000000002", "jpg": W.jpeg(2), "txt": "a dog"}])  # the parquet says it failed
    pq.write_table(pa.table({"key": ["000000000", "000000001", "000000002", "000000003", "000000004"],
                             "caption": ["a red car", "ignored: the .txt wins", "x", "y", "z"],
                             "status": ["success", "success", "failed_to_resize", "failed_to_download",
                                        "success"],
                             "error_message": [None, None, "cannot decode", "timeout", None]}),
                   tmp_path / "00000.parquet")
    got = [r for _, _, r in _records(WebDataset(expand_urls(str(tmp_path))))]
    assert [r.meta.get("text") for r in got[:2]] == ["a red car", "a cat on a sofa"]
    assert [r.skip for r in got] == [None, None, "not_downloaded", "not_downloaded", "missing"]
    assert got[2].meta["error"] == "failed_to_resize: cannot decode"


def test_damaged_parquet_is_one_line(tmp_path):
    W.write_img2dataset(tmp_path, W.cc_rows(3))
    (tmp_path / "00000.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"00000\.parquet: cannot read the img2dataset parquet"):
        _records(WebDataset(expand_urls(str(tmp_path))))


# ---- plain webdataset tars ----------------------------------------------------------------------------------
def test_webdataset_tars_keys_fields_and_formats(tmp_path):
    path = W.write_webdataset(tmp_path / "a.tar", [
        {"__key__": "train/0001", "jpg": W.jpeg(1), "json": json.dumps({"caption": "a dog", "tags": ["#dog", "#pet"]})},
        {"__key__": "train/0002", "png": W.png(2), "json": json.dumps({"caption": "a car", "tags": "car, red"})},
        {"__key__": "train/0003", "txt": "no image here"},
        {"__key__": "train/0004", "webp": b"not really webp", "json": json.dumps({"caption": 5})},
        {"__key__": "train/0005", "seg.png": b"...", "JPEG": W.jpeg(5), "json": "[1, 2]"},
    ])
    src = WebDataset(expand_urls(path), text_field="caption", tags_field="tags")
    (b,) = list(src.blocks(0))
    assert b.kind == "webdataset" and pickle.loads(pickle.dumps(b)) == b
    assert pickle.loads(pickle.dumps(src)).paths == src.paths
    recs = [r for _, r in src.records(b)]
    assert [r.meta["key"] for r in recs] == [f"train/000{i}" for i in range(1, 6)]
    assert [r.skip for r in recs] == [None, None, "missing", None, "bad_record"]  # 5: .json not an object
    assert recs[0].meta["text"] == "a dog" and recs[0].tags == ["#dog", "#pet"]
    assert recs[1].tags == ["car", "red"] and recs[1].image.name == "train/0002.png"
    assert read_member(recs[1].image) == W.png(2)
    assert "text" not in recs[3].meta  # a field that holds no text gives none
    # the default text: the .txt member, else the .json's caption; upper-case extensions lower-cased (JPEG)
    plain = [r for _, _, r in _records(WebDataset([path]))]
    assert plain[2].meta["text"] == "no image here" and plain[0].meta["text"] == "a dog" and plain[0].tags == []


def test_block_size_does_not_change_records(tmp_path):
    W.write_img2dataset(tmp_path, W.cc_rows(23), failed=[4])
    big = _records(WebDataset(expand_urls(str(tmp_path))))
    small_src = WebDataset(expand_urls(str(tmp_path)), block_items=3)
    small = _records(small_src)
    assert [(fi, n, r.image, r.skip, r.meta) for fi, n, r in big] == \
        [(fi, n, r.image, r.skip, r.meta) for fi, n, r in small]
    assert [len(b.items) for b in small_src.blocks(0)] == [3] * 7 + [2]
    # blocks hold headers and captions, never image bytes
    items = sum(len(i) for b in small_src.blocks(0) for i in b.items)
    assert items < Path(small_src.paths[0]).stat().st_size / 4


def test_expand_urls(tmp_path):
    for i in range(3):
        W.write_webdataset(tmp_path / f"{i:05d}.tar", [{"__key__": "k", "jpg": W.jpeg(i)}])
    (tmp_path / "notes.txt").write_text("x")
    want = [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    assert expand_urls(str(tmp_path / "{00000..00002}.tar")) == want
    assert expand_urls([str(tmp_path / "0000[12].tar"), str(tmp_path / "00000.tar")]) == want[1:] + want[:1]
    assert expand_urls(str(tmp_path)) == want  # a folder: its tars
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_urls(str(tmp_path / "{00000..00003}.tar"))
    with pytest.raises(DataError, match="no webdataset input"):
        expand_urls([])


def test_memory_filesystem(tmp_path):
    fs = fsspec.filesystem("memory")
    rows = W.cc_rows(12)
    W.write_img2dataset("/cc12", rows, number_sample_per_shard=5, fs=fs, failed=[7])
    try:
        urls = expand_urls("memory://cc12/{00000..00002}.tar")
        assert len(urls) == 3 and all(u.startswith("memory://") for u in urls)
        assert expand_urls("memory://cc12/*.tar") == urls
        got = _records(WebDataset(urls))
        assert [r.skip for _, _, r in got].count("not_downloaded") == 1
        local = _records(WebDataset(expand_urls(W.write_img2dataset(tmp_path, rows, 5, failed=[7]))))
        assert [(n, r.meta, r.skip) for _, n, r in got] == [(n, r.meta, r.skip) for _, n, r in local]
        assert [read_member(r.image) for _, _, r in got if r.image] == \
            [read_member(r.image) for _, _, r in local if r.image]
    finally:
        fs.rm("/cc12", recursive=True)


# ---- broken tars --------------------------------------------------------------------------------------------
def _raw_tar(members, end=True) -> bytes:
    """A tar built member by member with tarfile's own headers (names as given, even unsafe ones)."""
    out = io.BytesIO()
    for name, data, kind in members:
        info = tarfile.TarInfo(name)
        info.size, info.type = (len(data), kind) if kind == tarfile.REGTYPE else (0, kind)
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        out.write(info.tobuf(tarfile.USTAR_FORMAT))
        if kind == tarfile.REGTYPE:
            out.write(data + bytes(-len(data) % 512))
    if end:
        out.write(bytes(1024))
    return out.getvalue()


def _skips(path):
    return [(r.meta.get("key"), r.skip) for _, _, r in _records(WebDataset([str(path)]))]


def test_broken_tars_are_counted_never_a_crash(tmp_path, monkeypatch):
    good = [("a.jpg", W.jpeg(1), tarfile.REGTYPE), ("a.txt", b"a dog", tarfile.REGTYPE),
            ("b.jpg", W.jpeg(2), tarfile.REGTYPE), ("b.txt", b"a cat", tarfile.REGTYPE)]
    whole = _raw_tar(good)
    cases = {
        "cut_in_data.tar": whole[:2000],  # b.jpg's data cut short
        "cut_at_member.tar": whole[:512 + 1024 + 512 + 512],  # a.* whole, then nothing: no end block
        "garbage.tar": os.urandom(4096),
        "empty.tar": b"",
        "garbage_inside.tar": whole[:2560] + b"\x13" * 512 + whole[3072:],  # b.jpg's header smashed
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert _skips(tmp_path / "cut_in_data.tar") == [("a", None), (None, "bad_tar")]
    assert _skips(tmp_path / "cut_at_member.tar") == [("a", None), (None, "bad_tar")]
    assert _skips(tmp_path / "garbage.tar") == [(None, "bad_tar")]
    assert _skips(tmp_path / "empty.tar") == [(None, "bad_tar")]
    assert _skips(tmp_path / "garbage_inside.tar") == [("a", None), (None, "bad_tar")]
    errors = {n: next(r.meta["error"] for _, _, r in _records(WebDataset([str(tmp_path / n)])) if r.skip)
              for n in cases}
    assert "truncated" in errors["cut_in_data.tar"] and "end-of-archive" in errors["cut_at_member.tar"]
    assert "not a tar archive" in errors["garbage.tar"] and "bad checksum" in errors["garbage_inside.tar"]

    # a size field far past the end of the file (8 GiB - 1 claimed, the most 11 octal digits hold)
    huge = bytearray(whole)
    huge[124:136] = b"%011o\0" % (8 ** 11 - 1)
    huge[148:156] = b" " * 8
    huge[148:155] = b"%06o\0" % sum(huge[:512])
    (tmp_path / "huge.tar").write_bytes(bytes(huge))
    assert _skips(tmp_path / "huge.tar") == [(None, "bad_tar")]

    # names that would leave the archive, a symlink, bad text: counted, and nothing lands anywhere
    monkeypatch.chdir(tmp_path)
    evil = _raw_tar([("../evil.jpg", W.jpeg(3), tarfile.REGTYPE), ("/tmp/abs.jpg", W.jpeg(4), tarfile.REGTYPE),
                     ("c.jpg", b"", tarfile.SYMTYPE), ("d.jpg", W.jpeg(5), tarfile.REGTYPE),
                     ("d.txt", b"\xff\xfe bad", tarfile.REGTYPE), ("e.jpg", W.jpeg(6), tarfile.REGTYPE),
                     ("e.txt", b"x" * 100, tarfile.REGTYPE), ("f.jpg", W.jpeg(7), tarfile.REGTYPE)])
    (tmp_path / "evil.tar").write_bytes(evil)
    monkeypatch.setattr("wslfast.data.sources.webdataset.MAX_TEXT", 50)
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    assert _skips(tmp_path / "evil.tar") == [("../evil", "bad_record"), ("/tmp/abs", "bad_record"), ("c", "bad_record"),
                                              ("d", "bad_record"), ("e", "bad_record"), ("f", None)]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before and not Path("/tmp/abs.jpg").exists()


def test_tar_headers_match_tarfile(tmp_path):
    """iter_members against tarfile on archives of every format, long and non-ASCII names, empty members."""
    names = ["a.jpg", "dir/b.txt", "x" * 150 + ".jpg", "ünïcode/ñ.json", "empty.txt", "d/" + "y" * 120 + "/z.png"]
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as t:
            t.addfile(_dir_info("somedir"))
            for i, n in enumerate(names):
                if fmt == tarfile.USTAR_FORMAT and (len(n) > 100 and "/" not in n[:-100] or not n.isascii()):
                    continue  # USTAR cannot hold these
                data = b"" if n.startswith("empty") else os.urandom(100 + 700 * i)
                info = tarfile.TarInfo(n)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        with tarfile.open(path) as t:
            want = [(m.name, m.offset_data, m.size) for m in t.getmembers() if m.isfile()]
        with open(path, "rb") as f:
            got = [(m.name, m.offset, m.size) for m in iter_members(f, path.stat().st_size) if m.regular]
        assert got == want, fmt
    with open(path, "rb") as f:
        assert [m.directory for m in iter_members(f, path.stat().st_size)][0]


def _dir_info(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_old_tars_with_a_signed_checksum_are_read():
    info = tarfile.TarInfo("caf\xe9.jpg")
    info.size = 3
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "latin-1"))
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in header)  # what some old tar programs stored
    header[148:155] = b"%06o\0" % signed
    data = bytes(header) + b"abc" + bytes(509) + bytes(1024)
    (m,) = list(iter_members(io.BytesIO(data), len(data)))
    assert (m.offset, m.size, m.regular) == (512, 3, True)


def test_tar_damage_messages():
    with pytest.raises(TarDamage, match="not a tar archive"):
        list(iter_members(io.BytesIO(b"hello" * 200), 1000))
    with pytest.raises(TarDamage, match="cut short"):
        list(iter_members(io.BytesIO(bytes(100)), 100))


def test_reading_blocks_holds_one_block_not_the_tar(tmp_path):
    """Python memory while walking a tar's blocks: the same for 1,500 and 6,000 samples (one block of 500
    items is alive at a time; the image bytes are never read)."""
    import tracemalloc

    peaks = []
    for n in (1500, 6000):
        path = W.write_webdataset(tmp_path / f"{n}.tar", [{"__key__": f"{i:06d}", "jpg": os.urandom(3000),
                                                            "txt": "a dog on the beach " * 3} for i in range(n)])
        src = WebDataset([path], block_items=500)
        tracemalloc.start()
        count = sum(len(b.items) for b in src.blocks(0))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == n
    assert peaks[1] < 1.3 * peaks[0], peaks
    assert peaks[1] < 6000 * 3000 / 10  # far below the image bytes
