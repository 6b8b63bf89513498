"""The scripts' command line: --help lists every key with its default; user errors are one line, bugs keep
their traceback; --debug keeps every traceback."""
import subprocess
import sys

import pytest

from wslfast.engine import CheckpointError, ConfigError, command_line, is_user_error, usage
from wslfast.engine.cli import _comments

DEFAULTS = dict(batch_size=32, lr=None, out="runs/x", fused=True, total_images=3_500_000, note="")


def test_usage_lists_every_key_with_its_default():
    text = usage(DEFAULTS, "The script.\n\nMore.")
    assert text.startswith("The script.")
    for line in ("--batch-size 32", "--lr null", "--out runs/x", "--fused true", "--total-images 3_500_000",
                 '--note ""', "--debug"):
        assert line in text, line


def test_help_exits_zero_and_prints_usage(capsys):
    with pytest.raises(SystemExit) as e:
        command_line(DEFAULTS, "Doc.", ["--lr", "0.1", "--help"])
    assert e.value.code == 0
    assert "--batch-size 32" in capsys.readouterr().out


def test_debug_is_taken_out_before_the_keys_are_checked():
    cfg = command_line(DEFAULTS, None, ["--debug", "--lr", "0.5"])
    assert cfg.debug is True and cfg.lr == 0.5
    assert command_line(DEFAULTS, None, ["--debug=false"]).debug is False
    sys.excepthook = sys.__excepthook__


def test_comments_come_from_the_defaults_block(tmp_path):
    script = tmp_path / "s.py"
    script.write_text('DEFAULTS = dict(\n    # data\n    data="x", size=3,   # pixels\n    lr=None,\n)\n')
    notes = _comments(str(script))
    assert notes["size"] == ("pixels", "data") and notes["data"] == ("", "data") and notes["lr"][0] == ""
    text = usage(dict(data="x", size=3, lr=None), None, str(script))
    assert "  # data" in text and "--size 3" in text and "# pixels" in text


def test_user_errors_and_bugs():
    assert is_user_error(ConfigError("x")) and is_user_error(CheckpointError("x"))
    assert is_user_error(FileNotFoundError("x"))
    assert not is_user_error(KeyError("x")) and not is_user_error(ZeroDivisionError())


SCRIPT = """
import sys
from wslfast.engine import command_line
cfg = command_line(dict(batch_size=32), None)
if cfg.batch_size == 1:
    1 / 0
"""


@pytest.mark.parametrize("args,rc,line,traceback", [
    (["--batch-sise", "8"], 1, "error: command line: unknown key 'batch-sise' (did you mean 'batch-size'?)", False),
    (["--batch-size", "x"], 1, "error: config key 'batch_size': expected an integer, got 'x'", False),
    (["--batch-sise", "8", "--debug"], 1, "ConfigError", True),
    (["--batch-size", "1"], 1, "ZeroDivisionError", True),  # a bug keeps its traceback
])
def test_one_line_errors_in_a_script(tmp_path, args, rc, line, traceback):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": "."})
    assert proc.returncode == rc
    assert line in proc.stderr
    assert ("Traceback" in proc.stderr) == traceback
    if not traceback:
        assert proc.stderr.strip().count("\n") == 0  # exactly one line
