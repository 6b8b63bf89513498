"""The tensor-core conv kernels' GEMM geometry and launch plans (csrc/conv_bn/conv_bn_mma_geometry.h,
conv_bn_mma_plan.h) compiled for the host: the implicit GEMMs with pixel pairs and the data gradient's output
phases, gathered and written through the kernels' own offset functions, against torch's conv2d and its
gradients in float64; the plans' choices and bounds; the finalize's merge tree against float64 statistics.
(The kernels themselves run these functions; the emulator runs the kernels.)"""
import ctypes
import functools
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "ops" / "host" / "conv_bn_geometry.cpp"
HEADERS = [ROOT / "csrc" / "conv_bn" / n for n in ("conv_bn_mma_plan.h", "conv_bn_mma_geometry.h",
                                                  "conv_bn_mma_index.h", "conv_bn_stats.h")]
I64, I32, P = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
SIGNATURES = {
    "geom_gemm": (None, [P, I32, I32, I64, P]),
    "geom_gemm_offset": (I64, [P, I32, I32, I64, I32, I64, I64, I64]),
    "geom_wgrad": (None, [P, I32, P]),
    "geom_wgrad_offset": (I64, [P, I32, I32, I64, I64, I64]),
    "plan_gemm_tile": (None, [I64, I64, I64, I32, I32, P]),
    "plan_wgrad_tile": (None, [I64, I64, I64, I64, I64, P]),
    "plan_gemm_grid": (None, [P, I32, I32, I32, I32, P]),
    "plan_wgrad_rounds": (None, [I64, I64, I64, I64, P]),
    "plan_merge": (None, [I64, I64, P]),
    "stats_merge_tree": (None, [P, I64, I64, I64, I64, I64, I32, P]),
    "stats_sum_tree": (None, [P, I64, I64, I64, I32, P]),
}
kBM = 128


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the kernels' geometry")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in [SOURCE, *HEADERS])).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"wslfast-conv-bn-geometry-{digest}.so"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.so")
        r = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", str(SOURCE), "-o", str(tmp)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-4000:]
        os.replace(tmp, out)
    so = ctypes.CDLL(str(out))
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    return so


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def ints(fn, *args, n):
    out = np.zeros(n, np.int64)
    fn(*args, ptr(out))
    return [int(v) for v in out]


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy()


# N, C, H, W, K, groups, R, S, stride, pad: pixel pairs (4 channels a group; even / odd widths; stride 1, 2, 3;
# 1x1), output phases with taps that reach no phase, 8 channels a group at stride 2, cin_g != cout_g.
CASES = [
    (2, 16, 6, 8, 16, 4, 3, 3, 1, 1), (1, 32, 7, 7, 32, 8, 3, 3, 1, 1), (2, 16, 9, 12, 16, 4, 3, 3, 2, 1),
    (2, 32, 8, 8, 32, 4, 3, 3, 2, 1), (2, 8, 7, 8, 8, 2, 1, 1, 2, 0), (2, 16, 6, 6, 8, 2, 3, 3, 1, 1),
    (2, 8, 6, 6, 16, 2, 3, 3, 1, 1), (1, 12, 5, 4, 12, 3, 3, 3, 3, 1), (1, 8, 9, 10, 80, 1, 2, 3, 3, 2),
    (2, 16, 5, 6, 32, 1, 1, 1, 2, 0), (1, 32, 5, 6, 8, 2, 3, 3, 1, 1),
]


