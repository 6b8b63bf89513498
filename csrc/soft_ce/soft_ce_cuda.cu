// CUDA kernels of the sparse soft-target softmax cross-entropy. One block per row, or several (a split of
// the vocabulary, when the rows alone would leave SMs idle: small batches, large V) whose partial
// (max, sum of exp) are merged in a second small pass; each thread walks its columns in 16-byte vectors
// keeping an online (max, sum of exp) pair (soft_ce_math.h: NaN in gives NaN out); no dense target is ever
// built: the row's few target ids are merged in as the thread passes their columns (ids sorted per row).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/static_switch.h"
#include "soft_ce.h"
#include "soft_ce_math.h"

namespace wslfast::soft_ce {
namespace {

constexpr int kMaxThreads = 512;

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Block-wide reductions; every thread gets the result. `scratch` holds 32 values. The order of the adds
// depends on the block size only, so results repeat bit for bit.
template <typename A>
__device__ A block_sum(A v, A* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : A(0);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ MaxSum shfl_xor(MaxSum st, int o) {
  return {__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
}

__device__ MaxSum block_max_sum(MaxSum st, float* scratch_m, float* scratch_s) {
  for (int o = 16; o > 0; o >>= 1) merge(st, shfl_xor(st, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) { scratch_m[warp] = st.m; scratch_s[warp] = st.s; }
  __syncthreads();
  st = lane < nwarps ? MaxSum{scratch_m[lane], scratch_s[lane]} : max_sum_empty();
  for (int o = 16; o > 0; o >>= 1) merge(st, shfl_xor(st, o));
  return st;
}

// Whether row `row`'s targets are canonical (soft_ce_math.h), agreed by the whole block; [b, e) is the
// row's target range clamped into [0, nnz], safe to read either way.
__device__ bool row_targets_ok(const Targets& tg, int64_t row, int64_t rows, int64_t& b, int64_t& e) {
  bool ok = row_range(tg.offsets, row, rows, tg.nnz, b, e);
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) ok = ok && entry_ok(tg.indices, b, j);
  return __syncthreads_and(ok) != 0;
}

// Block (row, split) reduces columns [c0, c1) of the row (split_range). With one split it writes the row's
// results; with several, its partials at [row * splits + split], merged in split order by merge_kernel.
// Rows whose targets are not canonical get NaN partials (so a NaN loss: the flag the caller's finite-loss
// check reads), and nothing outside the targets or the row is ever read.
template <typename T, bool kAligned>
__global__ void __launch_bounds__(kMaxThreads)
forward_kernel(const T* __restrict__ logits, int64_t cols, int64_t row_stride, int64_t col_begin, Targets tg,
               double* row_max, double* row_sumexp, double* target_dot, double* weight_sum) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[2][32];
  __shared__ double scratch_d[32];
  const int64_t row = blockIdx.x, rows = gridDim.x, splits = gridDim.y, sp = blockIdx.y;
  const T* z = logits + row * row_stride;
  int64_t c0, c1;
  split_range(cols, kAligned ? kVec : 1, splits, sp, c0, c1);
  MaxSum st = max_sum_empty();
  int64_t c = c0 + threadIdx.x;
  if constexpr (kAligned) {
    const int64_t v1 = c1 / kVec;
    for (int64_t v = c0 / kVec + threadIdx.x; v < v1; v += blockDim.x) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(z) + v);
      const T* e = reinterpret_cast<const T*>(&raw);
      float x[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) x[i] = to_float(e[i]);
      add_values<kVec>(st, x);
    }
    c = v1 * kVec + threadIdx.x;
  }
  for (; c < c1; c += blockDim.x) add_value(st, to_float(z[c]));

  int64_t b, e;
  const bool ok = row_targets_ok(tg, row, rows, b, e);
  // The target terms in float64: W * lse - dot cancels badly in fp32 for large logits (|z| ~ 1e4).
  double dot = 0.0, wsum = 0.0;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) {
    const double w = tg.weights[j];
    wsum += w;
    const int64_t k = tg.indices[j] - col_begin;
    if (k >= c0 && k < c1) dot += w * static_cast<double>(to_float(z[k]));
  }
  st = block_max_sum(st, scratch[0], scratch[1]);
  dot = block_sum(dot, scratch_d);
  wsum = block_sum(wsum, scratch_d);
  if (threadIdx.x == 0) {
    const int64_t o = row * splits + sp;
    row_max[o] = ok ? st.m : NAN;  // exact: an element of the row
    row_sumexp[o] = ok ? st.s : NAN;
    target_dot[o] = ok ? dot : NAN;
    weight_sum[o] = ok ? wsum : NAN;
  }
}

