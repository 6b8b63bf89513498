// Tensor-core weight gradient of the fused conv + BN + ReLU (bf16/fp16 or TF32, fp32 accumulation): per group
// dw[kk, (r, s, c)] = sum_m g[m, kk] * patch[m, (r, s, c)], with g formed from grad_y and the saved
// z by the BN+ReLU backward as the tile is loaded (BnReluGrad). The m reduction is split over blocks,
// which add into dw with float atomics.
#include <cstdint>

#include "conv_bn_cuda_mma_common.cuh"

namespace wslfast::conv_bn {
namespace {

using namespace mma;

// Weight gradient of one group as D[j, kk] = sum_m patch[m, j] * g[m, kk] (j = (r, s, c), kk = output
// channel in the group): A = patch^T, B = g^T, both transposed into k(=m)-contiguous shared tiles.
// Block z = group * splits + split; each split sums its own range of m and adds into dw (float, zeroed).
// gz is grad_y; bn turns it into the conv-output gradient as the B tile is loaded.
template <typename T, int BN, int kVec>
__global__ void __launch_bounds__(kThreads) conv_wgrad_kernel(const T* __restrict__ gz, BnReluGrad bn,
                                                              const T* __restrict__ x, float* __restrict__ dw,
                                                              ConvShape s, int64_t splits, int64_t m_per_split) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t g = blockIdx.z / splits, split = blockIdx.z % splits;
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups, J = s.R * s.S * cg, M = s.N * s.P * s.Q;
  const int64_t j0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t m_begin = split * m_per_split, m_end = m_begin + m_per_split < M ? m_begin + m_per_split : M;

  float acc[2][BN / 8][4] = {};
  for (int64_t mb = m_begin; mb < m_end; mb += kBK) {
    // A: kBM x kBK values as kBM/kVec * kBK vectors of kVec channels; v -> m = v % kBK, j chunk v / kBK.
    for (int v = tid; v < kBM / kVec * kBK; v += kThreads) {
      const int ml = v % kBK, jl = (v / kBK) * kVec;
      const int64_t m = mb + ml, j = j0 + jl;
      Chunk<T> val;
      val.clear();
      if (m < m_end && j < J) {
        const int64_t tap = j / cg, c = j % cg, r = tap / s.S, t = tap % s.S;
        const int64_t q = m % s.Q, p = (m / s.Q) % s.P, n = m / (s.Q * s.P);
        const int64_t h = p * s.stride - s.pad + r, w = q * s.stride - s.pad + t;
        if (h >= 0 && h < s.H && w >= 0 && w < s.W)
          load_piece<kVec>(val, 0, x + ((n * s.H + h) * s.W + w) * s.C + g * cg + c);
      }
      const T* e = val.elems();
#pragma unroll
      for (int i = 0; i < kVec; ++i) As[jl + i][ml] = e[i];
    }
    for (int v = tid; v < BN / kVec * kBK; v += kThreads) {
      const int ml = v % kBK, kl = (v / kBK) * kVec;
      const int64_t m = mb + ml, kk = n0 + kl;
      Chunk<T> val;
      val.clear();
      if (m < m_end && kk < kg) {
        Chunk<T> sv;
        sv.clear();
        const int64_t off = m * s.K + g * kg + kk;
        load_piece<kVec>(val, 0, gz + off);
        load_piece<kVec>(sv, 0, static_cast<const T*>(bn.src) + off);
        int64_t ch[8 / kVec] = {};
        ch[0] = g * kg + kk;
        bn_grad_chunk<T, kVec>(val, sv, 1u, ch, bn);  // piece 0 holds the kVec loaded channels
      }
      const T* e = val.elems();
#pragma unroll
      for (int i = 0; i < kVec; ++i) Bs[kl + i][ml] = e[i];
    }
    __syncthreads();
    mma_k_tile<BN>(As, Bs, acc, warp, lane);
    __syncthreads();
  }
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t kk = n0 + nt * 8 + 2 * tig + e;
      if (kk >= kg) continue;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t j = j0 + warp * 32 + mt * 16 + gid + 8 * half;
          if (j < J) atomicAdd(dw + (g * kg + kk) * J + j, acc[mt][nt][2 * half + e]);
        }
    }
}

}  // namespace

void conv_wgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* x, float* dw,
                          const ConvShape& s, CUstream_st* stream) {
  check_bn_grad(bn);
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t kg = s.K / s.groups, J = s.R * s.S * (s.C / s.groups), M = s.N * s.P * s.Q;
    // Split the m reduction so the grid fills the GPU: ~8k positions per block, at most 65535 blocks in z.
    int64_t splits = (M + 8191) / 8192;
    if (splits * s.groups > 65535) splits = 65535 / s.groups;
    if (splits < 1) splits = 1;
    const int64_t per = ((M + splits - 1) / splits + kBK - 1) / kBK * kBK;
    splits = (M + per - 1) / per;
    bn_switch(kg, [&](auto cols) {
      vec_switch(s.C / s.groups, kg, [&](auto vec) {
        constexpr int BN = decltype(cols)::value, kVec = decltype(vec)::value;
        const dim3 grid(static_cast<unsigned>((J + kBM - 1) / kBM), static_cast<unsigned>((kg + BN - 1) / BN),
                        static_cast<unsigned>(s.groups * splits));
        conv_wgrad_kernel<T, BN, kVec><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(dy), bn,
                                                                      static_cast<const T*>(x), dw, s, splits, per);
      });
    });
    check_launch("tensor-core conv wgrad");
  });
}

}  // namespace wslfast::conv_bn
