"""Ordinary mistakes on the train/ scripts end in one `error:` line naming the key or file and what was
expected, with a non-zero exit status and no traceback (unless --debug); --help lists every key."""
import ast
import os
import re

import pytest
import torch

from tests.train.conftest import PRETRAIN, TRANSFER, run_script

pytestmark = pytest.mark.slow


def _defaults(script) -> dict:
    tree = ast.parse(open(script).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    raise AssertionError(f"{script} has no DEFAULTS = dict(...)")


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
def test_help_lists_every_key_with_its_default(script):
    proc = run_script(script, ["--help"], timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    for key, value in _defaults(script).items():
        shown = {None: "null", True: "true", False: "false", "": '""'}.get(value, value) \
            if not isinstance(value, (int, float)) or isinstance(value, bool) else value
        if isinstance(shown, int) and abs(shown) >= 10_000:
            shown = f"{shown:_}"
        assert f"--{key.replace('_', '-')} {shown}" in proc.stdout, key


@pytest.mark.parametrize("script", [PRETRAIN, TRANSFER], ids=["pretrain", "transfer"])
def test_misspelled_key(script, tmp_path):
    proc = run_script(script, ["--batch-sise", "8", "--out", tmp_path], timeout=60)
    _one_error_line(proc, "unknown key 'batch-sise'", "did you mean 'batch-size'")
    debug = run_script(script, ["--batch-sise", "8", "--debug"], timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_batch_larger_than_the_data(small_args, tmp_path):
    proc = run_script(PRETRAIN, small_args + ["--batch-size", "1000", "--steps", "2", "--out", tmp_path / "r"])
    line = _one_error_line(proc, "batch_size 1000 is larger than the data", "synthetic-n48", "/shards holds ")
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
