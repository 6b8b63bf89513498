"""Checkpoints: atomic write, keep-last pruning, weights_only loading, resume skipping damaged files."""
import os
import warnings

import pytest
import torch

from wslfast.engine import (CheckpointError, find_resumable, list_checkpoints, load_checkpoint,
                            save_checkpoint)


def _state(step):
    g = torch.Generator().manual_seed(step)
    return {"step": step, "model": {"w": torch.randn(3, 4, generator=g)}, "config": {"lr": 0.1, "tags": [1, 2]}}


def test_roundtrip_and_names(tmp_path):
    path = save_checkpoint(_state(7), str(tmp_path), 7)
    assert os.path.basename(path) == "ckpt_000000007.pt"
    back = load_checkpoint(path)
    assert back["step"] == 7 and torch.equal(back["model"]["w"], _state(7)["model"]["w"])
    assert back["config"] == {"lr": 0.1, "tags": [1, 2]}
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []  # no temporary left behind


def test_keep_last_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4, 10):
        save_checkpoint(_state(step), str(tmp_path), step, keep_last=2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [4, 10]


def test_keep_all_when_zero(tmp_path):
    for step in (5, 6, 7):
        save_checkpoint(_state(step), str(tmp_path), step, keep_last=0)
    assert len(list_checkpoints(str(tmp_path))) == 3


def test_resume_skips_corrupt_newest_with_warning(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(_state(step), str(tmp_path), step)
    newest = list_checkpoints(str(tmp_path))[-1][1]
    data = open(newest, "rb").read()
    open(newest, "wb").write(data[: len(data) // 2])  # truncated, as after a crash of a non-atomic writer
    with pytest.warns(RuntimeWarning, match="skipping"):
        path, state = find_resumable(str(tmp_path))
    assert state["step"] == 2 and path.endswith("ckpt_000000002.pt")


def test_resume_none_when_all_bad_or_absent(tmp_path):
    assert find_resumable(str(tmp_path / "missing")) == (None, None)
    (tmp_path / "ckpt_000000001.pt").write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning):
        assert find_resumable(str(tmp_path)) == (None, None)


def test_temp_files_and_strangers_are_ignored(tmp_path):
    save_checkpoint(_state(1), str(tmp_path), 1)
    (tmp_path / ".ckpt_000000002.pt.tmp.123").write_bytes(b"half")
    (tmp_path / "ckpt_final.pt").write_bytes(b"x")
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_resumable(str(tmp_path))[1]["step"] == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_weights_only_refuses_code_and_incomplete_dicts(tmp_path):
    torch.save({"step": 1, "model": {}, "x": _Evil()}, tmp_path / "ckpt_000000001.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(str(tmp_path / "ckpt_000000001.pt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "ckpt_000000002.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(str(tmp_path / "ckpt_000000002.pt"))


def test_save_requires_step(tmp_path):
    with pytest.raises(ValueError, match="step"):
        save_checkpoint({"model": {}}, str(tmp_path), 1)
