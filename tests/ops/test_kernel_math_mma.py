"""The tensor-core conv kernels' own index math (csrc/conv_bn/conv_bn_mma_index.h), compiled for the host:
fragment <-> (row, col) mappings against the PTX ISA tables, the loaders' tile slots, and the implicit-GEMM
gathers / write-outs of the forward, data gradient and weight gradient against torch's conv2d in float64
(the review's sim_mma.py / sim_conv.py checks, now run on the real functions)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from host_math import library, ptr

kBM, kBK, kLds, kWarps, kThreads = (library().mma_consts(i) for i in range(5))


# ---- oracle: the PTX ISA fragment layouts (lane = 4 * gid + tig) ----
def ptx_a_f16(lane, i):  # m16n8k16 .bf16/.f16 a0..a7 -> (row, k)
    gid, tig = lane >> 2, lane % 4
    return gid + (8 if i in (2, 3, 6, 7) else 0), tig * 2 + (i & 1) + (8 if i >= 4 else 0)


def ptx_b_f16(lane, i):  # b0..b3 -> (k, n)
    gid, tig = lane >> 2, lane % 4
    return tig * 2 + (i & 1) + (8 if i >= 2 else 0), gid


def ptx_c(lane, i):  # c0..c3 -> (row, n), both shapes
    gid, tig = lane >> 2, lane % 4
    return gid + (8 if i >= 2 else 0), tig * 2 + (i & 1)


def ptx_a_tf32(lane, i):  # m16n8k8 .tf32 a0..a3
    gid, tig = lane >> 2, lane % 4
    return gid + (8 if i in (1, 3) else 0), tig + (4 if i >= 2 else 0)


def ptx_b_tf32(lane, i):  # b0, b1
    gid, tig = lane >> 2, lane % 4
    return tig + 4 * i, gid


def frag(kind, warp=0, lane=0, mt=0, nt=0, kk=0, i=0):
    out = np.zeros(2, np.int32)
    library().mma_frag(kind, warp, lane, mt, nt, kk, i, ptr(out))
    return int(out[0]), int(out[1])


def test_fragments_match_the_ptx_isa_tables():
    for warp, mt, nt, lane in itertools.product(range(kWarps), range(2), range(3), range(32)):
        r0, kk = warp * 32 + mt * 16, 16
        for i in range(4):  # bf16/fp16 A register i holds a_{2i} (low half) and a_{2i+1}
            row, col = frag(0, warp, lane, mt, nt, kk, i)
            assert (row - r0, col - kk) == ptx_a_f16(lane, 2 * i)
            assert (row - r0, col + 1 - kk) == ptx_a_f16(lane, 2 * i + 1)
        for i in range(2):  # B register i holds b_{2i}, b_{2i+1}; Bs is [n][k]
            n, k = frag(1, lane=lane, nt=nt, kk=kk, i=i)
            assert (k - kk, n - nt * 8) == ptx_b_f16(lane, 2 * i)
            assert (k + 1 - kk, n - nt * 8) == ptx_b_f16(lane, 2 * i + 1)
        for i in range(4):
            row, col = frag(2, warp, lane, mt, nt, 8, i)
            assert (row - r0, col - 8) == ptx_a_tf32(lane, i)
            row, col = frag(4, warp, lane, mt, nt, 0, i)
            assert (row - r0, col - nt * 8) == ptx_c(lane, i)
        for i in range(2):
            n, k = frag(3, lane=lane, nt=nt, kk=8, i=i)
            assert (k - 8, n - nt * 8) == ptx_b_tf32(lane, i)


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("BN", [16, 32, 64])
def test_one_k_tile_through_the_fragments_is_the_tile_product(tf32, BN):
    """mma_k_tile's reads, the mma as the PTX ISA defines it, the epilogue's write-out: C = As @ Bs^T."""
    rng = np.random.default_rng(BN)
    As, Bs = np.full((kBM, kLds), np.nan), np.full((BN, kLds), np.nan)  # padding columns never read
    As[:, :kBK], Bs[:, :kBK] = rng.standard_normal((kBM, kBK)), rng.standard_normal((BN, kBK))
    step, na, nb = (8, 4, 2) if tf32 else (16, 4, 2)
    out = np.full((kBM, BN), np.nan)
    for warp, mt, nt in itertools.product(range(kWarps), range(2), range(BN // 8)):
        acc = np.zeros((16, 8))
        for kk in range(0, kBK, step):
            A, B = np.full((16, step), np.inf), np.full((step, 8), np.inf)
            for lane in range(32):
                for i in range(na):
                    r, c = frag(2 if tf32 else 0, warp, lane, mt, nt, kk, i)
                    for h in range(1 if tf32 else 2):  # a uint32 read holds (c, c + 1)
                        pr, pc = (ptx_a_tf32(lane, i) if tf32 else ptx_a_f16(lane, 2 * i + h))
                        assert A[pr, pc] == np.inf
                        A[pr, pc] = As[r, c + h]
                for i in range(nb):
                    n, k = frag(3 if tf32 else 1, lane=lane, nt=nt, kk=kk, i=i)
                    for h in range(1 if tf32 else 2):
                        pk, pn = (ptx_b_tf32(lane, i) if tf32 else ptx_b_f16(lane, 2 * i + h))
                        assert B[pk, pn] == np.inf
                        B[pk, pn] = Bs[n, k + h]
            acc += A @ B
        for lane, i in itertools.product(range(32), range(4)):
            r, c = frag(4, warp, lane, mt, nt, 0, i)
            pr, pc = ptx_c(lane, i)
            assert np.isnan(out[r, c]), "written twice"
            out[r, c] = acc[pr, pc]
    np.testing.assert_allclose(out, As[:, :kBK] @ Bs[:, :kBK].T, rtol=1e-12, atol=1e-12)


def slot(kind, a, b=0):
    out = np.zeros(2, np.int32)
    library().mma_slots(kind, a, b, ptr(out))
    return int(out[0]), int(out[1])


def test_loader_slots_fill_each_tile_once():
    cover = np.zeros((kBM, kBK), int)
    for tid, j in itertools.product(range(kThreads), range(4)):
        r, c = slot(0, tid, j)
        cover[r, c:c + 8] += 1
    assert (cover == 1).all()
    for BN in (16, 32, 64):
        cover = np.zeros((BN, kBK), int)
        for v in range(BN * kBK // 8):
            r, c = slot(1, v)
            cover[r, c:c + 8] += 1
        assert (cover == 1).all()
        for vec in (4, 8):
            cover = np.zeros((BN, kBK), int)
            for v in range(BN // vec * kBK):
                r, c = slot(2, v, vec)
                cover[r:r + vec, c] += 1
            assert (cover == 1).all()


# ---- implicit GEMM gathers against conv2d (float64) ----
CASES = [  # N, C, H, W, K, groups, R, S, stride, pad
    (2, 16, 7, 9, 24, 2, 3, 3, 2, 1), (3, 16, 11, 11, 16, 2, 3, 3, 1, 1), (2, 8, 6, 5, 8, 2, 3, 3, 2, 1),
    (2, 16, 5, 6, 32, 1, 1, 1, 2, 0), (1, 8, 9, 10, 80, 1, 2, 3, 3, 2), (1, 64, 4, 4, 64, 2, 3, 3, 1, 1),
]


def gemm(kind, dims, g, a, b):
    return library().mma_gemm_offset(kind, ptr(dims), g, a, b)


def implicit_gemm(dgrad, inp, wt, dims, vec):
    """out = A @ B^T per group, with A, B gathered and the result placed by the kernel's offsets."""
    N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride, pad, groups = (int(v) for v in dims)
    cin_g, cout_g = Cin // groups, Cout // groups
    M, Kg = N * Hout * Wout, R * S * cin_g
    flat_in, flat_w = inp.reshape(-1), wt.reshape(-1)
    out = np.full(N * Hout * Wout * Cout, np.nan)
    for g in range(groups):
        A = np.zeros((M, Kg))
        for m in range(M + 1):  # one row past M: must be refused
            for k0 in range(0, Kg + kBK, vec):  # and k past Kg, in the loaders' kVec pieces
                off = gemm(1 if dgrad else 0, dims, g, m, k0)
                if m >= M or k0 >= Kg:
                    assert off == -1
                    continue
                if off >= 0:
                    assert off % vec == 0 and off + vec <= flat_in.size, "misaligned or out-of-bounds load"
                    A[m, k0:k0 + vec] = flat_in[off:off + vec]
                    # the BN coefficients the dgrad loader applies are those of the loaded channel
                    assert gemm(4, dims, g, 0, k0) == off % Cin
        B = np.zeros((cout_g, Kg))
        for j, k0 in itertools.product(range(cout_g + 1), range(0, Kg + vec, vec)):
            off = gemm(2, dims, g, j, k0)
            assert (off == -1) == (j >= cout_g or k0 >= Kg)
            if off >= 0:
                assert off % vec == 0 and off + vec <= flat_w.size
                B[j, k0:k0 + vec] = flat_w[off:off + vec]
        D = A @ B.T
        for m, j in itertools.product(range(M + 1), range(cout_g + 1)):
            off = gemm(3, dims, g, m, j)
            assert (off == -1) == (m >= M or j >= cout_g)
            if off >= 0:
                assert np.isnan(out[off]), "output written twice"
                out[off] = D[m, j]
    assert not np.isnan(out).any(), "output element never written"
    return out


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy()


