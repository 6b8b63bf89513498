// CUDA kernels of the sparse soft-target softmax cross-entropy. One block per row; each thread walks
// the row in 16-byte vectors keeping an online (max, sum of exp) pair; no dense target is ever built:
// the row's few target ids are merged in as the thread passes their columns (ids are sorted per row).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/static_switch.h"
#include "soft_ce.h"

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

// Merge the online softmax state (m2, s2) into (m, s): s is a sum of exp(z - m).
__device__ __forceinline__ void merge_max_sum(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty (or all -inf): nothing to add
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

__device__ __forceinline__ void add_one(float& m, float& s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.f;
    m = x;
  } else if (x != -INFINITY) {
    s += expf(x - m);  // NaN logits land here and poison the sum, as they should
  }
}

// Block-wide reductions; every thread gets the result. `scratch` holds 32 values.
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

__device__ void block_max_sum(float& m, float& s, float* scratch_m, float* scratch_s) {
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_max_sum(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) { scratch_m[warp] = m; scratch_s[warp] = s; }
  __syncthreads();
  m = lane < nwarps ? scratch_m[lane] : -INFINITY;
  s = lane < nwarps ? scratch_s[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_max_sum(m, s, m2, s2);
  }
}

template <typename T, bool kAligned>
__global__ void __launch_bounds__(kMaxThreads)
forward_kernel(const T* __restrict__ logits, int64_t cols, int64_t row_stride, int64_t col_begin,
               Targets tg, double* row_max, double* row_sumexp, double* target_dot, double* weight_sum) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[2][32];
  __shared__ double scratch_d[32];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * row_stride;
  float m = -INFINITY, s = 0.f;
  int64_t c = threadIdx.x;
  if constexpr (kAligned) {
    const int64_t nvec = cols / kVec;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(z) + v);
      const T* e = reinterpret_cast<const T*>(&raw);
      float x[kVec], vm = -INFINITY;
#pragma unroll
      for (int i = 0; i < kVec; ++i) { x[i] = to_float(e[i]); vm = fmaxf(vm, x[i]); }
      if (vm > m) { s *= expf(m - vm); m = vm; }
      if (m != -INFINITY) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) s += expf(x[i] - m);
      }
    }
    c = nvec * kVec + threadIdx.x;
  }
  for (; c < cols; c += blockDim.x) add_one(m, s, to_float(z[c]));

  const int64_t b = tg.offsets[row], e = tg.offsets[row + 1];
  // The target terms in float64: W * lse - dot cancels badly in fp32 for large logits (|z| ~ 1e4).
  double dot = 0.0, wsum = 0.0;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) {
    const double w = tg.weights[j];
    wsum += w;
    const int64_t k = tg.indices[j] - col_begin;
    if (k >= 0 && k < cols) dot += w * static_cast<double>(to_float(z[k]));
  }
  block_max_sum(m, s, scratch[0], scratch[1]);
  dot = block_sum(dot, scratch_d);
  wsum = block_sum(wsum, scratch_d);
  if (threadIdx.x == 0) {
    row_max[row] = m;  // exact: an element of the row
    row_sumexp[row] = s;
    target_dot[row] = dot;
    weight_sum[row] = wsum;
  }
}

// First position in indices[b, e) whose id is >= key.
__device__ __forceinline__ int64_t lower_bound(const int64_t* ids, int64_t b, int64_t e, int64_t key) {
  while (b < e) {
    const int64_t mid = b + (e - b) / 2;
    if (ids[mid] < key) b = mid + 1; else e = mid;
  }
  return b;
}

