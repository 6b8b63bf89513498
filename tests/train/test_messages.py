"""Ordinary mistakes on the train/ scripts end in one `error:` line naming the key or file and what was
expected, with a non-zero exit status and no traceback (unless --debug); --help lists every key."""
import os
import re

import pytest
import torch

from tests.train.conftest import PRETRAIN, TRANSFER, load_script, run_script
from wslfast.engine import config_keys

pytestmark = pytest.mark.slow
SCHEMAS = {PRETRAIN: "PretrainConfig", TRANSFER: "TransferConfig"}


def _one_error_line(proc, *needles):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("script", [PRETRAIN, TRANSFER], ids=["pretrain", "transfer"])
def test_help_lists_every_key_with_its_default_and_help(script):
    proc = run_script(script, ["--help"], timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    text = " ".join(proc.stdout.split())  # help texts wrap
    for key in config_keys(getattr(load_script(script), SCHEMAS[script])):
        value = key.default
        shown = {None: "null", True: "true", False: "false", "": '""'}.get(value, value) \
            if not isinstance(value, (int, float)) or isinstance(value, bool) else value
        if isinstance(shown, int) and abs(shown) >= 10_000:
            shown = f"{shown:_}"
        assert f"--{key.name.replace('_', '-')} {shown} {key.help}" in text, key.name


# (the other types and checks are tested in-process: tests/engine/test_config.py, test_script_functions.py)
@pytest.mark.parametrize("script,args,line", [
    (PRETRAIN, ["--lr", "abc"], "command line: key 'lr': expected a number or null, got 'abc'"),
    (PRETRAIN, ["--betas", "0.9"], "command line: key 'betas': expected a list of 2 numbers like [0.9, 0.999] or "
                                   "null, got '0.9'"),
    (PRETRAIN, ["--steps", "x"], "command line: key 'steps': expected an integer or null, got 'x'"),
    (TRANSFER, ["--pooling", "mean"], "command line: key 'pooling': expected one of logsumexp, max, got 'mean'"),
], ids=["lr", "betas", "steps", "transfer-pooling"])
def test_wrong_value_is_one_line_naming_key_and_type(script, args, line, tmp_path):
    proc = run_script(script, args + ["--out", tmp_path / "out"], timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {line}", proc.stderr
    assert not os.path.exists(tmp_path / "out")  # refused before anything was written


@pytest.mark.parametrize("text,needle", [("lr: abc\n", "key 'lr': expected a number or null, got 'abc'")])
def test_wrong_type_in_yaml(text, needle, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    proc = run_script(PRETRAIN, ["--config", path], timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: config file {str(path)!r}: {needle}", proc.stderr


@pytest.mark.parametrize("script", [PRETRAIN, TRANSFER], ids=["pretrain", "transfer"])
def test_misspelled_key(script, tmp_path):
    proc = run_script(script, ["--batch-sise", "8", "--out", tmp_path], timeout=60)
    _one_error_line(proc, "unknown key 'batch-sise'", "did you mean 'batch-size'")
    debug = run_script(script, ["--batch-sise", "8", "--debug"], timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_batch_larger_than_the_data(small_args, tmp_path):
    proc = run_script(PRETRAIN, small_args + ["--batch-size", "1000", "--steps", "2", "--out", tmp_path / "r"])
    line = _one_error_line(proc, "batch_size 1000 is larger than the data", "synthetic-n48", "/shards/shards-")
    n = int(re.search(r"holds (\d+) samples", line).group(1))
    assert 40 <= n <= 48 and line.endswith(f"give a batch_size of at most {n}")


def test_corrupt_checkpoint(small_args, small_checkpoint, tmp_path):
    bad = tmp_path / "ckpt_000000002.pt"
    data = open(small_checkpoint, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    proc = run_script(PRETRAIN, small_args + ["--resume", bad, "--steps", "3", "--out", tmp_path / "r"])
    line = _one_error_line(proc, f"cannot read checkpoint {bad}", "truncated or damaged")
    assert "weights_only" not in proc.stderr and "issue" not in line
    proc = run_script(TRANSFER, ["--checkpoint", bad, "--device", "cpu"], timeout=60)
    _one_error_line(proc, f"cannot read checkpoint {bad}", "truncated or damaged")
    code = tmp_path / "code.pt"
    torch.save({"step": 1, "model": {}, "hook": os.path.join}, code)  # a pickled function: never loaded
    proc = run_script(TRANSFER, ["--checkpoint", code, "--device", "cpu"], timeout=60)
    _one_error_line(proc, f"cannot read checkpoint {code}", "not loaded for safety")
    assert "weights_only" not in proc.stderr


def test_image_folder_without_images(small_checkpoint, tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            os.makedirs(tmp_path / "task" / split / c)
            (tmp_path / "task" / split / c / "notes.txt").write_text("no image here")
    proc = run_script(TRANSFER, ["--checkpoint", small_checkpoint, "--data", tmp_path / "task", "--device", "cpu",
                                 "--out", tmp_path / "o"])
    _one_error_line(proc, f"{tmp_path / 'task' / 'train'}: no images", "class folders")