@pytest.mark.parametrize("case", CASES)
def test_forward_and_data_gradient_gathers_are_conv2d(case):
    N, C, H, W, K, G, R, S, stride, pad = case
    gen = torch.Generator().manual_seed(sum(case))
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(K, C // G, R, S, generator=gen, dtype=torch.float64)
    y = F.conv2d(x, w, None, stride, pad, 1, G)
    P, Q = y.shape[2:]
    vec = 8 if (C // G) % 8 == 0 and (K // G) % 8 == 0 else 4
    dims = np.array([N, H, W, C, P, Q, K, R, S, stride, pad, G], np.int64)
    got = implicit_gemm(False, nhwc(x), w.permute(0, 2, 3, 1).contiguous().numpy(), dims, vec)
    np.testing.assert_allclose(got, nhwc(y).reshape(-1), rtol=1e-10, atol=1e-10)
    # data gradient: in = dy (K channels), wt = w_t [C, R, S, K/G] as the glue permutes it, out = dx
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    w_t = w.reshape(G, K // G, C // G, R, S).permute(0, 2, 3, 4, 1).contiguous().numpy()
    dims_d = np.array([N, P, Q, K, H, W, C, R, S, stride, pad, G], np.int64)
    vec_d = 8 if (K // G) % 8 == 0 and (C // G) % 8 == 0 else 4
    got = implicit_gemm(True, nhwc(dy), w_t, dims_d, vec_d)
    want = torch.nn.grad.conv2d_input(x.shape, w, dy, stride, pad, 1, G)
    np.testing.assert_allclose(got, nhwc(want).reshape(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_weight_gradient_gathers_are_conv2d_weight(case):
    N, C, H, W, K, G, R, S, stride, pad = case
    gen = torch.Generator().manual_seed(sum(case) + 1)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - S) // stride + 1
    dy = torch.randn(N, K, P, Q, generator=gen, dtype=torch.float64)
    dims = np.array([N, H, W, C, K, R, S, P, Q, stride, pad, G], np.int64)
    cg, kg, M = C // G, K // G, N * P * Q
    J = R * S * cg
    fx, fg = nhwc(x).reshape(-1), nhwc(dy).reshape(-1)
    dw = np.full(K * J, np.nan)
    lib = library()
    for g in range(G):
        patch = np.zeros((M, J))
        for m, j in itertools.product(range(M + 1), range(J + 1)):
            off = lib.mma_wgrad_offset(0, ptr(dims), g, m, j)
            if m >= M or j >= J:
                assert off == -1
            elif off >= 0:
                patch[m, j] = fx[off]
        gz = np.zeros((M, kg))
        for m, kk in itertools.product(range(M + 1), range(kg + 1)):
            off = lib.mma_wgrad_offset(1, ptr(dims), g, m, kk)
            assert (off == -1) == (m >= M or kk >= kg)
            if off >= 0:
                gz[m, kk] = fg[off]
                assert lib.mma_wgrad_offset(3, ptr(dims), g, 0, kk) == off % K
        D = gz.T @ patch
        for kk, j in itertools.product(range(kg + 1), range(J + 1)):
            off = lib.mma_wgrad_offset(2, ptr(dims), g, kk, j)
            assert (off == -1) == (kk >= kg or j >= J)
            if off >= 0:
                assert np.isnan(dw[off])
                dw[off] = D[kk, j]
    want = torch.nn.grad.conv2d_weight(x, (K, cg, R, S), dy, stride, pad, 1, G)
    np.testing.assert_allclose(dw, want.permute(0, 2, 3, 1).reshape(-1).numpy(), rtol=1e-10, atol=1e-10)


def test_weight_gradient_split_plan_covers_m_once():
    out = np.zeros(2, np.int64)
    for M, groups, chunk in [(1, 1, 8192), (363, 2, 100), (200704, 32, 8192), (10**7, 64, 8192), (8192, 1, 8192),
                             (50, 70000, 8192)]:
        library().mma_wgrad_plan(M, groups, chunk, ptr(out))
        splits, per = (int(v) for v in out)
        assert per % kBK == 0 and splits >= 1 and (splits - 1) * per < M <= splits * per
        assert splits * groups <= 65535 or splits == 1