def run_gemms(dims, dgrad, pix, inp, wt, out_elems, vec):
    """out = A @ B^T for every phase and group, gathered and placed by the kernels' offset functions."""
    so = lib()
    d = np.array(dims, np.int64)
    groups, cin, cout = dims[11], dims[3], dims[6]
    cin_g, cout_g = cin // groups, cout // groups
    flat_in, flat_w = inp.reshape(-1), wt.reshape(-1)
    out = np.full(out_elems, np.nan)
    phases = ints(so.geom_gemm, ptr(d), int(dgrad), pix, 0, n=5)[4]
    for ph in range(phases):
        M, Kg, _Ho, _Wo, _ = ints(so.geom_gemm, ptr(d), int(dgrad), pix, ph, n=5)
        for g in range(groups):
            off = lambda kind, a, b: so.geom_gemm_offset(ptr(d), int(dgrad), pix, ph, kind, g, a, b)  # noqa: E731
            A = np.zeros((M, Kg))
            for m in range(M + 1):
                for k0 in range(0, Kg + vec, vec):  # the loaders' pieces, one past each end
                    o = off(0, m, k0)
                    if m >= M or k0 >= Kg:
                        assert o == -1
                    elif o >= 0:
                        assert o % vec == 0 and o + vec <= flat_in.size, "misaligned or out-of-bounds load"
                        A[m, k0:k0 + vec] = flat_in[o:o + vec]
                        assert off(1, 0, k0) == o % cin  # the BN channel of the loaded piece
            cols = pix * cout_g
            B = np.zeros((cols, Kg))
            for j, k0 in itertools.product(range(cols + 1), range(0, Kg + vec, vec)):
                o = off(2, j, k0)
                if j >= cols or k0 >= Kg:
                    assert o == -1
                elif o >= 0:
                    assert o % vec == 0 and o + vec <= flat_w.size
                    B[j, k0:k0 + vec] = flat_w[o:o + vec]
            D = A @ B.T
            for m, j in itertools.product(range(M + 1), range(cols + 1)):
                o = off(3, m, j)
                if m >= M or j >= cols:
                    assert o == -1
                elif o >= 0:
                    assert np.isnan(out[o]), "output written twice"
                    out[o] = D[m, j]
    assert not np.isnan(out).any(), "output element never written"
    return out


def tile(cin_g, cout_g, out_w, dgrad):
    return ints(lib().plan_gemm_tile, cin_g, cout_g, out_w, int(dgrad), 0, n=3)


