// Tensor-core weight gradient of the fused conv + BN + ReLU (bf16/fp16 or TF32, fp32 accumulation): per group
// dw[kk, (r, s, c)] = sum_m g[m, kk] * patch[m, (r, s, c)], with g formed from grad_y and the saved
// z by the BN+ReLU backward as the tile is loaded (BnReluGrad). The m reduction is split over blocks,
// whose partial weight gradients a second kernel sums in split order (deterministic, no atomics).
#include <cstdint>

#include "conv_bn_cuda_mma_common.cuh"

namespace wslfast::conv_bn {
namespace {

using namespace mma;

// Weight gradient of one group as D[j, kk] = sum_m patch[m, j] * g[m, kk] (j = (r, s, c), kk = output
// channel in the group): A = patch^T, B = g^T, both transposed into k(=m)-contiguous shared tiles.
// Block z = group * splits + split; each split sums its own range of m (wgrad_plan) and writes its own
// slice of `out` (dw itself with one split, else the workspace [splits][K * J]), with plain stores: every
// element of a slice is written by exactly one thread. gz is grad_y; bn turns it into the conv-output
// gradient as the B tile is loaded. Index math: conv_bn_mma_index.h (wgrad_*), tested on the CPU.
template <typename T, int BN, int kVec>
__global__ void __launch_bounds__(kThreads) conv_wgrad_kernel(const T* __restrict__ gz, BnReluGrad bn,
                                                              const T* __restrict__ x, float* __restrict__ out,
                                                              WgradDims d, int64_t splits, int64_t m_per_split) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t g = blockIdx.z / splits, split = blockIdx.z % splits;
  const int64_t J = d.R * d.S * (d.C / d.groups), M = d.N * d.P * d.Q;
  const int64_t j0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t m_begin = split * m_per_split, m_end = m_begin + m_per_split < M ? m_begin + m_per_split : M;
  float* slice = out + split * (d.K * J);

  float acc[2][BN / 8][4] = {};
  for (int64_t mb = m_begin; mb < m_end; mb += kBK) {
    // A: kBM x kBK values as kBM/kVec * kBK vectors of kVec channels (wgrad_slot: tile rows, k-column).
    for (int v = tid; v < kBM / kVec * kBK; v += kThreads) {
      const RowCol slot = wgrad_slot(v, kVec);
      const int64_t m = mb + slot.col;
      Chunk<T> val;
      val.clear();
      const int64_t off = m < m_end ? wgrad_x_offset(d, g, m, j0 + slot.row) : -1;
      if (off >= 0) load_piece<kVec>(val, 0, x + off);
      const T* e = val.elems();
#pragma unroll
      for (int i = 0; i < kVec; ++i) As[slot.row + i][slot.col] = e[i];
    }
    for (int v = tid; v < BN / kVec * kBK; v += kThreads) {
      const RowCol slot = wgrad_slot(v, kVec);
      const int64_t m = mb + slot.col, kk = n0 + slot.row;
      Chunk<T> val;
      val.clear();
      const int64_t off = m < m_end ? wgrad_g_offset(d, g, m, kk) : -1;
      if (off >= 0) {
        Chunk<T> sv;
        sv.clear();
        load_piece<kVec>(val, 0, gz + off);
        load_piece<kVec>(sv, 0, static_cast<const T*>(bn.src) + off);
        int64_t ch[8 / kVec] = {};
        ch[0] = wgrad_g_channel(d, g, kk);
        bn_grad_chunk<T, kVec>(val, sv, 1u, ch, bn);  // piece 0 holds the kVec loaded channels
      }
      const T* e = val.elems();
#pragma unroll
      for (int i = 0; i < kVec; ++i) Bs[slot.row + i][slot.col] = e[i];
    }
    __syncthreads();
    mma_k_tile<BN>(As, Bs, acc, warp, lane);
    __syncthreads();
  }
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const RowCol rc = frag_acc(warp, lane, mt, nt, i);  // row: j in the tile, col: kk in the tile
        const int64_t off = wgrad_dw_offset(d, g, n0 + rc.col, j0 + rc.row);
        if (off >= 0) slice[off] = acc[mt][nt][i];
      }
}

// dw[e] = sum over splits, in split order, of part[split][e].
__global__ void sum_splits_kernel(const float* __restrict__ part, int64_t splits, int64_t n, float* __restrict__ dw) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int64_t sp = 0; sp < splits; ++sp) acc += part[sp * n + e];
    dw[e] = acc;
  }
}

WgradDims dims_of(const ConvShape& s) {
  return {s.N, s.H, s.W, s.C, s.K, s.R, s.S, s.P, s.Q, s.stride, s.pad, s.groups};
}

}  // namespace

int64_t conv_wgrad_fast_workspace(const ConvShape& s) {
  const WgradPlan plan = wgrad_plan(s.N * s.P * s.Q, s.groups);
  return plan.splits > 1 ? plan.splits * s.K * s.R * s.S * (s.C / s.groups) : 0;
}

void conv_wgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* x, float* dw,
                          float* workspace, const ConvShape& s, CUstream_st* stream) {
  check_bn_grad(bn);
  const WgradPlan plan = wgrad_plan(s.N * s.P * s.Q, s.groups);
  if (plan.splits > 1 && workspace == nullptr)
    throw std::invalid_argument("wslfast conv_bn_relu: the weight gradient needs its workspace");
  float* out = plan.splits > 1 ? workspace : dw;
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t kg = s.K / s.groups, J = s.R * s.S * (s.C / s.groups);
    bn_switch(kg, [&](auto cols) {
      vec_switch(s.C / s.groups, kg, [&](auto vec) {
        constexpr int BN = decltype(cols)::value, kVec = decltype(vec)::value;
        const dim3 grid(static_cast<unsigned>((J + kBM - 1) / kBM), static_cast<unsigned>((kg + BN - 1) / BN),
                        static_cast<unsigned>(s.groups * plan.splits));
        conv_wgrad_kernel<T, BN, kVec><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(dy), bn,
                                                                      static_cast<const T*>(x), out, dims_of(s),
                                                                      plan.splits, plan.per);
      });
    });
    check_launch("tensor-core conv wgrad");
  });
  if (plan.splits > 1) {
    const int64_t n = s.K * s.R * s.S * (s.C / s.groups);
    sum_splits_kernel<<<blocks_for(n, 256) > 65536u ? 65536u : blocks_for(n, 256), 256, 0, stream>>>(workspace,
                                                                                                    plan.splits, n, dw);
    check_launch("tensor-core conv wgrad split sum");
  }
}

}  // namespace wslfast::conv_bn
