// Index math of the tensor-core implicit-GEMM kernels (conv_bn_cuda_mma*.cu), as functions the kernels
// call and CPU tests (tests/ops/test_kernel_math_mma.py) run against conv2d and the PTX ISA fragment
// tables: the mma fragment <-> (row, col) mappings, the loaders' tile slots, the weight gradient's m-split
// plan, and the dense implicit GEMM (one output pixel a row, all R * S taps; the data gradient by the
// transposed rule). The kernels now run the GEMMs of conv_bn_mma_geometry.h (pixel pairs, output phases),
// of which the dense one is the special case pix = 1 (forward, weight gradient) and stride 1 (data
// gradient); the dense functions stay as the reference those CPU tests check. Plain C++ that nvcc also
// compiles for the device.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define WSLFAST_IDX_HD __host__ __device__ __forceinline__
#else
#define WSLFAST_IDX_HD inline
#endif

namespace wslfast::conv_bn::mma {

inline constexpr int kBM = 128, kBK = 32, kLds = kBK + 8, kWarps = 4, kThreads = kWarps * 32;

struct RowCol {
  int row, col;
};

// ---- fragments (lane = 4 * gid + tig) ----
// m16n8k16 (bf16/fp16): register i (0..3) of A fragment mt holds the two k-consecutive elements at
// shared-tile (row, col) and (row, col + 1), the tile being As[kBM][kLds] (rows x k).
WSLFAST_IDX_HD RowCol frag_a_f16(int warp, int lane, int mt, int kk, int i) {
  const int gid = lane >> 2, tig = lane & 3;
  return {warp * 32 + mt * 16 + gid + 8 * (i & 1), kk + 2 * tig + 8 * (i >> 1)};
}
// Register i (0..1) of B fragment nt: elements (n, k), (n, k + 1) of Bs[BN][kLds] (columns x k).
WSLFAST_IDX_HD RowCol frag_b_f16(int lane, int nt, int kk, int i) {
  const int gid = lane >> 2, tig = lane & 3;
  return {nt * 8 + gid, kk + 2 * tig + 8 * i};
}
// m16n8k8 (tf32): register i (0..3) of A holds one element, (row gid | gid + 8, k tig | tig + 4).
WSLFAST_IDX_HD RowCol frag_a_tf32(int warp, int lane, int mt, int kk, int i) {
  const int gid = lane >> 2, tig = lane & 3;
  return {warp * 32 + mt * 16 + gid + 8 * (i & 1), kk + tig + 4 * (i >> 1)};
}
WSLFAST_IDX_HD RowCol frag_b_tf32(int lane, int nt, int kk, int i) {
  const int gid = lane >> 2, tig = lane & 3;
  return {nt * 8 + gid, kk + tig + 4 * i};
}
// Accumulator i (0..3) of tile (mt, nt): the block-tile (row, col) the epilogues write it to.
WSLFAST_IDX_HD RowCol frag_acc(int warp, int lane, int mt, int nt, int i) {
  const int gid = lane >> 2, tig = lane & 3;
  return {warp * 32 + mt * 16 + gid + 8 * (i >> 1), nt * 8 + 2 * tig + (i & 1)};
}

// ---- loader slots: where in the shared tiles each thread's loads go ----
// A: thread tid moves the 8-element k-chunk (tid & 3) of tile rows (tid >> 2) + 32 * j, j < 4.
WSLFAST_IDX_HD RowCol a_slot(int tid, int j) { return {(tid >> 2) + 32 * j, (tid & 3) * 8}; }
// B (forward / data gradient): vector v = tid + j * kThreads (v < BN * kBK / 8) fills Bs row v / 4, k-chunk v & 3.
WSLFAST_IDX_HD RowCol b_slot(int v) { return {v / 4, (v & 3) * 8}; }
// Weight gradient, transposed tiles: vector v holds kVec tile rows (jl .. jl + kVec - 1) at k-column ml.
WSLFAST_IDX_HD RowCol wgrad_slot(int v, int kVec) { return {(v / kBK) * kVec, v % kBK}; }

// ---- gathers ----
// Input pixel (hi, wi) that output pixel (ho, wo) reads through tap (r, s); false where it is padding.
// kDgrad: the transposed rule of the data gradient (ho = hi * stride - pad + r).
template <bool kDgrad>
WSLFAST_IDX_HD bool source_pixel(int64_t ho, int64_t wo, int64_t r, int64_t s, int64_t stride, int64_t pad,
                                 int64_t Hin, int64_t Win, int64_t& hi, int64_t& wi) {
  if (!kDgrad) {
    hi = ho * stride - pad + r;
    wi = wo * stride - pad + s;
  } else {
    const int64_t th = ho + pad - r, tw = wo + pad - s;
    if (th < 0 || tw < 0 || th % stride != 0 || tw % stride != 0) return false;
    hi = th / stride;
    wi = tw / stride;
  }
  return hi >= 0 && hi < Hin && wi >= 0 && wi < Win;
}

// The implicit GEMM of conv_gemm_kernel for group g: A[m, k] with m = (n, ho, wo), k = (r, s, c) is the
// input element at the returned offset (NHWC), or -1 where it is padding / outside the GEMM. The loader
// decomposes each of its rows once (gemm_row) and asks for every k-piece of the row.
struct GemmDims {
  int64_t N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride, pad, groups;
};
struct GemmRow {
  int64_t n, ho, wo;
  bool ok;
};
WSLFAST_IDX_HD GemmRow gemm_row(const GemmDims& d, int64_t m) {
  return {m / (d.Wout * d.Hout), (m / d.Wout) % d.Hout, m % d.Wout, m < d.N * d.Hout * d.Wout};
}
template <bool kDgrad>
WSLFAST_IDX_HD int64_t gemm_a_offset(const GemmDims& d, int64_t g, const GemmRow& row, int64_t k) {
  const int64_t cin_g = d.Cin / d.groups, Kg = d.R * d.S * cin_g;
  if (!row.ok || k >= Kg) return -1;
  const int64_t tap = k / cin_g, c = k % cin_g, r = tap / d.S, s = tap % d.S;
  int64_t hi, wi;
  if (!source_pixel<kDgrad>(row.ho, row.wo, r, s, d.stride, d.pad, d.Hin, d.Win, hi, wi)) return -1;
  return ((row.n * d.Hin + hi) * d.Win + wi) * d.Cin + g * cin_g + c;
}
// The input channel of A[., k] in group g: for the data gradient the channel of grad_y (and z) whose BN
// coefficients the loader's fused BN+ReLU backward applies to that element.
WSLFAST_IDX_HD int64_t gemm_a_channel(const GemmDims& d, int64_t g, int64_t k) {
  const int64_t cin_g = d.Cin / d.groups;
  return g * cin_g + k % cin_g;
}
// B[j, k] of group g: the weight row of output channel j in the group (KRSC, k contiguous), or -1.
WSLFAST_IDX_HD int64_t gemm_b_offset(const GemmDims& d, int64_t g, int64_t j, int64_t k) {
  const int64_t cout_g = d.Cout / d.groups, Kg = d.R * d.S * (d.Cin / d.groups);
  if (j >= cout_g || k >= Kg) return -1;
  return (g * cout_g + j) * Kg + k;
}
// Output element (m, j) of group g (NHWC), the epilogue's write-out, or -1 outside the output.
WSLFAST_IDX_HD int64_t gemm_out_offset(const GemmDims& d, int64_t g, int64_t m, int64_t j) {
  const int64_t cout_g = d.Cout / d.groups, M = d.N * d.Hout * d.Wout;
  if (m >= M || j >= cout_g) return -1;
  return m * d.Cout + g * cout_g + j;
}

// ---- weight gradient: dw[g * kg + kk, j] = sum_m patch[m, j] * gz[m, g * kg + kk], j = (r, s, c) ----
struct WgradDims {
  int64_t N, H, W, C, K, R, S, P, Q, stride, pad, groups;
};
// patch[m, j] of group g: the input element (NHWC offset) or -1 (padding / outside).
WSLFAST_IDX_HD int64_t wgrad_x_offset(const WgradDims& d, int64_t g, int64_t m, int64_t j) {
  const int64_t cg = d.C / d.groups, J = d.R * d.S * cg, M = d.N * d.P * d.Q;
  if (m >= M || j >= J) return -1;
  const int64_t tap = j / cg, c = j % cg, r = tap / d.S, t = tap % d.S;
  const int64_t q = m % d.Q, p = (m / d.Q) % d.P, n = m / (d.Q * d.P);
  const int64_t h = p * d.stride - d.pad + r, w = q * d.stride - d.pad + t;
  if (h < 0 || h >= d.H || w < 0 || w >= d.W) return -1;
  return ((n * d.H + h) * d.W + w) * d.C + g * cg + c;
}
// gz[m, g * kg + kk] (NHWC offset into grad_y and z) or -1.
WSLFAST_IDX_HD int64_t wgrad_g_offset(const WgradDims& d, int64_t g, int64_t m, int64_t kk) {
  const int64_t kg = d.K / d.groups, M = d.N * d.P * d.Q;
  if (m >= M || kk >= kg) return -1;
  return m * d.K + g * kg + kk;
}
// The channel of gz[., col] in group g (whose BN coefficients the B loader applies); col = dq * kg + kk
// with pixel pairs (conv_bn_mma_geometry.h).
WSLFAST_IDX_HD int64_t wgrad_g_channel(const WgradDims& d, int64_t g, int64_t col) {
  return g * (d.K / d.groups) + col % (d.K / d.groups);
}
// dw element (kk, j) of group g (KRSC: [K][R*S*cg]) or -1.
WSLFAST_IDX_HD int64_t wgrad_dw_offset(const WgradDims& d, int64_t g, int64_t kk, int64_t j) {
  const int64_t kg = d.K / d.groups, J = d.R * d.S * (d.C / d.groups);
  if (kk >= kg || j >= J) return -1;
  return (g * kg + kk) * J + j;
}

// The m reduction split over blocks: ~8k positions per split, at most 65535 blocks in z, each split a
// multiple of kBK positions. Splits cover [0, M) exactly once: split i has [i * per, min((i + 1) * per, M)).
struct WgradPlan {
  int64_t splits, per;
};
WSLFAST_IDX_HD WgradPlan wgrad_plan(int64_t M, int64_t groups, int64_t chunk = 8192) {
  if (M < 1 || groups < 1) return {1, kBK};
  int64_t splits = (M + chunk - 1) / chunk;
  if (splits * groups > 65535) splits = 65535 / groups;
  if (splits < 1) splits = 1;
  const int64_t per = ((M + splits - 1) / splits + kBK - 1) / kBK * kBK;
  return {(M + per - 1) / per, per};
}

}  // namespace wslfast::conv_bn::mma
