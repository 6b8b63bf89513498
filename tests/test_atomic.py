"""wslfast.atomic: a file is replaced whole or not at all, and no temporary file is left behind."""
import os

import pytest

from wslfast.atomic import atomic_write


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")
    with atomic_write(path, "w") as f:
        f.write("new é")
        assert path.read_text() == "old"  # nothing visible before the rename
    assert path.read_text(encoding="utf-8") == "new é" and os.listdir(tmp_path) == ["m.json"]
    with atomic_write(str(path)) as f:  # binary by default, str paths too
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"good" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_new_file_in_an_empty_folder(tmp_path):
    with atomic_write(tmp_path / "a.npz", suffix=".npz") as f:
        f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]
