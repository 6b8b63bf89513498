// The implicit GEMMs the tensor-core conv kernels run (conv_bn_cuda_mma*.cu), as index functions the kernels
// call and host code (benchmarks/model_conv_bn.py, tests/ops/test_conv_bn_geometry.py) runs too. Plain C++
// that nvcc also compiles for the device.
//
// Two ways to spend less tensor-core work on padding than the dense GEMM of conv_bn_mma_index.h:
// * pixel pairs (pix = 2, for 4 channels a group): a GEMM row holds two side-by-side output pixels and the
//   GEMM columns are (pixel dq, channel jo), so 4 output channels fill the mma's n = 8 instead of half of it.
//   The two pixels read one input window of S + stride columns, so k = R * (S + stride) * cin_g, and the
//   weight element of (column (dq, jo), window column u) is tap u - dq * stride (zero outside the kernel):
//   3x3 stride 1: 288 useful products of 8 x 48 (75%) against 4 x 36 of 8 x 48 (37.5%) one pixel a row.
// * output phases (data gradient, stride > 1): output pixel (h, w) of the data gradient only receives taps r
//   with (h + pad - r) % stride == 0; the pixels of one phase (h % stride, w % stride) form a GEMM of their
//   own over exactly those taps, so no structurally zero (pixel, tap) pair is multiplied (3x3 stride 2: 9
//   taps a pixel before, 2.25 on average after).
// Both are a strided correlation over an output sub-grid:
//   GEMM row m = (n, oh, ob): output pixels (oh * ostep + oh0, (ob * pix + dq) * ostep + ow0), dq < pix;
//   k = (i, u, c): input row oh * a + hbase + sgn * i, column ob * pix * a + wbase + sgn * u, channel c;
//   B[(dq, jo), (i, u, c)]: weight (jo, r0 + tstep * i, s0 + tstep * (u - shift(dq)), c).
// Forward: a = stride, hbase = wbase = -pad, sgn = +1, shift(dq) = dq * stride, one phase. Data gradient
// (input = grad of the conv output, weights transposed): a = 1, sgn = -1, one GEMM per phase.
#pragma once
#include <cstdint>

#include "conv_bn_mma_index.h"

