"""`python -m wslfast.check`: the self-check users run after installing. On this CPU machine it checks
every CPU kernel, times them, skips the CUDA rows with a note, and exits 1 when a kernel is wrong."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from wslfast import check

ROOT = Path(__file__).resolve().parents[1]


def test_check_runs_as_a_module_on_cpu_and_says_cuda_was_skipped():
    r = subprocess.run([sys.executable, "-m", "wslfast.check", "--device", "all", "--quick", "--reps", "1",
                        "--threads", "1"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kernel"))
    for col in ("device", "max error", "pass", "ours ms", "stock ms", "ratio"):
        assert col in lines[header]
    rows = [line for line in lines[header + 2:] if " cpu " in line]
    kernels = {"soft_ce", "linear_soft_ce", "conv_bn_relu train", "conv_bn_relu eval"}
    assert all(any(line.startswith(k + " ") for line in rows) for k in kernels)
    assert all(" yes " in line for line in rows), rows
    timed = [line for line in rows if "timed at" in line]
    assert len(timed) == 2 and all(line.split()[-5] != "-" for line in timed)  # a ratio was measured
    if not torch.cuda.is_available():
        assert any("skipped: no CUDA device" in line for line in lines)
    assert "0 failed" in lines[-1]


def test_a_wrong_kernel_fails_the_check_with_exit_status_1(monkeypatch, capsys):
    real = check.soft_ce_ours
    monkeypatch.setattr(check, "soft_ce_ours", lambda z, t: real(z, t) * 1.001)
    assert check.main(["--device", "cpu", "--no-timing"]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("soft_ce fwd+bwd")]
    assert bad and all("FAIL" in line for line in bad)
    assert any(line.startswith("conv_bn_relu train") and " yes " in line for line in out.splitlines())


def test_an_exception_in_a_kernel_is_a_failed_row_not_a_crash(monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(check, "check_linear_soft_ce", broken)
    assert check.main(["--device", "cpu", "--no-timing"]) == 1
    out = capsys.readouterr().out
    assert "RuntimeError: boom" in out and "second line" not in out
