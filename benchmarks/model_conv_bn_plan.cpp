// C entry points over the conv + BN kernels' launch plans (csrc/conv_bn/conv_bn_mma_plan.h, the functions
// the launchers choose their tiles, grids, splits and merge blocks with), compiled for the host by
// benchmarks/model_conv_bn.py and called through ctypes: the model counts the work of the plans the code runs.
#include <cstdint>

#include "../csrc/conv_bn/conv_bn_cuda.h"
#include "../csrc/conv_bn/conv_bn_mma_plan.h"

using namespace wslfast::conv_bn;
using namespace wslfast::conv_bn::mma;

namespace {
GemmDims dims_of(const int64_t* v) {
  return GemmDims{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
}
}  // namespace

extern "C" {

// Forward (dgrad 0) or data gradient (1) GEMM with dims N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride,
// pad, groups (the data gradient's: the transposed conv). out: bn, vec, pix, grid x, column tiles, mtiles, phases.
void plan_gemm(const int64_t* dims, int dgrad, int f32, int64_t* out) {
  const GemmDims d = dims_of(dims);
  const GemmTile t = gemm_tile(d.Cin / d.groups, d.Cout / d.groups, d.Wout, dgrad != 0, f32 != 0);
  const GemmGrid g = gemm_grid(d, t, dgrad != 0);
  const int64_t v[] = {t.bn, t.vec, t.pix, g.x, g.ntiles, g.mtiles, g.phases};
  for (int i = 0; i < 7; ++i) out[i] = v[i];
}

// One phase's GEMM: out = M (rows), Kg (k extent).
void plan_gemm_phase(const int64_t* dims, int dgrad, int pix, int64_t phase, int64_t* out) {
  const GemmGeom g = gemm_geom(dims_of(dims), dgrad != 0, pix, phase);
  out[0] = g.M;
  out[1] = g.Kg;
}

// Weight gradient of the conv N, H, W, C, K, R, S, P, Q, stride, pad, groups under a workspace limit
// (bytes; <= 0: the launcher's default). out: bn, vec, pix, J (rows of D), M (reduction rows), splits, per,
// per_round, rounds, workspace floats, in_place.
void plan_wgrad(const int64_t* v, int64_t limit, int64_t* out) {
  const WgradDims d{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
  const GemmTile t = wgrad_tile(d.C / d.groups, d.K / d.groups, d.R, d.S, d.stride);
  const WgradGeom g = wgrad_geom(d, t.pix);
  const WgradRounds r = wgrad_rounds(g.M, d.groups, d.K * d.R * d.S * (d.C / d.groups),
                                     limit > 0 ? limit : kWgradWorkspaceLimitBytes);
  const int64_t o[] = {t.bn, t.vec, t.pix, g.J, g.M, r.splits, r.per, r.per_round, r.rounds, r.workspace, r.in_place};
  for (int i = 0; i < 11; ++i) out[i] = o[i];
}

// wgrad_plan (the m-splits) of M reduction rows.
void plan_wgrad_splits(int64_t M, int64_t groups, int64_t* out) {
  const WgradPlan p = wgrad_plan(M, groups);
  out[0] = p.splits;
  out[1] = p.per;
}

// The per-channel merge blocks: out = channels, lanes, serial depth.
void plan_merge(int64_t K, int64_t nparts, int64_t* out) {
  const MergeGeometry g = merge_geometry(K, nparts);
  out[0] = g.channels;
  out[1] = g.lanes;
  out[2] = merge_depth(g, nparts);
}

int64_t plan_backward_parts(int64_t rows) { return backward_parts(rows); }

int64_t plan_tile_rows() { return kBM; }

int64_t plan_wgrad_limit() { return kWgradWorkspaceLimitBytes; }

}  // extern "C"
