// Device helpers shared by the conv+BN+ReLU CUDA files: storage <-> float conversion, the dtype switch,
// launch-error checks. CUDA headers only (no torch).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "conv_bn_cuda.h"

namespace wslfast::conv_bn {

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// One element of the BN+ReLU backward (see BnReluGrad): the separate pass and the tensor-core gradient
// kernels call this same function, and its roundings are spelled out (__fmaf_rn, no contraction left to
// the compiler), so both give the same g bit for bit. The mask is the forward's: y = relu(fma(z, s, t)).
__device__ __forceinline__ float bn_relu_grad(float dy, float src, int64_t c, const float* __restrict__ ms,
                                              const float* __restrict__ mt, const float* __restrict__ k,
                                              const float* __restrict__ p, const float* __restrict__ q, bool relu,
                                              bool use_pq) {
  if (relu && !(__fmaf_rn(src, __ldg(ms + c), __ldg(mt + c)) > 0.f)) dy = 0.f;
  if (!use_pq) return __fmul_rn(dy, __ldg(k + c));
  return __fmaf_rn(dy, __ldg(k + c), __fmaf_rn(src, __ldg(p + c), __ldg(q + c)));
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("wslfast conv_bn_relu ") + what + ": " + cudaGetErrorString(err));
}

inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 30) ? (1 << 30) : b));
}

}  // namespace wslfast::conv_bn

// DTYPE_SWITCH(dtype, T, [&] { kernel<T><<<...>>>(...); }) over the three storage types.
#define WSLFAST_DTYPE_SWITCH(DT, T, ...)                                                        \
  [&] {                                                                                        \
    switch (DT) {                                                                              \
      case ::wslfast::DType::kFloat32: { using T = float; return __VA_ARGS__(); }              \
      case ::wslfast::DType::kFloat16: { using T = __half; return __VA_ARGS__(); }             \
      case ::wslfast::DType::kBFloat16: { using T = __nv_bfloat16; return __VA_ARGS__(); }     \
      default: throw std::invalid_argument("wslfast conv_bn_relu (CUDA): dtype must be float32, " \
                                           "float16 or bfloat16");                             \
    }                                                                                          \
  }()
