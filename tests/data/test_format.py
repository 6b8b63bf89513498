"""The shard format (wslfast.data.format): writer bytes, the one verify_shard (full and quick), the
manifest and COUNTS.tsv, each against an independent reference (tarfile) or hand-made damage."""
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

from wslfast.data.format import (MANIFEST, MANIFEST_FORMAT, _header, _tarfile_header, index_num_samples, list_shards,
                                 read_counts, read_manifest, verify_shard, write_counts, write_manifest, write_shard)
from wslfast.errors import DataError


def _ok(tar, n=None, full=True):
    try:
        verify_shard(tar, n, full=full)
    except DataError:
        return False
    return True


def test_writer_bytes_are_tarfiles(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x" * 1000)
    (tmp_path / "b.jpg").write_bytes(b"y" * 512)
    samples = [("000000_000000", "a.jpg", False, [1, 2], {"image": "a.jpg", "tags": ["#café"]}),
               ("000000_000001", "b.jpg", False, [3], {"image": "b.jpg", "tags": []})]
    assert write_shard(tmp_path, "s", samples, tmp_path) == 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, _, labels, info in samples:
            for ext, data in (("jpg", (tmp_path / image).read_bytes()),
                              ("labels", np.asarray(labels, dtype="<i4").tobytes()),
                              ("json", json.dumps(info, sort_keys=True).encode())):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o644, "", ""
                tar.addfile(ti, io.BytesIO(data))
    assert (tmp_path / "s.tar").read_bytes() == buf.getvalue()
    assert _ok(tmp_path / "s.tar", 2) and not _ok(tmp_path / "s.tar", 3)
    assert _ok(tmp_path / "s.tar", 2, full=False)
    assert index_num_samples([tmp_path / "s.idx"]) == 2
    assert not list((tmp_path).glob(".*.tmp"))


def test_verify_shard_catches_damage(shard_dir, tmp_path):
    """Each damage: full=True (the builder's resume) rejects it; full=False (the loaders, last member only)
    rejects what it can see from the index's last line and the file's length, and names the file."""
    src = Path(list_shards(shard_dir)[0])
    good = src.read_bytes()
    idx = src.with_suffix(".idx").read_text()
    n = int(idx.split()[1])
    t = tmp_path / "shard-000000.tar"

    def case(data, index=idx):
        t.write_bytes(data)
        t.with_suffix(".idx").write_text(index)
        return _ok(t, n), _ok(t, full=False)

    assert case(good) == (True, True)
    assert case(good[:len(good) // 2]) == (False, False)  # truncated
    assert case(good[:-1024]) == (False, True)  # lost its end blocks: the last member is still whole
    assert case(good + bytes(10240)) == (False, True)  # grown
    flipped = bytearray(good)
    flipped[3] ^= 0x20  # the first header's name: name and checksum disagree
    assert case(bytes(flipped)) == (False, True)
    last = bytearray(good)
    off = int(idx.splitlines()[-1].split()[-3]) - 512  # the header of the last member
    last[off] ^= 0x20
    assert case(bytes(last)) == (False, False)
    assert case(good, index=idx.replace(f"v1.2 {n}", f"v1.2 {n + 1}")) == (False, True)  # count != lines
    assert case(good, index=idx.replace("v1.2", "v1.1")) == (False, True)  # not our version
    assert case(good, index="garbage\n") == (False, False)
    assert case(good, index=idx.rsplit("\n", 2)[0] + "\njpg 12 x\n") == (False, False)  # malformed line
    t.with_suffix(".idx").unlink()
    assert not _ok(t, n) and not _ok(t, full=False)


@pytest.mark.parametrize("full", [True, False])
def test_verify_messages_name_the_file_and_the_fix(shard_dir, tmp_path, full):
    src = Path(list_shards(shard_dir)[0])
    t = tmp_path / src.name
    t.write_bytes(src.read_bytes()[:3000])
    t.with_suffix(".idx").write_text(src.with_suffix(".idx").read_text())
    with pytest.raises(DataError) as e:
        verify_shard(t, full=full)
    msg = str(e.value)
    assert f"shard {t} is truncated" in msg and "python -m wslfast.data shards" in msg and "\n" not in msg
    t.with_suffix(".idx").write_text("hello\n")
    with pytest.raises(DataError, match=f"shard index {t.with_suffix('.idx')} is not a webdataset index"):
        verify_shard(t, full=full)
    t.with_suffix(".idx").unlink()
    with pytest.raises(DataError, match="unreadable"):
        verify_shard(t, full=full)


def test_fast_headers_are_tarfiles_headers():
    rng = random.Random(0)
    for _ in range(2000):
        name = "".join(rng.choice("abz_09.-/") for _ in range(rng.randint(1, 120)))
        size = rng.choice([0, 1, 511, 512, 513, rng.randint(0, 8**11 - 1)])  # USTAR sizes: < 8 GiB
        assert _header(name, size) == _tarfile_header(name, size), (name, size)
    assert _header("café.json", 5) == _tarfile_header("café.json", 5)


def test_list_shards_counts_whole_shards_only(tmp_path):
    for name in ("shard-000001.tar", "shard-000001.idx", "shard-000000.tar", "shard-000000.idx",
                 "shard-000002.tar", ".shard-000003.tar.tmp", ".x.tar", ".x.idx"):
        (tmp_path / name).write_bytes(b"")
    assert list_shards(tmp_path) == [str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000001.tar")]
    with pytest.raises(FileNotFoundError):
        list_shards(tmp_path / "missing")


def test_manifest_round_trip_and_refusals(tmp_path):
    m = {"format": MANIFEST_FORMAT, "version": 1, "num_classes": 3, "name": "x"}
    path = write_manifest(tmp_path, m)
    assert path == tmp_path / MANIFEST and json.loads(path.read_text()) == m
    assert read_manifest(tmp_path) == m == read_manifest(tmp_path / "shard-000000.tar") == read_manifest(path)
    with pytest.raises(ValueError):
        write_manifest(tmp_path, {"num_classes": 3})
    path.write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a wslfast shard manifest"):
        read_manifest(tmp_path)
    path.write_text("[1, 2")
    with pytest.raises(DataError, match="not a wslfast shard manifest"):
        read_manifest(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "empty")


def test_counts_round_trip_and_bad_lines(tmp_path):
    counts = {"#dog": 3, "café": 1, "a b": 7}
    write_counts(tmp_path / "c.tsv", counts)
    assert (tmp_path / "c.tsv").read_text(encoding="utf-8") == "#dog\t3\na b\t7\ncafé\t1\n"
    assert read_counts(tmp_path / "c.tsv") == counts
    (tmp_path / "d.tsv").write_text("dog\t2\n\ndog\t5\ncat\t-1\n")
    assert read_counts(tmp_path / "d.tsv") == {"dog": 7, "cat": -1}  # repeats add up; the vocabulary refuses < 0
    for bad, line in (("dog 3\n", 1), ("dog\t3\ncat\tmany\n", 2), ("a\tb\t3\n", 1)):
        (tmp_path / "e.tsv").write_text(bad)
        with pytest.raises(DataError, match=rf"e.tsv:{line}: expected 'hashtag<TAB>count'"):
            read_counts(tmp_path / "e.tsv")
