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
    # 3 (size, splits) x 2 dtypes x (loss, grad) + 4 linear (+ the broken-CSR case on CUDA only)
    assert sum("soft_ce" in line for line in oks) == 16
    # cases x training x (relu; relu + residual, which adds its gradient; no relu) outputs; 5 cases, one of them
    # 4 channels a group at an even width (the forward's pixel pairs, for compute-sanitizer on the GPU)
    assert sum("conv_bn" in line for line in oks) == 5 * 2 * (7 + 8 + 7)
    assert sum("(2, 128, 8, 8, 128, 32, 3, 1)" in line for line in oks) == 2 * (7 + 8 + 7)


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


def run_default(tmp_path, **env):
    return subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(ENV, OUT=str(tmp_path), PYTHON="echo", SANITIZER="echo", **env))


def test_one_call_runs_every_phase_in_order_of_value_and_installs_nothing(tmp_path):
    r = run_default(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ran = [line.split("]")[0][1:] for line in (tmp_path / "summary.txt").read_text().splitlines()
           if line.startswith("[")]
    assert ran == ["build", "check", "test", "emu_compare", "memcheck", "racecheck", "bench_soft_ce",
                   "bench_conv_bn_4", "bench_train_step", "profile_step"]
    build = (tmp_path / "build.log").read_text().split()
    assert build == ["setup.py", "build_ext", "--inplace"]  # in place: no pip, nothing replaces torch
    assert (tmp_path / "check.log").read_text().split() == ["-m", "wslfast.check"]
    compare = (tmp_path / "emu_compare.log").read_text().split()
    assert compare == ["scripts/emu_gpu_compare.py", "--out", str(tmp_path / "emu_compare")]
    memcheck = (tmp_path / "memcheck.log").read_text().split()
    assert memcheck[:2] == ["--tool", "memcheck"] and "scripts/cuda_kernel_tour.py" in memcheck
    # every phase has a time box, and the boxes are cut to one shared deadline of at most 9 minutes
    text = (ROOT / "scripts" / "gpu_session.sh").read_text()
    assert "BUDGET=${BUDGET:-520}" in text and "MAX_JOBS:-16" in text and "WSLFAST_CUDA_ARCHS:-90a}" in text
    assert "pip install" not in text


def test_phases_past_the_shared_deadline_are_skipped_and_counted(tmp_path):
    r = run_default(tmp_path, BUDGET="10")
    summary = (tmp_path / "summary.txt").read_text()
    assert r.returncode == 10 and summary.count("skipped: the 10 s budget is spent") == 10
