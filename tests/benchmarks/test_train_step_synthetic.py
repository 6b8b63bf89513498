"""benchmarks/bench_train_step.py --loader synthetic: both sides train on the same fixed batch (no data,
no DALI) and write one record each."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_synthetic_loader_runs_both_sides(tmp_path):
    out = tmp_path / "ts.json"
    cmd = [sys.executable, "benchmarks/bench_train_step.py", "--loader", "synthetic", "--steps", "2", "--warmup",
           "1", "--rounds", "1", "--batch-size", "4", "--image-size", "32", "--classes", "50", "--device", "cpu",
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    records = json.loads(out.read_text())
    assert sorted(rec["impl"] for rec in records) == ["stock", "wslfast"]
    for rec in records:
        assert rec["bench"] == "train_step" and rec["case"]["loader"] == "synthetic"
        assert rec["case"]["classes"] == 50 and rec["ms_p50"] > 0 and rec["img_per_s"] > 0
