// Launch plans of the conv + BN CUDA kernels in one place: which tile each tensor-core GEMM runs, its grid, the
// weight gradient's m-splits and bounded workspace, the finalize's merge geometry. The launchers
// (conv_bn_cuda_mma*.cu, conv_bn_cuda_finalize.cu, conv_bn_cuda.cu) take their choices from here, and
// benchmarks/model_conv_bn.py compiles this header for the host to count the work a layer costs.
// Plain C++ that nvcc also compiles for the device.
#pragma once
#include <cstdint>

#include "conv_bn_mma_geometry.h"
#include "conv_bn_mma_index.h"

namespace wslfast::conv_bn::mma {

// A forward / data-gradient GEMM's tile: bn columns (8, 16, 32, 64), loads of vec channels (4: 8-byte
// bf16/fp16 pieces, 8: 16-byte), pix output pixels a GEMM row (conv_bn_mma_geometry.h).
struct GemmTile {
  int bn, vec, pix;
};

inline constexpr int kMaxBnF32 = 32;  // float32 (TF32) tiles hold twice the registers: 64 columns spill

// cin_g / cout_g: the GEMM's input / output channels a group (data gradient: K / groups and C / groups);
// out_w: the output width (the forward takes pixel pairs only for an even width, so that each block's
// statistics cover 2 * kBM whole output rows, the layout conv_fwd_fast_stat_layout describes).
WSLFAST_IDX_HD GemmTile gemm_tile(int64_t cin_g, int64_t cout_g, int64_t out_w, bool dgrad, bool f32) {
  const int vec = (cin_g % 8 == 0 && cout_g % 8 == 0) ? 8 : 4;
  const int pix = (cout_g == 4 && (dgrad || out_w % 2 == 0)) ? 2 : 1;
  const int64_t cols = cout_g * pix;
  const int bn = cols <= 8 ? 8 : cols <= 16 ? 16 : (cols <= 32 || f32) ? 32 : 64;
  return {bn, pix == 2 ? 4 : vec, pix};
}

// Grid of conv_gemm_kernel, one dimension: block = (m-tile, phase, group, column tile) with the column tile
// fastest, then the group, then the phase, so the blocks that read the same input sectors (the column tiles
// of one row tile, neighbouring groups' channels, the phases of one region) run at the same time and share
// them through L2 instead of each pass streaming the whole tensor from memory again. mtiles is the largest
// phase's (phase 0); blocks past a smaller phase's rows return at once.
struct GemmGrid {
  int64_t x, ntiles, mtiles, phases;
};
WSLFAST_IDX_HD int64_t gemm_ntiles(const GemmDims& d, const GemmTile& t) {
  return ((d.Cout / d.groups) * t.pix + t.bn - 1) / t.bn;
}
WSLFAST_IDX_HD GemmGrid gemm_grid(const GemmDims& d, const GemmTile& t, bool dgrad) {
  const GemmGeom g0 = gemm_geom(d, dgrad, t.pix, 0);
  const int64_t mtiles = g0.M > 0 ? (g0.M + kBM - 1) / kBM : 1, phases = gemm_phases(d, dgrad);
  const int64_t ntiles = gemm_ntiles(d, t);
  return {mtiles * phases * d.groups * ntiles, ntiles, mtiles, phases};
}

// Weight gradient tile: bn columns over kg * pix, vec-channel loads; pix = 2 (pixel pairs) for 4 output
// channels a group when a block's 128 rows hold all of D's rows (R * (S + stride) * cg), so the pairs' two
// halves of a dw element meet in one block.
WSLFAST_IDX_HD GemmTile wgrad_tile(int64_t cg, int64_t kg, int64_t R, int64_t S, int64_t stride) {
  const int vec = (cg % 8 == 0 && kg % 8 == 0) ? 8 : 4;
  const int pix = (kg == 4 && R * (S + stride) * cg <= kBM) ? 2 : 1;
  const int64_t cols = kg * pix;
  const int bn = cols <= 8 ? 8 : cols <= 16 ? 16 : cols <= 32 ? 32 : 64;
  return {bn, pix == 2 ? 4 : vec, pix};
}

// The weight gradient's m-splits (wgrad_plan) and how they are summed. The splits' partial dw go through a
// workspace of at most `limit_bytes`: all splits at once when they fit (2 launches), else rounds of as many
// whole splits as fit (2 launches a round), else (a single split's dw over the limit) one launch per split
// adding its partial into dw in place. Every mode adds the partials in split order onto 0.f, one float sum
// per element, so the result is the same bit for bit whatever the limit.
struct WgradRounds {
  int64_t splits, per;   // wgrad_plan's
  int64_t per_round;     // splits a launch computes (splits when there is one round)
  int64_t rounds;        // launches of the wgrad kernel
  int64_t workspace;     // floats (0: none)
  bool in_place;         // each launch adds its split's partial into dw (no workspace, no sum kernel)
};
WSLFAST_IDX_HD WgradRounds wgrad_rounds(int64_t M, int64_t groups, int64_t dw_elems, int64_t limit_bytes) {
  const WgradPlan p = wgrad_plan(M, groups);
  WgradRounds r{p.splits, p.per, p.splits, 1, 0, false};
  if (p.splits <= 1) return r;
  const int64_t slice = dw_elems * 4;
  const int64_t fit = slice > 0 ? limit_bytes / slice : p.splits;
  if (fit >= p.splits) {
    r.workspace = p.splits * dw_elems;
  } else if (fit >= 2) {
    r.per_round = fit;
    r.rounds = (p.splits + fit - 1) / fit;
    r.workspace = fit * dw_elems;
  } else {
    r.per_round = 1;
    r.rounds = p.splits;
    r.in_place = true;
  }
  return r;
}

// The per-channel merges of statistics partials (forward finalize, backward reduce_parts): a block of
// `channels` x `lanes` threads takes `channels` channels; lane l merges parts l, l + lanes, ... in order, then
// the lanes merge in a halving tree (l with l + lanes / 2, ..., l with l + 1), a fixed order: the result
// repeats bit for bit. 4 channels a block (a warp reads 8 parts' 32-byte rows of doubles, whole sectors) and
// up to 256 lanes, no more than the parts need: K / 4 blocks share the merge, and the longest chain is
// nparts / 256 merges plus 8 tree levels (ResNeXt stage 1 at batch 256: 6272 parts, 33 merges).
struct MergeGeometry {
  int channels, lanes;
};
WSLFAST_IDX_HD MergeGeometry merge_geometry(int64_t K, int64_t nparts) {
  (void)K;
  int lanes = 256;
  while (lanes > 1 && lanes / 2 >= nparts) lanes /= 2;
  return {4, lanes};
}
// Parts of the backward's per-channel sums (channel_sums_kernel): ~64 rows a thread of 8 row lanes, at most 4096.
WSLFAST_IDX_HD int64_t backward_parts(int64_t rows) {
  const int64_t p = (rows + 8 * 64 - 1) / (8 * 64);
  return p < 1 ? 1 : (p > 4096 ? 4096 : p);
}
// Serial merges on the longest chain: a lane's strided slice, then one per tree level.
WSLFAST_IDX_HD int64_t merge_depth(const MergeGeometry& g, int64_t nparts) {
  int levels = 0;
  for (int l = g.lanes; l > 1; l /= 2) ++levels;
  return (nparts + g.lanes - 1) / g.lanes + levels;
}

}  // namespace wslfast::conv_bn::mma
