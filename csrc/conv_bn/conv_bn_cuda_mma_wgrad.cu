// Tensor-core weight gradient of the fused conv + BN + ReLU (bf16/fp16 or TF32, fp32 accumulation): per group
// dw[kk, (r, s, c)] = sum_m g[m, kk] * patch[m, (r, s, c)], with g formed from grad_y and the saved
// z by the BN+ReLU backward as the tile is loaded (BnReluGrad). The m reduction is split over blocks; the
// splits' partial weight gradients are summed in split order onto 0.f (deterministic, no atomics) through a
// workspace of at most 64 MiB (conv_bn_mma_plan.h, wgrad_rounds): all at once, in rounds, or added into dw
// in place one split a launch, the same bits every way.
#include <cstdint>

#include "conv_bn_cuda_mma_common.cuh"

namespace wslfast::conv_bn {
namespace {

using namespace mma;

// Weight gradient of one group as D[j', col] = sum_m' patch[m', j'] * g[m', col] (conv_bn_mma_geometry.h:
// j' = (r, window column, c), col = (pixel dq, output channel kk)); A = patch^T, B = g^T, both transposed into
// k(=m')-contiguous shared tiles. Block z = (split, group), group fastest, over the splits [split0, split0 +
// gridDim.z / groups) of this launch; each split sums its own range of m' (wgrad_plan) and:
//   kOut == kStore: writes its own slice of `out` (dw itself with one split, else the workspace [split -
//                   split0][K * J]) with plain stores: every element of a slice is written by one thread;
//   kOut == kAdd:   adds its partial into dw in place, onto 0.f for split 0 (one split a launch).
// gz is grad_y; bn turns it into the conv-output gradient as the B tile is loaded. Pixel pairs (kPix 2): D
// goes through shared memory and dw[kk, r, s, c] = D[(r, s, c), (0, kk)] + D[(r, s + stride, c), (1, kk)].
// Launch bounds: 5 blocks an SM for the narrow tiles (ptxas otherwise aimed at 7-8 and spilled); the wide ones
// take what they need.
enum WgradOut { kStore = 0, kAdd = 1 };

template <typename T, int BN, int kVec, int kPix, int kOut>
__global__ void __launch_bounds__(kThreads, BN <= 16 ? 5 : 1)
    conv_wgrad_kernel(const T* __restrict__ gz, BnReluGrad bn, const T* __restrict__ x, float* __restrict__ out,
                      WgradDims d, int64_t split0, int64_t m_per_split) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  __shared__ float Ds[kPix == 2 ? kBM : 1][BN + 1];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t g = blockIdx.z % d.groups, split = split0 + blockIdx.z / d.groups;
  const WgradGeom geo = wgrad_geom(d, kPix);
  const int64_t M = geo.M, J0 = d.R * d.S * (d.C / d.groups);
  const int64_t j0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t m_begin = split * m_per_split, m_end = m_begin + m_per_split < M ? m_begin + m_per_split : M;
  float* slice = kOut == kStore ? out + (split - split0) * (d.K * J0) : out;

  // Every vector a thread moves (v = tid + t * kThreads) sits at k-column tid % kBK (wgrad_slot), so the
  // thread's reduction row is decomposed once a k-tile, for its A and B loads.
  static_assert(kThreads % kBK == 0, "a thread's vectors share one k-column");
  constexpr int kAVec = kBM / kVec * kBK, kBVecs = BN / kVec * kBK;
  float acc[2][BN / 8][4] = {};
  for (int64_t mb = m_begin; mb < m_end; mb += kBK) {
    const int64_t m = mb + tid % kBK;
    const WgradRow row = m < m_end ? wgrad_row(d, geo, m) : WgradRow{0, 0, 0, false};
    // A: kBM x kBK values as kBM/kVec * kBK vectors of kVec channels (wgrad_slot: tile rows, k-column).
#pragma unroll 1
    for (int t = 0; t < kAVec / kThreads; ++t) {
      const RowCol slot = wgrad_slot(tid + t * kThreads, kVec);
      Chunk<T> val;
      val.clear();
      const int64_t off = wgrad_x_offset(d, geo, g, row, j0 + slot.row);
      if (off >= 0) load_piece<kVec>(val, 0, x + off);
      const T* e = val.elems();
#pragma unroll
      for (int i = 0; i < kVec; ++i) As[slot.row + i][slot.col] = e[i];
    }
#pragma unroll 1
    for (int t = 0; t < (kBVecs + kThreads - 1) / kThreads; ++t) {
      const int v = tid + t * kThreads;
      if (v >= kBVecs) break;
      const RowCol slot = wgrad_slot(v, kVec);
      const int64_t col = n0 + slot.row;
      Chunk<T> val;
      val.clear();
      const int64_t off = wgrad_g_offset(d, geo, g, row, col);
      if (off >= 0) {
        Chunk<T> sv;
        sv.clear();
        load_piece<kVec>(val, 0, gz + off);
        load_piece<kVec>(sv, 0, static_cast<const T*>(bn.src) + off);
        int64_t ch[8 / kVec] = {};
        ch[0] = wgrad_g_channel(d, g, col);
        bn_grad_chunk<T, kVec>(val, sv, 1u, ch, bn);  // piece 0 holds the kVec loaded channels
      }
      const T* e = val.elems();
#pragma unroll
      for (int i = 0; i < kVec; ++i) Bs[slot.row + i][slot.col] = e[i];
    }
    __syncthreads();
    mma_k_tile<BN>(As, Bs, acc, warp, lane, static_cast<int>(m_end - mb < kBK ? m_end - mb : kBK), geo.J - j0);
    __syncthreads();
  }
  // dw element `off` gets v: stored, or added onto the running sum of the earlier splits (split 0 onto 0.f,
  // as the workspace sum starts, so every mode gives the same bits).
  auto put = [&](int64_t off, float v) {
    if constexpr (kOut == kStore) slice[off] = v;
    else slice[off] = (split == 0 ? 0.f : slice[off]) + v;
  };
  if constexpr (kPix == 1) {
    const WgradTileOut to = wgrad_tile_out(d, geo, g, j0, n0);
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const RowCol rc = frag_acc(warp, lane, mt, nt, i);  // row: j in the tile, col: kk in the tile
          if (rc.row < to.rows && rc.col < to.cols) put(to.base + (rc.col * to.ld + rc.row), acc[mt][nt][i]);
        }
  } else {
    // one block holds all of D (wgrad_tile: R * U * cg <= kBM rows, BN = 2 * kg columns)
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const RowCol rc = frag_acc(warp, lane, mt, nt, i);
          Ds[rc.row][rc.col] = acc[mt][nt][i];
        }
    __syncthreads();
    const int64_t kg = d.K / d.groups;
    for (int64_t e = tid; e < kg * J0; e += kThreads) {
      const int64_t kk = e / J0, jj = e % J0;
      int64_t row0, row1;
      wgrad_pair_rows(d, geo, jj, row0, row1);
      put((g * kg + kk) * J0 + jj, Ds[row0][kk] + Ds[row1][kg + kk]);
    }
  }
}

