"""Loads tests/ops/host/kernel_math.cpp, the CUDA kernels' own __host__ __device__ math compiled for the
CPU (plain C++17, ~2 s with g++), as a ctypes library. Compiled once per source version into the temp
folder; tests skip when no C++ compiler is found."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "ops" / "host" / "kernel_math.cpp"
HEADERS = [ROOT / "csrc" / "soft_ce" / "soft_ce_math.h", ROOT / "csrc" / "conv_bn" / "conv_bn_stats.h",
           ROOT / "csrc" / "conv_bn" / "conv_bn_mma_index.h"]

I64, I32, F32, F64 = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_double
P = ctypes.c_void_p

SIGNATURES = {
    "softce_merge": (None, [F32, F32, F32, F32, P]),
    "softce_check_rows": (None, [P, P, I64, I64, P]),
    "softce_choose_splits": (I64, [I64, I64, I64]),
    "softce_split_range": (None, [I64, I64, I64, I64, P]),
    "stats_chan_merge": (None, [P, P, P]),
    "mma_frag": (None, [I32, I32, I32, I32, I32, I32, I32, P]),
    "mma_slots": (None, [I32, I32, I32, P]),
    "mma_gemm_offset": (I64, [I32, P, I64, I64, I64]),
    "mma_wgrad_offset": (I64, [I32, P, I64, I64, I64]),
    "mma_wgrad_plan": (None, [I64, I64, I64, P]),
    "mma_consts": (I32, [I32]),
}


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the kernels' host math")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in [SOURCE, *HEADERS])).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"wslfast-kernel-math-{digest}.so"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.so")
        r = subprocess.run([cxx, "-std=c++17", "-O1", "-fno-trapping-math", "-shared", "-fPIC", str(SOURCE), "-o",
                            str(tmp)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-4000:]
        os.replace(tmp, out)
    lib = ctypes.CDLL(str(out))
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def ptr(t):
    """Data pointer of a contiguous torch tensor (or numpy array) for the ctypes calls."""
    if hasattr(t, "data_ptr"):
        assert t.is_contiguous()
        return ctypes.c_void_p(t.data_ptr())
    return t.ctypes.data_as(ctypes.c_void_p)
