"""CMakeLists.txt builds a working wslfast._C: the CPU-only build (about 1.5 min on one core), loaded
from a copy of the package, and, where a CUDA toolkit is found, the CUDA configure step.

Skipped without cmake. MAX_JOBS sets the build's parallelism (default 2, as scripts/setup.sh).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wslfast

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CMAKE is None, reason="cmake is not installed"),
]

CHECK = r"""
import json, torch, wslfast
from wslfast import _C
from wslfast.ops import SparseTargets, soft_target_cross_entropy
info = wslfast.build_info()
z = torch.randn(4, 37, generator=torch.Generator().manual_seed(0))
t = SparseTargets.from_lists([[1, 5], [], [36], [0, 2, 3]], 37)
got = soft_target_cross_entropy(z, t, "none")
ref = -(t.to_dense(torch.float64) * torch.log_softmax(z.double(), 1)).sum(1)
import numpy as np
from wslfast.data.build import dedup
ref_h = np.arange(1, 2000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
q = np.concatenate([ref_h[:50] ^ np.uint64(0b101), ref_h[:50] ^ np.uint64(0xFFFF)])
near = dedup.HashIndex(ref_h, 10).contains_near(q)
torch.set_num_threads(2)
print(json.dumps({"info": info, "module": _C.__file__, "err": (got.double() - ref).abs().max().item(),
                  "threads": _C.cpu_parallel_threads(64), "dedup": dedup._lookup_extension() is not None,
                  "near": near.tolist() == (dedup.near_duplicates_brute(q, ref_h, 10)).tolist()}))
"""


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def configure(build: Path, *options):
    env = {k: v for k, v in os.environ.items() if k not in ("WSLFAST_FORCE_CPU", "WSLFAST_CUDA_ARCHS")}
    return run([CMAKE, "-S", ROOT, "-B", build, f"-DPython_EXECUTABLE={sys.executable}", *options], env=env)


def test_cpu_only_build_loads_and_computes(tmp_path):
    build = tmp_path / "build"
    out = configure(build, "-DWSLFAST_WITH_CUDA=OFF")
    assert "wslfast: building without CUDA" in out
    run([CMAKE, "--build", build, "--parallel", os.environ.get("MAX_JOBS", "2")])
    built = sorted(build.glob("_C*.so"))
    assert len(built) == 1, built
    dedup_built = sorted(build.glob("_dedup*.so"))
    assert len(dedup_built) == 1, dedup_built

    # A copy of the Python package with the CMake-built module in it, imported from a fresh process.
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "wslfast", pkg / "wslfast", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for so in built + dedup_built:
        shutil.copy2(so, pkg / "wslfast" / so.name)
    env = dict(os.environ, PYTHONPATH=str(pkg))
    result = json.loads(run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env).strip().splitlines()[-1])

    assert Path(result["module"]).parent == pkg / "wslfast"
    info = result["info"]
    assert info["version"] == wslfast.__version__
    assert info["torch"] == torch.__version__
    assert info["cuda_compiled"] is False and info["cuda_archs"] == []
    assert result["err"] < 1e-4
    assert result["dedup"] and result["near"]
    if sys.platform == "linux":
        assert info["openmp"] is True and result["threads"] == 2


def cuda_home():
    """The toolkit setup.py would build the CUDA kernels with, or None."""
    code = "import os, sys; sys.path.insert(0, sys.argv[1]); import setup; print(os.environ.get('CUDA_HOME', ''))"
    home = run([sys.executable, "-c", code, ROOT]).strip()
    return home if home and (Path(home) / "bin" / "nvcc").exists() else None


def test_cuda_configure_finds_the_toolkit(tmp_path):
    if cuda_home() is None:
        pytest.skip("no CUDA toolkit (setup.py builds CPU-only here too)")
    if torch.version.cuda is None:
        pytest.skip("torch was built without CUDA")
    build = tmp_path / "build"
    out = configure(build, "-DWSLFAST_CUDA_ARCHS=90a;80", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON")
    assert "wslfast: building with CUDA" in out and "archs 90a;80" in out
    commands = {Path(c["file"]).name: c["command"]
                for c in json.loads((build / "compile_commands.json").read_text())}
    kernel = commands["soft_ce_cuda.cu"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in kernel and "-std=c++20" in kernel
    assert "-std=c++17" not in kernel
    glue = commands["conv_bn_cuda_glue.cpp"]
    assert "-DWSLFAST_WITH_CUDA" in glue and "90a;80" in glue