// dw[e] = (first ? 0.f : dw[e]) + the round's partials part[0..splits), added in split order.
__global__ void sum_splits_kernel(const float* __restrict__ part, int64_t splits, int64_t n, bool first,
                                  float* __restrict__ dw) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    float acc = first ? 0.f : dw[e];
    for (int64_t sp = 0; sp < splits; ++sp) acc += part[sp * n + e];
    dw[e] = acc;
  }
}

WgradDims dims_of(const ConvShape& s) {
  return {s.N, s.H, s.W, s.C, s.K, s.R, s.S, s.P, s.Q, s.stride, s.pad, s.groups};
}

WgradRounds rounds_of(const ConvShape& s, const GemmTile& t, int64_t limit_bytes) {
  const WgradGeom geo = wgrad_geom(dims_of(s), t.pix);
  return wgrad_rounds(geo.M, s.groups, s.K * s.R * s.S * (s.C / s.groups), limit_bytes);
}

GemmTile tile_of(const ConvShape& s) { return wgrad_tile(s.C / s.groups, s.K / s.groups, s.R, s.S, s.stride); }

}  // namespace

int64_t conv_wgrad_fast_workspace(const ConvShape& s, int64_t workspace_limit_bytes) {
  return rounds_of(s, tile_of(s), workspace_limit_bytes).workspace;
}

void conv_wgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* x, float* dw,
                          float* workspace, const ConvShape& s, CUstream_st* stream, int64_t workspace_limit_bytes) {
  check_bn_grad(bn);
  const GemmTile tile = tile_of(s);
  const WgradRounds plan = rounds_of(s, tile, workspace_limit_bytes);
  if (plan.workspace > 0 && workspace == nullptr)
    throw std::invalid_argument("wslfast conv_bn_relu: the weight gradient needs its workspace");
  const int64_t kg = s.K / s.groups, J = wgrad_geom(dims_of(s), tile.pix).J, n = s.K * s.R * s.S * (s.C / s.groups);
  const dim3 grid_xy(static_cast<unsigned>((J + kBM - 1) / kBM),
                     static_cast<unsigned>((kg * tile.pix + tile.bn - 1) / tile.bn));
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    tile_switch<64>(tile, [&](auto cols, auto vec, auto pix) {
      constexpr int BN = decltype(cols)::value, kVec = decltype(vec)::value, kPix = decltype(pix)::value;
      for (int64_t s0 = 0; s0 < plan.splits; s0 += plan.per_round) {
        const int64_t count = plan.splits - s0 < plan.per_round ? plan.splits - s0 : plan.per_round;
        const dim3 grid(grid_xy.x, grid_xy.y, static_cast<unsigned>(s.groups * count));
        if (plan.in_place) {
          conv_wgrad_kernel<T, BN, kVec, kPix, kAdd><<<grid, kThreads, 0, stream>>>(
              static_cast<const T*>(dy), bn, static_cast<const T*>(x), dw, dims_of(s), s0, plan.per);
        } else {
          conv_wgrad_kernel<T, BN, kVec, kPix, kStore><<<grid, kThreads, 0, stream>>>(
              static_cast<const T*>(dy), bn, static_cast<const T*>(x), plan.splits > 1 ? workspace : dw, dims_of(s),
              s0, plan.per);
        }
        check_launch("tensor-core conv wgrad");
        if (plan.splits > 1 && !plan.in_place) {
          const unsigned blocks = blocks_for(n, 256) > 65536u ? 65536u : blocks_for(n, 256);
          sum_splits_kernel<<<blocks, 256, 0, stream>>>(workspace, count, n, s0 == 0, dw);
          check_launch("tensor-core conv wgrad split sum");
        }
      }
    });
  });
}

}  // namespace wslfast::conv_bn
