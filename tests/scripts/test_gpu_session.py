"""The GPU-session tools run as documented: the kernel tour (the compute-sanitizer driver) on CPU, its
refusal without CUDA, and the session script's phase handling."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_kernel_tour_runs_every_case_on_cpu():
    r = subprocess.run([sys.executable, "scripts/cuda_kernel_tour.py", "--device", "cpu"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.rstrip().endswith("all kernels ran and matched")
    oks = [line for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert sum("soft_ce" in line for line in oks) == 12  # 2 sizes x 2 dtypes x (loss, grad) + 4 linear
    # cases x training x (relu; relu + residual, which adds its gradient; no relu) outputs
    assert sum("conv_bn" in line for line in oks) == 4 * 2 * (7 + 8 + 7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_kernel_tour_says_when_there_is_no_cuda():
    r = subprocess.run([sys.executable, "scripts/cuda_kernel_tour.py"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


def test_session_script_is_valid_bash_and_counts_failed_phases(tmp_path):
    assert subprocess.run(["bash", "-n", "scripts/gpu_session.sh"], cwd=ROOT).returncode == 0
    r = subprocess.run(["bash", "scripts/gpu_session.sh", "no-such-phase", "also-not"], cwd=ROOT,
                       env=dict(ENV, OUT=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "unknown phase 'no-such-phase'" in r.stderr


def test_session_script_phases_call_the_benchmarks_as_planned(tmp_path):
    # PYTHON=echo: each phase writes the command it would run to its log instead of running it.
    r = subprocess.run(["bash", "scripts/gpu_session.sh", "bench-conv-8", "bench-conv-16", "bench-step"], cwd=ROOT,
                       env=dict(ENV, OUT=str(tmp_path), PYTHON="echo"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    conv8 = (tmp_path / "bench_conv_bn_8.log").read_text().split()
    conv16 = (tmp_path / "bench_conv_bn_16.log").read_text().split()
    step = (tmp_path / "bench_train_step.log").read_text().split()
    assert conv8[:5] == ["benchmarks/bench_conv_bn.py", "--device", "cuda", "--widths", "8"]
    assert "--no-step" not in conv8 and "--no-step" in conv16 and conv16[4] == "16"
    assert step[0] == "benchmarks/bench_train_step.py" and "synthetic" in step and "resnext101_32x8d" in step
    assert all(words[-2:] == ["--out", str(tmp_path / "results.json")] for words in (conv8, conv16, step))