// One thread per row merges the row's split partials (part: 4 arrays of rows * splits) in split order.
__global__ void merge_kernel(const double* __restrict__ part, int64_t rows, int64_t splits, double* row_max,
                             double* row_sumexp, double* target_dot, double* weight_sum) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const int64_t n = rows * splits;
  const double* p = part + row * splits;
  MaxSum st = max_sum_empty();
  double dot = 0.0;
  for (int64_t sp = 0; sp < splits; ++sp) {
    merge(st, MaxSum{static_cast<float>(p[sp]), static_cast<float>(p[n + sp])});
    dot += p[2 * n + sp];
  }
  row_max[row] = st.m;
  row_sumexp[row] = st.s;
  target_dot[row] = dot;
  weight_sum[row] = p[3 * n];  // every split sums all of the row's weights; split 0's
}

// First position in indices[b, e) whose id is >= key.
__device__ __forceinline__ int64_t lower_bound(const int64_t* ids, int64_t b, int64_t e, int64_t key) {
  while (b < e) {
    const int64_t mid = b + (e - b) / 2;
    if (ids[mid] < key) b = mid + 1; else e = mid;
  }
  return b;
}

// Block (row, split) writes columns [c0, c1) of the row's gradient; rows with non-canonical targets get NaN.
template <typename T, bool kAligned>
__global__ void __launch_bounds__(kMaxThreads)
backward_kernel(const float* __restrict__ grad_rows, const T* __restrict__ logits, int64_t cols,
                int64_t row_stride, const double* __restrict__ lse, int64_t col_begin, Targets tg,
                T* __restrict__ grad, int64_t grad_row_stride) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, rows = gridDim.x;
  const T* z = logits + row * row_stride;
  T* out = grad + row * grad_row_stride;
  int64_t c0, c1;
  split_range(cols, kAligned ? kVec : 1, gridDim.y, blockIdx.y, c0, c1);
  int64_t b, e;
  const bool ok = row_targets_ok(tg, row, rows, b, e);
  float wpart = 0.f;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) wpart += tg.weights[j];
  const float g = grad_rows[row];
  // Rows without targets get an exact zero gradient, whatever their logits hold; broken rows NaN.
  const float wsum = block_sum(wpart, scratch);
  const bool empty = b == e && ok;
  const float scale = !ok ? NAN : (empty ? 0.f : g * wsum);
  // lse as hi + lo floats: z - hi is exact when z is near lse, which is where the precision matters.
  const float L = static_cast<float>(lse[row]);
  const float L_lo = static_cast<float>(lse[row] - static_cast<double>(L));
  int64_t p = lower_bound(tg.indices, b, ok ? e : b, col_begin + c0);  // broken rows: no target terms
  const int64_t pe = ok ? e : b;
  int64_t c = c0 + threadIdx.x;
  if constexpr (kAligned) {
    const int64_t v1 = c1 / kVec;
    for (int64_t v = c0 / kVec + threadIdx.x; v < v1; v += blockDim.x) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(z) + v);
      const T* x = reinterpret_cast<const T*>(&raw);
      float y[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) y[i] = empty ? 0.f : scale * expf((to_float(x[i]) - L) - L_lo);
      const int64_t lo = col_begin + v * kVec;
      while (p < pe && tg.indices[p] < lo) ++p;
      // Ids are sorted and unique: at most one per column. Static indices keep y in registers.
      int64_t next = p < pe ? tg.indices[p] : INT64_MAX;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        if (next == lo + i) {
          y[i] -= g * tg.weights[p];
          ++p;
          next = p < pe ? tg.indices[p] : INT64_MAX;
        }
      }
      uint4 packed;
      T* o = reinterpret_cast<T*>(&packed);
#pragma unroll
      for (int i = 0; i < kVec; ++i) o[i] = from_float<T>(y[i]);
      reinterpret_cast<uint4*>(out)[v] = packed;
    }
    c = v1 * kVec + threadIdx.x;
  }
  for (; c < c1; c += blockDim.x) {
    float y = empty ? 0.f : scale * expf((to_float(z[c]) - L) - L_lo);
    const int64_t id = col_begin + c;
    while (p < pe && tg.indices[p] < id) ++p;
    if (p < pe && tg.indices[p] == id) y -= g * tg.weights[p];
    out[c] = from_float<T>(y);
  }
}

