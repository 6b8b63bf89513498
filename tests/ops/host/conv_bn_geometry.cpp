// C entry points over the tensor-core conv kernels' GEMM geometry and launch plans
// (csrc/conv_bn/conv_bn_mma_geometry.h, conv_bn_mma_plan.h) and the finalize's merge order
// (conv_bn_stats.h), compiled for the host by tests/ops/test_conv_bn_geometry.py and called through ctypes:
// the CPU tests run the index functions the kernels run. Plain C++17, no torch, no CUDA.
#include <cstdint>

#include "../../../csrc/conv_bn/conv_bn_mma_plan.h"
#include "../../../csrc/conv_bn/conv_bn_stats.h"

using namespace wslfast::conv_bn;
using namespace wslfast::conv_bn::mma;

namespace {
GemmDims gdims(const int64_t* v) { return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]}; }
WgradDims wdims(const int64_t* v) { return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]}; }
}  // namespace

extern "C" {

// dims: N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride, pad, groups (the data gradient's: the transposed
// conv). out: M, Kg, Ho, Wo, phases.
void geom_gemm(const int64_t* dims, int dgrad, int pix, int64_t phase, int64_t* out) {
  const GemmDims d = gdims(dims);
  const GemmGeom g = gemm_geom(d, dgrad != 0, pix, phase);
  out[0] = g.M, out[1] = g.Kg, out[2] = g.Ho, out[3] = g.Wo, out[4] = gemm_phases(d, dgrad != 0);
}

// kind 0: A offset of (m = a, k = b); 1: the BN channel of A's column b; 2: B offset of (col = a, k = b);
// 3: output offset of (m = a, col = b).
int64_t geom_gemm_offset(const int64_t* dims, int dgrad, int pix, int64_t phase, int kind, int64_t gr, int64_t a,
                         int64_t b) {
  const GemmDims d = gdims(dims);
  const GemmGeom g = gemm_geom(d, dgrad != 0, pix, phase);
  switch (kind) {
    case 0: return gemm_a_offset(d, g, gr, gemm_row(g, a), gemm_k(g, b));
    case 1: return gemm_k(g, b).ok ? gemm_a_channel(g, gr, gemm_k(g, b)) : -1;
    case 2: return gemm_b_offset(d, g, gr, a, gemm_k(g, b));
    default: return gemm_out_offset(d, g, gr, a, b);
  }
}

// dims: N, H, W, C, K, R, S, P, Q, stride, pad, groups. out: Qb, M, U, J.
void geom_wgrad(const int64_t* dims, int pix, int64_t* out) {
  const WgradGeom g = wgrad_geom(wdims(dims), pix);
  out[0] = g.Qb, out[1] = g.M, out[2] = g.U, out[3] = g.J;
}

// kind 0: x offset of (m = a, j = b); 1: grad offset of (m = a, col = b); 2: the BN channel of column b;
// 3: dw offset of (col = a, j = b) (pix 1); 4: the pair rows of dw element b: row0 * 2^32 + row1.
int64_t geom_wgrad_offset(const int64_t* dims, int pix, int kind, int64_t gr, int64_t a, int64_t b) {
  const WgradDims d = wdims(dims);
  const WgradGeom g = wgrad_geom(d, pix);
  switch (kind) {
    case 0: return wgrad_x_offset(d, g, gr, a, b);
    case 1: return wgrad_g_offset(d, g, gr, a, b);
    case 2: return wgrad_g_channel(d, gr, b);
    case 3: return wgrad_dw_offset(d, g, gr, a, b);
    default: {
      int64_t r0, r1;
      wgrad_pair_rows(d, g, b, r0, r1);
      return (r0 << 32) + r1;
    }
  }
}

// out: bn, vec, pix.
void plan_gemm_tile(int64_t cin_g, int64_t cout_g, int64_t out_w, int dgrad, int f32, int64_t* out) {
  const GemmTile t = gemm_tile(cin_g, cout_g, out_w, dgrad != 0, f32 != 0);
  out[0] = t.bn, out[1] = t.vec, out[2] = t.pix;
}
void plan_wgrad_tile(int64_t cg, int64_t kg, int64_t R, int64_t S, int64_t stride, int64_t* out) {
  const GemmTile t = wgrad_tile(cg, kg, R, S, stride);
  out[0] = t.bn, out[1] = t.vec, out[2] = t.pix;
}
// out: x, ntiles, mtiles, phases.
void plan_gemm_grid(const int64_t* dims, int dgrad, int bn, int vec, int pix, int64_t* out) {
  const GemmGrid g = gemm_grid(gdims(dims), GemmTile{bn, vec, pix}, dgrad != 0);
  out[0] = g.x, out[1] = g.ntiles, out[2] = g.mtiles, out[3] = g.phases;
}
// out: splits, per, per_round, rounds, workspace, in_place.
void plan_wgrad_rounds(int64_t M, int64_t groups, int64_t dw_elems, int64_t limit, int64_t* out) {
  const WgradRounds r = wgrad_rounds(M, groups, dw_elems, limit);
  out[0] = r.splits, out[1] = r.per, out[2] = r.per_round, out[3] = r.rounds, out[4] = r.workspace,
  out[5] = r.in_place;
}
// out: channels, lanes, depth.
void plan_merge(int64_t K, int64_t nparts, int64_t* out) {
  const MergeGeometry g = merge_geometry(K, nparts);
  out[0] = g.channels, out[1] = g.lanes, out[2] = merge_depth(g, nparts);
}

// The finalize's merge of channel k (merge_parts_tree, the kernel's order): out = n, mean, M2.
void stats_merge_tree(const double* part, int64_t nparts, int64_t K, int64_t k, int64_t rows_per_part, int64_t rows,
                      int lanes, double* out) {
  const MeanM2 m = merge_parts_tree(part, nparts, K, k, rows_per_part, rows, lanes);
  out[0] = m.n, out[1] = m.mean, out[2] = m.m2;
}
void stats_sum_tree(const double* part, int64_t nparts, int64_t K, int64_t k, int lanes, double* out) {
  sum_parts_tree(part, nparts, K, k, lanes, out[0], out[1]);
}

}  // extern "C"