template <typename T, bool kAligned>
__global__ void __launch_bounds__(kMaxThreads)
backward_kernel(const float* __restrict__ grad_rows, const T* __restrict__ logits, int64_t cols,
                int64_t row_stride, const double* __restrict__ lse, int64_t col_begin, Targets tg,
                T* __restrict__ grad, int64_t grad_row_stride) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * row_stride;
  T* out = grad + row * grad_row_stride;
  const int64_t b = tg.offsets[row], e = tg.offsets[row + 1];
  float wpart = 0.f;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) wpart += tg.weights[j];
  const float g = grad_rows[row];
  // Rows without targets get an exact zero gradient, whatever their logits hold.
  const float scale = b == e ? 0.f : g * block_sum(wpart, scratch);
  // lse as hi + lo floats: z - hi is exact when z is near lse, which is where the precision matters.
  const float L = static_cast<float>(lse[row]);
  const float L_lo = static_cast<float>(lse[row] - static_cast<double>(L));
  int64_t p = lower_bound(tg.indices, b, e, col_begin);
  int64_t c = threadIdx.x;
  if constexpr (kAligned) {
    const int64_t nvec = cols / kVec;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(z) + v);
      const T* x = reinterpret_cast<const T*>(&raw);
      float y[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) y[i] = b == e ? 0.f : scale * expf((to_float(x[i]) - L) - L_lo);
      const int64_t lo = col_begin + v * kVec;
      while (p < e && tg.indices[p] < lo) ++p;
      // Ids are sorted and unique: at most one per column. Static indices keep y in registers.
      int64_t next = p < e ? tg.indices[p] : INT64_MAX;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        if (next == lo + i) {
          y[i] -= g * tg.weights[p];
          ++p;
          next = p < e ? tg.indices[p] : INT64_MAX;
        }
      }
      uint4 packed;
      T* o = reinterpret_cast<T*>(&packed);
#pragma unroll
      for (int i = 0; i < kVec; ++i) o[i] = from_float<T>(y[i]);
      reinterpret_cast<uint4*>(out)[v] = packed;
    }
    c = nvec * kVec + threadIdx.x;
  }
  for (; c < cols; c += blockDim.x) {
    float y = b == e ? 0.f : scale * expf((to_float(z[c]) - L) - L_lo);
    const int64_t id = col_begin + c;
    while (p < e && tg.indices[p] < id) ++p;
    if (p < e && tg.indices[p] == id) y -= g * tg.weights[p];
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
                   Targets tg, double* row_max, double* row_sumexp, double* target_dot, double* weight_sum,
                   cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = aligned16(logits) && row_stride % kVec == 0;
  BOOL_SWITCH(aligned, kAligned, [&] {
    forward_kernel<T, kAligned><<<rows, threads_for(cols, kVec), 0, stream>>>(
        static_cast<const T*>(logits), cols, row_stride, col_begin, tg, row_max, row_sumexp, target_dot,
        weight_sum);
  });
  check_launch("forward");
}

template <typename T>
void backward_typed(const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                    int64_t row_stride, const double* lse, int64_t col_begin, Targets tg, void* grad,
                    int64_t grad_row_stride, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = aligned16(logits) && aligned16(grad) && row_stride % kVec == 0 &&
                       grad_row_stride % kVec == 0;
  BOOL_SWITCH(aligned, kAligned, [&] {
    backward_kernel<T, kAligned><<<rows, threads_for(cols, kVec), 0, stream>>>(
        grad_rows, static_cast<const T*>(logits), cols, row_stride, lse, col_begin, tg,
        static_cast<T*>(grad), grad_row_stride);
  });
  check_launch("backward");
}

}  // namespace

void forward_cuda(DType dtype, const void* logits, int64_t rows, int64_t cols, int64_t row_stride,
                  int64_t col_begin, Targets targets, double* row_max, double* row_sumexp,
                  double* target_dot, double* weight_sum, CUstream_st* stream) {
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(logits, rows, cols, row_stride, col_begin, targets,
                                                      row_max, row_sumexp, target_dot, weight_sum, stream);
    case DType::kFloat16: return forward_typed<__half>(logits, rows, cols, row_stride, col_begin, targets,
                                                       row_max, row_sumexp, target_dot, weight_sum, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(logits, rows, cols, row_stride, col_begin, targets, row_max,
                                          row_sumexp, target_dot, weight_sum, stream);
    default: throw std::invalid_argument("wslfast soft_ce (CUDA): logits must be float32, float16 or bfloat16");
  }
}

void backward_cuda(DType dtype, const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, void* grad,
                   int64_t grad_row_stride, CUstream_st* stream) {
  switch (dtype) {
    case DType::kFloat32:
      return backward_typed<float>(grad_rows, logits, rows, cols, row_stride, lse, col_begin, targets, grad,
                                   grad_row_stride, stream);
    case DType::kFloat16:
      return backward_typed<__half>(grad_rows, logits, rows, cols, row_stride, lse, col_begin, targets, grad,
                                    grad_row_stride, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(grad_rows, logits, rows, cols, row_stride, lse, col_begin, targets,
                                           grad, grad_row_stride, stream);
    default: throw std::invalid_argument("wslfast soft_ce (CUDA): logits must be float32, float16 or bfloat16");
  }
}

}  // namespace wslfast::soft_ce