@pytest.mark.parametrize("case", CASES)
def test_forward_and_data_gradient_gemms_are_conv2d(case):
    N, C, H, W, K, G, R, S, stride, pad = case
    gen = torch.Generator().manual_seed(sum(case))
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(K, C // G, R, S, generator=gen, dtype=torch.float64)
    y = F.conv2d(x, w, None, stride, pad, 1, G)
    P, Q = y.shape[2:]
    _bn, vec, pix = tile(C // G, K // G, Q, False)
    for p in sorted({1, pix}):  # the plan's choice, and one pixel a row
        dims = [N, H, W, C, P, Q, K, R, S, stride, pad, G]
        got = run_gemms(dims, False, p, nhwc(x), w.permute(0, 2, 3, 1).contiguous().numpy(), y.numel(), vec)
        np.testing.assert_allclose(got, nhwc(y).reshape(-1), rtol=1e-10, atol=1e-10)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    w_t = w.reshape(G, K // G, C // G, R, S).permute(0, 2, 3, 4, 1).contiguous().numpy()  # as the glue permutes
    want = torch.nn.grad.conv2d_input(x.shape, w, dy, stride, pad, 1, G)
    _bn, vec, pix = tile(K // G, C // G, W, True)
    for p in sorted({1, pix}):
        dims = [N, P, Q, K, H, W, C, R, S, stride, pad, G]
        got = run_gemms(dims, True, p, nhwc(dy), w_t, x.numel(), vec)
        np.testing.assert_allclose(got, nhwc(want).reshape(-1), rtol=1e-10, atol=1e-10)


def test_phases_multiply_no_structural_zero():
    """3x3 and 1x1 at stride 2: every (pixel, tap) pair a phase's GEMM holds reaches a grad element or the
    padding border; the dense GEMM held R*S taps for every pixel."""
    so = lib()
    for R, pad in ((3, 1), (1, 0)):
        N, H, W, C, K, stride = 1, 16, 16, 8, 8, 2
        P = (H + 2 * pad - R) // stride + 1
        d = np.array([N, P, P, K, H, W, C, R, R, stride, pad, 1], np.int64)
        pairs = sum(ints(so.geom_gemm, ptr(d), 1, 1, ph, n=5)[0] * ints(so.geom_gemm, ptr(d), 1, 1, ph, n=5)[1]
                    for ph in range(4)) // K
        assert pairs == sum(1 for h in range(H) for r in range(R) if (h + pad - r) % stride == 0) ** 2
        assert pairs <= (H * R) ** 2 / 3.9  # about a quarter of the dense GEMM's


@pytest.mark.parametrize("case", CASES)
def test_weight_gradient_gemm_is_conv2d_weight(case):
    N, C, H, W, K, G, R, S, stride, pad = case
    gen = torch.Generator().manual_seed(sum(case) + 1)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - S) // stride + 1
    dy = torch.randn(N, K, P, Q, generator=gen, dtype=torch.float64)
    want = torch.nn.grad.conv2d_weight(x, (K, C // G, R, S), dy, stride, pad, 1, G).permute(0, 2, 3, 1).reshape(-1)
    so = lib()
    dims = np.array([N, H, W, C, K, R, S, P, Q, stride, pad, G], np.int64)
    cg, kg = C // G, K // G
    J0 = R * S * cg
    fx, fg = nhwc(x).reshape(-1), nhwc(dy).reshape(-1)
    pix_plan = ints(so.plan_wgrad_tile, cg, kg, R, S, stride, n=3)[2]
    for pix in sorted({1, pix_plan}):
        _Qb, M, _U, J = ints(so.geom_wgrad, ptr(dims), pix, n=4)
        off = lambda kind, g, a, b: so.geom_wgrad_offset(ptr(dims), pix, kind, g, a, b)  # noqa: E731
        dw = np.full(K * J0, np.nan)
        for g in range(G):
            patch = np.zeros((M, J))
            for m, j in itertools.product(range(M + 1), range(J + 1)):
                o = off(0, g, m, j)
                if m >= M or j >= J:
                    assert o == -1
                elif o >= 0:
                    patch[m, j] = fx[o]
            cols = pix * kg
            gz = np.zeros((M, cols))
            for m, col in itertools.product(range(M + 1), range(cols + 1)):
                o = off(1, g, m, col)
                if m >= M or col >= cols:
                    assert o == -1
                elif o >= 0:
                    gz[m, col] = fg[o]
                    assert off(2, g, 0, col) == o % K
            D = patch.T @ gz  # [J, cols]
            if pix == 1:
                for col, j in itertools.product(range(kg + 1), range(J + 1)):
                    o = off(3, g, col, j)
                    assert (o == -1) == (col >= kg or j >= J)
                    if o >= 0:
                        assert np.isnan(dw[o])
                        dw[o] = D[j, col]
            else:
                assert J <= kBM  # the kernel's one block holds all of D
                for kk, jj in itertools.product(range(kg), range(J0)):
                    rows = off(4, g, 0, jj)
                    r0, r1 = rows >> 32, rows & 0xffffffff
                    dw[(g * kg + kk) * J0 + jj] = D[r0, kk] + D[r1, kg + kk]
        np.testing.assert_allclose(dw, want.numpy(), rtol=1e-10, atol=1e-10)


def test_tile_plans():
    # 4 channels a group: pixel pairs fill the mma's 8 columns (forward only at an even width)
    assert tile(4, 4, 56, False) == [8, 4, 2] and tile(4, 4, 7, False) == [8, 4, 1] and tile(4, 4, 7, True) == [8, 4, 2]
    assert tile(8, 8, 28, False) == [8, 8, 1] and tile(16, 16, 14, False) == [16, 8, 1]
    assert tile(64, 128, 7, False) == [64, 8, 1] and ints(lib().plan_gemm_tile, 64, 128, 7, 0, 1, n=3)[0] == 32
    so = lib()
    assert ints(so.plan_wgrad_tile, 4, 4, 3, 3, 1, n=3) == [8, 4, 2]   # D: 3 * 4 * 4 = 48 rows
    assert ints(so.plan_wgrad_tile, 16, 4, 3, 3, 1, n=3)[2] == 1        # 192 rows: pairs would span blocks
    # the grid covers every (m-tile, phase, group, column tile) once, column tile fastest
    d = np.array([2, 9, 9, 64, 17, 17, 32, 3, 3, 2, 1, 4], np.int64)
    x, ntiles, mtiles, phases = ints(so.plan_gemm_grid, ptr(d), 1, 8, 8, 1, n=4)
    M0 = ints(so.geom_gemm, ptr(d), 1, 1, 0, n=5)[0]
    assert (ntiles, phases, mtiles) == (1, 4, -(-M0 // kBM)) and x == mtiles * phases * 4 * ntiles


LIMIT = 64 << 20


@pytest.mark.parametrize("M,groups,dw", [(802816, 32, 1536 * 432), (12544, 32, 12288 * 3456), (200704, 1, 512 * 3072),
                                         (5000, 1, 10), (20480, 1, 64), (802816, 32, 128 * 36)])
def test_weight_gradient_workspace_is_bounded_and_covers_every_split(M, groups, dw):
    r = ints(lib().plan_wgrad_rounds, M, groups, dw, LIMIT, n=6)
    splits, per, per_round, rounds, workspace, in_place = r
    assert (splits - 1) * per < M <= splits * per and per % 32 == 0
    assert workspace * 4 <= LIMIT
    covered = [s for r0 in range(0, splits, per_round) for s in range(r0, min(splits, r0 + per_round))]
    assert covered == list(range(splits)) and rounds == -(-splits // per_round)
    if splits * dw * 4 <= LIMIT:  # as before: one round, every split's partial at once
        assert (rounds, in_place, workspace) == (1, 0, splits * dw if splits > 1 else 0)
    if dw * 4 * 2 > LIMIT:  # not two partials in the limit: each split adds into dw in place
        assert in_place == 1 and workspace == 0 and per_round == 1


def test_merge_geometry():
    so = lib()
    assert ints(so.plan_merge, 128, 6272, n=3) == [4, 256, 25 + 8]  # ResNeXt stage 1 at batch 256
    assert ints(so.plan_merge, 1000, 1, n=3) == [4, 1, 1]
    for nparts in (1, 2, 3, 100, 129, 4096):
        ch, lanes, depth = ints(so.plan_merge, 64, nparts, n=3)
        assert ch * lanes <= 1024 and lanes & (lanes - 1) == 0 and (lanes == 1 or lanes // 2 < nparts)
        assert depth == -(-nparts // lanes) + lanes.bit_length() - 1


def test_merge_tree_matches_float64_statistics():
    rng = np.random.default_rng(3)
    for nparts, K, lanes in [(1, 3, 1), (7, 5, 4), (300, 2, 256), (1100, 3, 256)]:
        per, rows = 128, nparts * 128 - 51 * (nparts > 1)
        counts = np.array([min(per, rows - p * per) for p in range(nparts)], np.float64)
        values = [rng.standard_normal(int(c)) * 3 + 1000 for c in counts]  # a large mean
        part = np.zeros(2 * nparts * K)
        for p, v in enumerate(values):
            for k in range(K):
                part[p * K + k] = v.mean() + k
                part[(nparts + p) * K + k] = ((v - v.mean()) ** 2).sum()
        allv = np.concatenate(values)
        out = np.zeros(3)
        for k in range(K):
            lib().stats_merge_tree(ptr(part), nparts, K, k, per, rows, lanes, ptr(out))
            assert out[0] == rows
            assert abs(out[1] - (allv.mean() + k)) <= 1e-12 * abs(allv.mean() + k)
            np.testing.assert_allclose(out[2], ((allv - allv.mean()) ** 2).sum(), rtol=1e-11)
            lib().stats_sum_tree(ptr(part), nparts, K, k, lanes, ptr(out))
            np.testing.assert_allclose(out[:2], [part[k:nparts * K:K].sum(), part[nparts * K + k::K].sum()],
                                       rtol=1e-13)