namespace wslfast::conv_bn::mma {

struct GemmGeom {
  int Ho, Wo, Wb;         // output sub-grid rows and columns, column blocks ceil(Wo / pix)
  int64_t M;              // GEMM rows N * Ho * Wb
  int ostep, oh0, ow0;    // output pixel of sub-grid (oh, ow): (oh * ostep + oh0, ow * ostep + ow0)
  int a, hbase, wbase, sgn;  // input pixel of (oh, ob; i, u), see above
  int Rt, St, U, Kg;      // GEMM taps (rows, columns), window columns, k extent Rt * U * cin_g
  int r0, s0, tstep;      // weight tap of GEMM tap (i, j)
  int pix, cin_g, cout_g;
};

// Output phases of a GEMM: stride^2 for the data gradient (stride > 1), else 1.
WSLFAST_IDX_HD int64_t gemm_phases(const GemmDims& d, bool dgrad) { return dgrad ? d.stride * d.stride : 1; }

// The GEMM of one phase. Data gradient: d is the transposed conv (Hin, Win = the conv output; Hout, Wout =
// its input) and phase = ph * stride + pw; a phase that no tap reaches has Kg = 0 (its pixels get zeros).
// A template on the kind, so that in a kernel the fields it fixes (sgn, a, steps) are constants.
template <bool dgrad>
WSLFAST_IDX_HD GemmGeom gemm_geom(const GemmDims& d, int pix, int64_t phase) {
  GemmGeom g{};
  g.pix = pix;
  g.cin_g = static_cast<int>(d.Cin / d.groups);
  g.cout_g = static_cast<int>(d.Cout / d.groups);
  const int st = static_cast<int>(d.stride), pad = static_cast<int>(d.pad);
  if constexpr (!dgrad) {
    g.Ho = static_cast<int>(d.Hout), g.Wo = static_cast<int>(d.Wout);
    g.ostep = 1, g.oh0 = 0, g.ow0 = 0;
    g.a = st, g.hbase = -pad, g.wbase = -pad, g.sgn = 1;
    g.Rt = static_cast<int>(d.R), g.St = static_cast<int>(d.S);
    g.r0 = 0, g.s0 = 0, g.tstep = 1;
    g.U = g.St + (pix - 1) * st;
  } else {
    const int ph = static_cast<int>(phase / st), pw = static_cast<int>(phase % st);
    g.Ho = d.Hout > ph ? static_cast<int>((d.Hout - ph + st - 1) / st) : 0;
    g.Wo = d.Wout > pw ? static_cast<int>((d.Wout - pw + st - 1) / st) : 0;
    g.ostep = st, g.oh0 = ph, g.ow0 = pw;
    // taps r = r0 + st * i reach phase row ph: (ph + pad - r) % st == 0, from grad row h' + (ph + pad - r0) / st - i
    g.r0 = (ph + pad) % st, g.s0 = (pw + pad) % st, g.tstep = st;
    g.Rt = g.r0 < d.R ? static_cast<int>((d.R - g.r0 + st - 1) / st) : 0;
    g.St = g.s0 < d.S ? static_cast<int>((d.S - g.s0 + st - 1) / st) : 0;
    g.a = 1, g.sgn = -1;
    g.hbase = (ph + pad - g.r0) / st;
    g.wbase = (pw + pad - g.s0) / st + (pix - 1);
    g.U = g.St > 0 ? g.St + pix - 1 : 0;
  }
  g.Wb = (g.Wo + pix - 1) / pix;
  g.M = d.N * g.Ho * int64_t(g.Wb);
  g.Kg = g.Rt * g.U * g.cin_g;
  return g;
}

// The host's runtime choice of kind.
WSLFAST_IDX_HD GemmGeom gemm_geom(const GemmDims& d, bool dgrad, int pix, int64_t phase) {
  return dgrad ? gemm_geom<true>(d, pix, phase) : gemm_geom<false>(d, pix, phase);
}

struct GeomRow {
  int n, oh, ob;  // each under 2^31 (offsets are formed in 64 bits)
  bool ok;
};
WSLFAST_IDX_HD GeomRow gemm_row(const GemmGeom& g, int64_t m) {
  if (m >= g.M) return {0, 0, 0, false};
  const int64_t hw = int64_t(g.Wb) * g.Ho;
  return {static_cast<int>(m / hw), static_cast<int>((m / g.Wb) % g.Ho), static_cast<int>(m % g.Wb), true};
}

// k = (i, u, c), decomposed once per loaded piece and shared by the rows.
struct GemmK {
  int i, u, c;
  bool ok;
};
WSLFAST_IDX_HD GemmK gemm_k(const GemmGeom& g, int64_t k) {
  if (k >= g.Kg) return {0, 0, 0, false};
  const int kk = static_cast<int>(k);
  return {kk / (g.U * g.cin_g), (kk / g.cin_g) % g.U, kk % g.cin_g, true};
}

// A[m, k] of group gr: the NHWC offset of the input element, or -1 (padding, outside the GEMM).
WSLFAST_IDX_HD int64_t gemm_a_offset(const GemmDims& d, const GemmGeom& g, int64_t gr, const GeomRow& row,
                                     const GemmK& k) {
  if (!row.ok || !k.ok) return -1;
  const int hi = row.oh * g.a + g.hbase + g.sgn * k.i;
  const int wi = row.ob * g.pix * g.a + g.wbase + g.sgn * k.u;
  if (hi < 0 || hi >= d.Hin || wi < 0 || wi >= d.Win) return -1;
  return ((int64_t(row.n) * d.Hin + hi) * d.Win + wi) * d.Cin + gr * g.cin_g + k.c;
}

// The channel whose BN coefficients the data gradient's loader applies to A[., k] (of a valid k).
WSLFAST_IDX_HD int64_t gemm_a_channel(const GemmGeom& g, int64_t gr, const GemmK& k) { return gr * g.cin_g + k.c; }

// B[col, k] of group gr, col = dq * cout_g + jo: the weight row offset (KRSC; the data gradient's transposed
// weights [C, R, S, K/groups] have the same form), or -1 (a tap outside the kernel, padding columns).
WSLFAST_IDX_HD int64_t gemm_b_offset(const GemmDims& d, const GemmGeom& g, int64_t gr, int64_t col, const GemmK& k) {
  const int64_t dq = col / g.cout_g, jo = col % g.cout_g;
  if (!k.ok || dq >= g.pix) return -1;
  const int j = k.u - (g.sgn > 0 ? static_cast<int>(dq) * g.a : g.pix - 1 - static_cast<int>(dq));
  if (j < 0 || j >= g.St) return -1;
  const int64_t r = g.r0 + g.tstep * k.i, s = g.s0 + g.tstep * j;
  return (gr * g.cout_g + jo) * (d.R * d.S * g.cin_g) + (r * d.S + s) * g.cin_g + k.c;
}

// Output element (m, col) of group gr (NHWC), or -1 outside the output.
WSLFAST_IDX_HD int64_t gemm_out_offset(const GemmDims& d, const GemmGeom& g, int64_t gr, int64_t m, int64_t col) {
  const int64_t dq = col / g.cout_g, jo = col % g.cout_g;
  const GeomRow row = gemm_row(g, m);
  if (!row.ok || dq >= g.pix) return -1;
  const int ow = row.ob * g.pix + static_cast<int>(dq);
  if (ow >= g.Wo) return -1;
  const int h = row.oh * g.ostep + g.oh0, w = ow * g.ostep + g.ow0;
  return ((int64_t(row.n) * d.Hout + h) * d.Wout + w) * d.Cout + gr * g.cout_g + jo;
}

// ---- weight gradient: D[j', (dq, kk)] = sum over m' = (n, p, qb) of patch[m', j'] * g[m', (dq, kk)] ----
// j' = (i, u, c) reads input (n, p * stride - pad + i, qb * pix * stride - pad + u, c); column (dq, kk) reads
// the conv-output gradient at (n, p, qb * pix + dq, kk). dw[kk, i, s, c] = sum over dq of D[(i, s + dq *
// stride, c), (dq, kk)] (pix 1: D is dw). With 4 output channels a group, pix = 2 fills the mma's n = 8.
struct WgradGeom {
  int64_t Qb, M;  // column blocks ceil(Q / pix), reduction rows N * P * Qb
  int U, J, pix;  // window columns S + (pix - 1) * stride, D rows R * U * cg
};
WSLFAST_IDX_HD WgradGeom wgrad_geom(const WgradDims& d, int pix) {
  WgradGeom g{};
  g.pix = pix;
  g.Qb = (d.Q + pix - 1) / pix;
  g.M = d.N * d.P * g.Qb;
  g.U = static_cast<int>(d.S + (pix - 1) * d.stride);
  g.J = static_cast<int>(d.R * g.U * (d.C / d.groups));
  return g;
}
// Reduction row m' = (n, p, qb), decomposed once and shared by a thread's loads at that row.
struct WgradRow {
  int n, p, qb;  // each under 2^31 (offsets are formed in 64 bits)
  bool ok;
};
WSLFAST_IDX_HD WgradRow wgrad_row(const WgradDims& d, const WgradGeom& g, int64_t m) {
  if (m >= g.M) return {0, 0, 0, false};
  return {static_cast<int>(m / (g.Qb * d.P)), static_cast<int>((m / g.Qb) % d.P), static_cast<int>(m % g.Qb), true};
}
WSLFAST_IDX_HD int64_t wgrad_x_offset(const WgradDims& d, const WgradGeom& g, int64_t gr, const WgradRow& row,
                                      int64_t j) {
  const int cg = static_cast<int>(d.C / d.groups);
  if (!row.ok || j >= g.J) return -1;
  const int jj = static_cast<int>(j), c = jj % cg, u = (jj / cg) % g.U, i = jj / (cg * g.U);
  const int h = row.p * static_cast<int>(d.stride) - static_cast<int>(d.pad) + i;
  const int w = row.qb * g.pix * static_cast<int>(d.stride) - static_cast<int>(d.pad) + u;
  if (h < 0 || h >= d.H || w < 0 || w >= d.W) return -1;
  return ((int64_t(row.n) * d.H + h) * d.W + w) * d.C + gr * cg + c;
}
WSLFAST_IDX_HD int64_t wgrad_x_offset(const WgradDims& d, const WgradGeom& g, int64_t gr, int64_t m, int64_t j) {
  return wgrad_x_offset(d, g, gr, wgrad_row(d, g, m), j);
}
WSLFAST_IDX_HD int64_t wgrad_g_offset(const WgradDims& d, const WgradGeom& g, int64_t gr, const WgradRow& row,
                                      int64_t col) {
  const int64_t kg = d.K / d.groups, dq = col / kg, kk = col % kg;
  if (!row.ok || dq >= g.pix) return -1;
  const int q = row.qb * g.pix + static_cast<int>(dq);
  if (q >= d.Q) return -1;
  return ((int64_t(row.n) * d.P + row.p) * d.Q + q) * d.K + gr * kg + kk;
}
WSLFAST_IDX_HD int64_t wgrad_g_offset(const WgradDims& d, const WgradGeom& g, int64_t gr, int64_t m, int64_t col) {
  return wgrad_g_offset(d, g, gr, wgrad_row(d, g, m), col);
}
// Where the block at (j0 rows, n0 columns) of D writes dw when pix = 1 (D is dw, KRSC): element (row, col) of
// its tile goes to base + col * ld + row when row < rows and col < cols. The kernel forms the tile offsets in
// 32 bits from one base (64-bit addresses per element had pushed sm_80 past 255 registers).
struct WgradTileOut {
  int64_t base;
  int rows, cols, ld;
};
WSLFAST_IDX_HD WgradTileOut wgrad_tile_out(const WgradDims& d, const WgradGeom& g, int64_t gr, int64_t j0, int64_t n0) {
  const int64_t kg = d.K / d.groups;
  return {(gr * kg + n0) * g.J + j0, static_cast<int>(g.J - j0), static_cast<int>(kg - n0), g.J};
}
// dw offset (KRSC) of D's (j', col) when pix = 1, or -1.
WSLFAST_IDX_HD int64_t wgrad_dw_offset(const WgradDims& d, const WgradGeom& g, int64_t gr, int64_t col, int64_t j) {
  const WgradTileOut t = wgrad_tile_out(d, g, gr, 0, 0);
  if (col >= t.cols || j >= t.rows) return -1;
  return t.base + col * t.ld + j;
}

// Pixel pairs: dw's element jj = (r, s, c) of an output channel (KRSC) is D[row0, (0, kk)] + D[row1, (1, kk)]:
// row0 = (r, s, c) (pixel 0's tap s), row1 = (r, s + stride, c) (pixel 1's).
WSLFAST_IDX_HD void wgrad_pair_rows(const WgradDims& d, const WgradGeom& g, int64_t jj, int64_t& row0, int64_t& row1) {
  const int64_t cg = d.C / d.groups, c = jj % cg, s = (jj / cg) % d.S, r = jj / (cg * d.S);
  row0 = (r * g.U + s) * cg + c;
  row1 = (r * g.U + s + d.stride) * cg + c;
}

}  // namespace wslfast::conv_bn::mma