int threads_for(int64_t cols, int vec) {
  int64_t want = (cols + 2 * vec - 1) / (2 * vec);  // about two vectors per thread
  want = ((want + 31) / 32) * 32;
  return static_cast<int>(want < 32 ? 32 : (want > kMaxThreads ? kMaxThreads : want));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("wslfast soft_ce ") + what + ": " + cudaGetErrorString(err));
}

template <typename T>
void forward_typed(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_begin,
                   Targets tg, int64_t splits, double* workspace, double* row_max, double* row_sumexp,
                   double* target_dot, double* weight_sum, cudaStream_t stream) {
  if (rows == 0) return;
  if (splits < 1 || splits > kMaxSplits || (splits > 1 && workspace == nullptr))
    throw std::invalid_argument("wslfast soft_ce (CUDA): splits must be in [1, 256], with a workspace above 1");
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = aligned16(logits) && row_stride % kVec == 0;
  const int64_t n = rows * splits;
  double* out[4] = {row_max, row_sumexp, target_dot, weight_sum};
  if (splits > 1)
    for (int i = 0; i < 4; ++i) out[i] = workspace + i * n;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  BOOL_SWITCH(aligned, kAligned, [&] {
    forward_kernel<T, kAligned><<<grid, threads_for((cols + splits - 1) / splits, kVec), 0, stream>>>(
        static_cast<const T*>(logits), cols, row_stride, col_begin, tg, out[0], out[1], out[2], out[3]);
  });
  check_launch("forward");
  if (splits > 1) {
    merge_kernel<<<static_cast<unsigned>((rows + 127) / 128), 128, 0, stream>>>(workspace, rows, splits, row_max,
                                                                               row_sumexp, target_dot, weight_sum);
    check_launch("forward merge");
  }
}

template <typename T>
void backward_typed(const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                    int64_t row_stride, const double* lse, int64_t col_begin, Targets tg, int64_t splits,
                    void* grad, int64_t grad_row_stride, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  if (splits < 1 || splits > kMaxSplits)
    throw std::invalid_argument("wslfast soft_ce (CUDA): splits must be in [1, 256]");
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = aligned16(logits) && aligned16(grad) && row_stride % kVec == 0 &&
                       grad_row_stride % kVec == 0;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  BOOL_SWITCH(aligned, kAligned, [&] {
    backward_kernel<T, kAligned><<<grid, threads_for((cols + splits - 1) / splits, kVec), 0, stream>>>(
        grad_rows, static_cast<const T*>(logits), cols, row_stride, lse, col_begin, tg,
        static_cast<T*>(grad), grad_row_stride);
  });
  check_launch("backward");
}

}  // namespace

void forward_cuda(DType dtype, const void* logits, int64_t rows, int64_t cols, int64_t row_stride,
                  int64_t col_begin, Targets targets, int64_t splits, double* workspace, double* row_max,
                  double* row_sumexp, double* target_dot, double* weight_sum, CUstream_st* stream) {
  switch (dtype) {
    case DType::kFloat32:
      return forward_typed<float>(logits, rows, cols, row_stride, col_begin, targets, splits, workspace, row_max,
                                  row_sumexp, target_dot, weight_sum, stream);
    case DType::kFloat16:
      return forward_typed<__half>(logits, rows, cols, row_stride, col_begin, targets, splits, workspace, row_max,
                                   row_sumexp, target_dot, weight_sum, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(logits, rows, cols, row_stride, col_begin, targets, splits, workspace,
                                          row_max, row_sumexp, target_dot, weight_sum, stream);
    default: throw std::invalid_argument("wslfast soft_ce (CUDA): logits must be float32, float16 or bfloat16");
  }
}

void backward_cuda(DType dtype, const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, int64_t splits,
                   void* grad, int64_t grad_row_stride, CUstream_st* stream) {
  switch (dtype) {
    case DType::kFloat32:
      return backward_typed<float>(grad_rows, logits, rows, cols, row_stride, lse, col_begin, targets, splits, grad,
                                   grad_row_stride, stream);
    case DType::kFloat16:
      return backward_typed<__half>(grad_rows, logits, rows, cols, row_stride, lse, col_begin, targets, splits, grad,
                                    grad_row_stride, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(grad_rows, logits, rows, cols, row_stride, lse, col_begin, targets,
                                           splits, grad, grad_row_stride, stream);
    default: throw std::invalid_argument("wslfast soft_ce (CUDA): logits must be float32, float16 or bfloat16");
  }
}

}  // namespace wslfast::soft_ce
