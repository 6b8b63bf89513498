"""The scripts' command line: --help lists every declared key with its default, help and type; user errors
are one line, bugs keep their traceback; --debug keeps every traceback."""
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import pytest

from wslfast.engine import CheckpointError, ConfigError, command_line, is_user_error, usage


@dataclass
class Keys:
    SECTIONS: ClassVar[dict] = {"batch_size": "optimisation", "out": "run"}

    batch_size: int = 32
    """images per rank"""
    lr: Optional[float] = None
    """peak learning rate; null -> the paper's rule"""
    amp: Literal["none", "bf16"] = "none"
    """mixed precision"""
    out: str = "runs/x"
    """the run's folder"""
    fused: bool = True
    total_images: int = 3_500_000
    note: str = ""


def test_usage_lists_every_key_with_default_help_and_type():
    text = usage(Keys, "The script.\n\nMore.", width=120)
    assert text.startswith("The script.\n\nMore.")
    for key, default, rest in [("batch-size", "32", "images per rank (int)"),
                               ("lr", "null", "peak learning rate; null -> the paper's rule (float | null)"),
                               ("amp", "none", "mixed precision (none | bf16)"), ("out", "runs/x", "(str)"),
                               ("fused", "true", "(bool)"), ("total-images", "3_500_000", "(int)"),
                               ("note", '""', "(str)")]:
        line = next(line for line in text.splitlines() if line.startswith(f"  --{key} "))
        assert line.split()[:2] == [f"--{key}", default] and line.endswith(rest), line
    assert text.index("  # optimisation") < text.index("--batch-size") < text.index("  # run") < text.index("--out")
    assert "--debug" in text and "SECTIONS" not in text


def test_usage_wraps_long_help_and_keeps_the_type_whole():
    text = usage(Keys, None, width=70)
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("  --lr null"))
    assert lines[i + 1].strip().endswith("(float | null)") and all(len(line) <= 70 for line in lines[i:i + 2])


def test_help_exits_zero_and_prints_usage(capsys):
    with pytest.raises(SystemExit) as e:
        command_line(Keys, "Doc.", ["--lr", "0.1", "--help"])
    assert e.value.code == 0
    assert "--batch-size 32" in capsys.readouterr().out
    sys.excepthook = sys.__excepthook__


def test_debug_is_taken_out_before_the_keys_are_checked():
    cfg = command_line(Keys, None, ["--debug", "--lr", "0.5"])
    assert cfg.debug is True and cfg.lr == 0.5
    assert command_line(Keys, None, ["--debug=false"]).debug is False
    sys.excepthook = sys.__excepthook__


def test_user_errors_and_bugs():
    assert is_user_error(ConfigError("x")) and is_user_error(CheckpointError("x"))
    assert is_user_error(FileNotFoundError("x"))
    assert not is_user_error(KeyError("x")) and not is_user_error(ZeroDivisionError())


SCRIPT = """
import sys
from dataclasses import dataclass
from typing import Optional, Tuple
from wslfast.engine import command_line

@dataclass
class Keys:
    batch_size: int = 32
    lr: Optional[float] = None
    betas: Optional[Tuple[float, float]] = None

cfg = command_line(Keys, None)
if cfg.batch_size == 1:
    1 / 0
"""


@pytest.mark.parametrize("args,line,traceback", [
    (["--batch-sise", "8"], "error: command line: unknown key 'batch-sise' (did you mean 'batch-size'?)", False),
    (["--batch-size", "x"], "error: command line: key 'batch_size': expected an integer, got 'x'", False),
    (["--betas", "0.9"], "error: command line: key 'betas': expected a list of 2 numbers like [0.9, 0.999] or "
                         "null, got '0.9'", False),
    (["--batch-sise", "8", "--debug"], "ConfigError", True),
    (["--batch-size", "1"], "ZeroDivisionError", True),  # a bug keeps its traceback
])
def test_one_line_errors_in_a_script(tmp_path, args, line, traceback):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": "."})
    assert proc.returncode == 1
    assert line in proc.stderr
    assert ("Traceback" in proc.stderr) == traceback
    if not traceback:
        assert proc.stderr.strip() == line  # exactly one line


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    """`pretrain.py --help | head -1`: the reader leaves early; no BrokenPipeError traceback, exit 0."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = ("import sys\nfrom wslfast.engine import command_line\nfrom wslfast.engine.config import *\n"
              "from dataclasses import dataclass\n@dataclass\nclass C:\n    lr: float = 0.1\n"
              "command_line(C, 'doc\\n' * 20000, ['--help'])\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": root})
    proc.stdout.readline()
    proc.stdout.close()  # like `head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err
