// The tiny per-channel kernels between the big passes of the fused conv + BN + ReLU: one thread per
// channel turns the batch sums into mean/var and scale/shift (forward) or into the backward coefficients,
// or folds the batch statistics into the running ones.
// One launch each instead of a dozen [K]-sized torch ops; the math is conv_bn_finalize.h, shared with CPU.
// The forward one first merges the conv's per-block (count, mean, M2) partials (conv_bn_stats.h) in a
// fixed-order parallel tree: blocks of merge_geometry (conv_bn_mma_plan.h), each lane merging a strided slice
// of the parts, then the lanes in a halving tree (merge_parts_tree is the same order on the host).
#include <cstdint>

#include "conv_bn_cuda_common.cuh"
#include "conv_bn_finalize.h"
#include "conv_bn_mma_plan.h"
#include "conv_bn_stats.h"

namespace wslfast::conv_bn {
namespace {

constexpr int kThreads = 128;

// Block (channels, lanes) = merge_geometry(K, nparts), channels * lanes <= 1024 (the launch bounds keep a
// 1024-thread block within the SM's 64K registers).
__global__ void __launch_bounds__(1024) forward_finalize_kernel(const double* __restrict__ part, int64_t nparts, int64_t rows_per_part,
                                        int64_t rows, const float* __restrict__ gamma, const float* __restrict__ beta,
                                        double eps, float* __restrict__ mean, float* __restrict__ var,
                                        float* __restrict__ scale_shift, int64_t K) {
  __shared__ double sn[1024], sm[1024], s2[1024];
  const int ch = threadIdx.x, lane = threadIdx.y, nch = blockDim.x, me = lane * nch + ch;
  const int64_t c = blockIdx.x * int64_t(nch) + ch;
  MeanM2 st{0.0, 0.0, 0.0};
  if (c < K) st = merge_parts(part, nparts, K, c, rows_per_part, rows, lane, blockDim.y);
  sn[me] = st.n;
  sm[me] = st.mean;
  s2[me] = st.m2;
  for (int half = blockDim.y / 2; half >= 1; half /= 2) {
    __syncthreads();  // level `half` reads what level 2 * half (or the slices) wrote
    if (lane < half) {
      const int other = me + half * nch;
      chan_merge(st, MeanM2{sn[other], sm[other], s2[other]});
      sn[me] = st.n;
      sm[me] = st.mean;
      s2[me] = st.m2;
    }
  }
  if (lane != 0 || c >= K) return;
  float m, v;
  double scale, shift;
  // About the pivot = the mean: s0 = 0, s1 = M2, so var = M2 / n without cancellation.
  bn_forward_one<float>(0.0, st.m2, st.n, st.mean, gamma[c], beta[c], eps, m, v, scale, shift);
  mean[c] = m;
  var[c] = v;
  scale_shift[c] = static_cast<float>(scale);
  scale_shift[K + c] = static_cast<float>(shift);
}

__global__ void scale_shift_kernel(const float* __restrict__ mean, const float* __restrict__ var,
                                   const float* __restrict__ gamma, const float* __restrict__ beta, double eps,
                                   float* __restrict__ scale_shift, int64_t K) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= K) return;
  double scale, shift;
  bn_scale_shift_one(mean[c], var[c], gamma[c], beta[c], eps, scale, shift);
  scale_shift[c] = static_cast<float>(scale);
  scale_shift[K + c] = static_cast<float>(shift);
}

__global__ void backward_finalize_kernel(const double* __restrict__ sums, double count, const float* __restrict__ mean,
                                         const float* __restrict__ var, const float* __restrict__ gamma, double eps,
                                         float* __restrict__ kpq, float* __restrict__ dgamma,
                                         float* __restrict__ dbeta, int64_t K) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= K) return;
  const BnBackwardCoef r = bn_backward_one(sums[c], sums[K + c], count, mean[c], var[c], gamma[c], eps);
  kpq[c] = static_cast<float>(r.k);
  kpq[K + c] = static_cast<float>(r.p);
  kpq[2 * K + c] = static_cast<float>(r.q);
  dgamma[c] = static_cast<float>(r.dgamma);
  dbeta[c] = static_cast<float>(r.dbeta);
}

template <typename T>
__global__ void running_stats_kernel(T* __restrict__ running_mean, T* __restrict__ running_var,
                                     const float* __restrict__ mean, const float* __restrict__ var, float momentum,
                                     float unbias, int64_t K) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= K) return;
  const float keep = 1.f - momentum;
  running_mean[c] = from_float<T>(to_float(running_mean[c]) * keep + momentum * mean[c]);
  running_var[c] = from_float<T>(to_float(running_var[c]) * keep + momentum * (var[c] * unbias));
}

}  // namespace

void update_running_stats_cuda(DType dtype, void* running_mean, void* running_var, const float* mean,
                               const float* var, double momentum, double unbias, int64_t K, CUstream_st* stream) {
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    running_stats_kernel<T><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(running_mean), static_cast<T*>(running_var), mean, var, static_cast<float>(momentum),
        static_cast<float>(unbias), K);
    check_launch("BN running statistics");
  });
}

void bn_forward_finalize_cuda(const double* parts, StatLayout layout, const float* gamma, const float* beta,
                              double eps, float* mean, float* var, float* scale_shift, int64_t K, CUstream_st* stream) {
  const mma::MergeGeometry geo = mma::merge_geometry(K, layout.nparts);
  const dim3 block(geo.channels, geo.lanes);
  forward_finalize_kernel<<<static_cast<unsigned>((K + geo.channels - 1) / geo.channels), block, 0, stream>>>(
      parts, layout.nparts, layout.rows_per_part, layout.rows, gamma, beta, eps, mean, var, scale_shift, K);
  check_launch("BN forward finalize");
}

void bn_scale_shift_cuda(const float* mean, const float* var, const float* gamma, const float* beta, double eps,
                         float* scale_shift, int64_t K, CUstream_st* stream) {
  scale_shift_kernel<<<blocks_for(K, kThreads), kThreads, 0, stream>>>(mean, var, gamma, beta, eps, scale_shift, K);
  check_launch("BN scale/shift");
}

void bn_backward_finalize_cuda(const double* sums, double count, const float* mean, const float* var,
                               const float* gamma, double eps, float* kpq, float* dgamma, float* dbeta, int64_t K,
                               CUstream_st* stream) {
  backward_finalize_kernel<<<blocks_for(K, kThreads), kThreads, 0, stream>>>(sums, count, mean, var, gamma, eps, kpq,
                                                                             dgamma, dbeta, K);
  check_launch("BN backward finalize");
}

}  // namespace wslfast::conv_bn
