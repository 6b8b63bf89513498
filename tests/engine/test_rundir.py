"""A run folder belongs to one run: same config continues, anything that would mix two runs is refused
with one line naming what differs."""
import json

import pytest
import torch

from wslfast.engine import RunFolderError, check_run_folder, config_diff, save_checkpoint, write_run_file

CFG = dict(lr=0.1, batch_size=8, arch="resnext_tiny", steps=100, out="x", resume="auto", config=None)


def _run_with_checkpoints(out, cfg=CFG, steps=(10, 20)):
    write_run_file(str(out), cfg)
    for s in steps:
        save_checkpoint({"step": s, "model": {}, "config": cfg}, str(out), s)


def test_empty_or_never_saved_folder_is_free(tmp_path):
    check_run_folder(str(tmp_path / "new"), CFG, "none")
    write_run_file(str(tmp_path / "new"), dict(CFG, lr=5.0))  # a run that never saved a checkpoint
    check_run_folder(str(tmp_path / "new"), CFG, "none")


def test_same_run_continues_and_resumable_keys_may_change(tmp_path):
    _run_with_checkpoints(tmp_path)
    check_run_folder(str(tmp_path), CFG, "auto")
    check_run_folder(str(tmp_path), dict(CFG, steps=500, out="y", config="a.yaml"), "auto")


def test_different_config_is_refused_naming_the_keys(tmp_path):
    _run_with_checkpoints(tmp_path)
    with pytest.raises(RunFolderError) as e:
        check_run_folder(str(tmp_path), dict(CFG, lr=0.2, batch_size=16), "auto")
    msg = str(e.value)
    assert "lr 0.1 there, 0.2 here" in msg and "batch_size 8 there, 16 here" in msg and "new --out" in msg
    assert "\n" not in msg


def test_resume_none_over_checkpoints_is_refused(tmp_path):
    _run_with_checkpoints(tmp_path)
    with pytest.raises(RunFolderError, match=r"ckpt_000000020.pt.*--resume none"):
        check_run_folder(str(tmp_path), CFG, "none")


def test_resume_from_behind_newer_checkpoints_is_refused(tmp_path):
    _run_with_checkpoints(tmp_path)
    with pytest.raises(RunFolderError, match="past step 10"):
        check_run_folder(str(tmp_path), CFG, str(tmp_path / "ckpt_000000010.pt"))
    check_run_folder(str(tmp_path), CFG, str(tmp_path / "ckpt_000000020.pt"))


def test_folder_without_run_file_is_judged_by_its_newest_checkpoint(tmp_path):
    for s in (10, 20):
        save_checkpoint({"step": s, "model": {}, "config": dict(CFG, arch="resnext101_32x8d")}, str(tmp_path), s)
    with pytest.raises(RunFolderError, match="arch 'resnext101_32x8d' there, 'resnext_tiny' here"):
        check_run_folder(str(tmp_path), CFG, "auto")


def test_unreadable_run_file_is_one_line(tmp_path):
    _run_with_checkpoints(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="run.json is unreadable"):
        check_run_folder(str(tmp_path), CFG, "auto")


def test_run_file_and_diff():
    assert config_diff({"a": 1, "steps": 2, "old": 3}, {"a": 1, "steps": 5, "new": 4}) == []
    assert config_diff({"a": [1, 2]}, {"a": [1, 3]}) == ["a [1, 2] there, [1, 3] here"]


def test_run_file_holds_the_config(tmp_path):
    path = write_run_file(str(tmp_path), dict(CFG, device=torch.device("cpu")))
    assert json.load(open(path))["config"]["lr"] == 0.1


def test_claim_run_folder_writes_run_json_or_refuses(tmp_path):
    from wslfast.engine import DistInfo, claim_run_folder

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    claim_run_folder(info, str(tmp_path / "new"), CFG, "auto")
    assert json.load(open(tmp_path / "new" / "run.json"))["config"] == CFG
    _run_with_checkpoints(tmp_path / "old")
    with pytest.raises(RunFolderError, match="lr 0.1 there, 0.3 here"):
        claim_run_folder(info, str(tmp_path / "old"), dict(CFG, lr=0.3), "auto")
    assert json.load(open(tmp_path / "old" / "run.json"))["config"] == CFG  # the other run's file is kept
