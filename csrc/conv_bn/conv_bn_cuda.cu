// CUDA kernels of the fused conv + BN + ReLU that are not the tensor-core convolution
// (conv_bn_cuda_mma.cu): the simple reference convolutions (one thread per output element, fp32 FMAs),
// the per-channel statistics, the fused scale+shift+ReLU and the fused BN+ReLU backward passes.
// All activations are NHWC rows of K channels; channel c of element i is i % K.
#include <cstdint>
#include <initializer_list>

#include "conv_bn_cuda_common.cuh"
#include "conv_bn_mma_plan.h"
#include "conv_bn_stats.h"

namespace wslfast::conv_bn {
namespace {

constexpr int kThreads = 256;

// ---- simple convolutions: obviously correct, used as the reference for the tensor-core kernels ----

template <typename T>
__global__ void conv_fwd_simple_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                       const float* __restrict__ bias, bool relu, T* __restrict__ z, ConvShape s) {
  const int64_t total = s.N * s.P * s.Q * s.K;
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % s.K, q = (i / s.K) % s.Q, p = (i / (s.K * s.Q)) % s.P, n = i / (s.K * s.Q * s.P);
    const int64_t c0 = (k / kg) * cg;
    float acc = 0.f;
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t h = p * s.stride - s.pad + r;
      if (h < 0 || h >= s.H) continue;
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t wi = q * s.stride - s.pad + t;
        if (wi < 0 || wi >= s.W) continue;
        const T* xp = x + ((n * s.H + h) * s.W + wi) * s.C + c0;
        const T* wp = w + ((k * s.R + r) * s.S + t) * cg;
        for (int64_t c = 0; c < cg; ++c) acc += to_float(xp[c]) * to_float(wp[c]);
      }
    }
    if (bias != nullptr) acc += bias[k];
    if (relu) acc = fmaxf(acc, 0.f);
    z[i] = from_float<T>(acc);
  }
}

// dx[n, h, w, c] = sum over taps (r, t) and the group's output channels k of g[n, p, q, k] * w[k, r, t, c]
// where h = p * stride - pad + r (and likewise w).
template <typename T>
__global__ void conv_dgrad_simple_kernel(const T* __restrict__ g, const T* __restrict__ w, T* __restrict__ dx,
                                         ConvShape s) {
  const int64_t total = s.N * s.H * s.W * s.C;
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % s.C, wi = (i / s.C) % s.W, h = (i / (s.C * s.W)) % s.H, n = i / (s.C * s.W * s.H);
    const int64_t k0 = (c / cg) * kg, cl = c % cg;
    float acc = 0.f;
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t ph = h + s.pad - r;
      if (ph < 0 || ph % s.stride != 0 || ph / s.stride >= s.P) continue;
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t qw = wi + s.pad - t;
        if (qw < 0 || qw % s.stride != 0 || qw / s.stride >= s.Q) continue;
        const T* gp = g + ((n * s.P + ph / s.stride) * s.Q + qw / s.stride) * s.K + k0;
        for (int64_t kk = 0; kk < kg; ++kk)
          acc += to_float(gp[kk]) * to_float(w[(((k0 + kk) * s.R + r) * s.S + t) * cg + cl]);
      }
    }
    dx[i] = from_float<T>(acc);
  }
}

// One block per weight element (k, r, t, c): dw = sum over output positions of g[., k] * x[., c] at the tap.
template <typename T>
__global__ void conv_wgrad_simple_kernel(const T* __restrict__ g, const T* __restrict__ x, float* __restrict__ dw,
                                         ConvShape s) {
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups;
  const int64_t e = blockIdx.x;
  const int64_t cl = e % cg, t = (e / cg) % s.S, r = (e / (cg * s.S)) % s.R, k = e / (cg * s.S * s.R);
  const int64_t c = (k / kg) * cg + cl;
  float acc = 0.f;
  for (int64_t m = threadIdx.x; m < s.N * s.P * s.Q; m += blockDim.x) {
    const int64_t q = m % s.Q, p = (m / s.Q) % s.P, n = m / (s.Q * s.P);
    const int64_t h = p * s.stride - s.pad + r, wi = q * s.stride - s.pad + t;
    if (h < 0 || h >= s.H || wi < 0 || wi >= s.W) continue;
    acc += to_float(g[m * s.K + k]) * to_float(x[((n * s.H + h) * s.W + wi) * s.C + c]);
  }
  __shared__ float part[kThreads];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) dw[e] = part[0];
}

// ---- per-channel reductions: block (32 channels, 8 row lanes), double per thread, one partial per block
// (no atomics), merged in a fixed order by a second kernel: the results repeat bit for bit ----

template <typename T>
struct BackwardTerms {
  const T *dy, *src;
  const float *ms, *mt, *center;
  bool relu;
  __device__ void operator()(int64_t i, int64_t c, double& t0, double& t1) const {
    const float x = to_float(src[i]);
    float d = to_float(dy[i]);
    if (relu && !(__fmaf_rn(x, ms[c], mt[c]) > 0.f)) d = 0.f;  // the forward's fma, so the same mask
    t0 = d;
    t1 = static_cast<double>(d) * (x - center[c]);
  }
};

int64_t parts_for(int64_t rows) { return mma::backward_parts(rows); }  // conv_bn_mma_plan.h

// Block (channel group, part): sums of the terms over the part's rows (grid-strided by part) -> part.
template <typename Terms>
__global__ void channel_sums_kernel(Terms terms, int64_t rows, int64_t K, double* __restrict__ part) {
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  double a0 = 0.0, a1 = 0.0;
  if (c < K) {
    for (int64_t r = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; r < rows; r += int64_t(gridDim.y) * blockDim.y) {
      double t0, t1;
      terms(r * K + c, c, t0, t1);
      a0 += t0;
      a1 += t1;
    }
  }
  __shared__ double s0[8][33], s1[8][33];
  s0[threadIdx.y][threadIdx.x] = a0;
  s1[threadIdx.y][threadIdx.x] = a1;
  __syncthreads();
  if (threadIdx.y == 0 && c < K) {
    for (int j = 1; j < blockDim.y; ++j) a0 += s0[j][threadIdx.x], a1 += s1[j][threadIdx.x];
    part[blockIdx.y * K + c] = a0;
    part[(gridDim.y + blockIdx.y) * K + c] = a1;
  }
}

// Block (channels, lanes) = merge_geometry(K, nparts): lane l sums parts l, l + lanes, ... of its channel,
// then the lanes add in a halving tree (sum_parts_tree is the same order on the host).
__global__ void __launch_bounds__(1024) reduce_parts_kernel(const double* __restrict__ part, int64_t nparts, int64_t K,
                                    double* __restrict__ sums) {
  __shared__ double s0[1024], s1[1024];
  const int ch = threadIdx.x, lane = threadIdx.y, nch = blockDim.x, me = lane * nch + ch;
  const int64_t c = blockIdx.x * int64_t(nch) + ch;
  double a0 = 0.0, a1 = 0.0;
  if (c < K) sum_parts(part, nparts, K, c, lane, blockDim.y, a0, a1);
  s0[me] = a0;
  s1[me] = a1;
  for (int half = blockDim.y / 2; half >= 1; half /= 2) {
    __syncthreads();
    if (lane < half) {
      a0 += s0[me + half * nch];
      a1 += s1[me + half * nch];
      s0[me] = a0;
      s1[me] = a1;
    }
  }
  if (lane != 0 || c >= K) return;
  sums[c] = a0;
  sums[K + c] = a1;
}

template <typename Terms>
void launch_channel_sums(const Terms& terms, int64_t rows, int64_t K, double* sums, double* workspace,
                         CUstream_st* stream) {
  const int64_t nparts = parts_for(rows);
  channel_sums_kernel<<<dim3(static_cast<unsigned>((K + 31) / 32), static_cast<unsigned>(nparts)), dim3(32, 8), 0,
                        stream>>>(terms, rows, K, workspace);
  check_launch("channel sums");
  const mma::MergeGeometry geo = mma::merge_geometry(K, nparts);
  reduce_parts_kernel<<<static_cast<unsigned>((K + geo.channels - 1) / geo.channels), dim3(geo.channels, geo.lanes), 0,
                        stream>>>(workspace, nparts, K, sums);
  check_launch("channel sums reduce");
}

// The simple path's BN statistics: block (channel group, part) runs Welford per (channel, row lane) in
// double over the part's contiguous rows, merges the 8 lanes in order and writes the part's (mean, M2).
template <typename T>
__global__ void stat_parts_kernel(const T* __restrict__ z, int64_t rows, int64_t K, int64_t rows_per_part,
                                  double* __restrict__ part) {
  const int64_t c = blockIdx.x * 32 + threadIdx.x, p = blockIdx.y, nparts = gridDim.y;
  const int64_t r0 = p * rows_per_part, r1 = r0 + rows_per_part < rows ? r0 + rows_per_part : rows;
  MeanM2 st{0.0, 0.0, 0.0};
  if (c < K)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) welford_add(st, to_float(z[r * K + c]));
  __shared__ double sn[8][33], sm[8][33], s2[8][33];
  sn[threadIdx.y][threadIdx.x] = st.n;
  sm[threadIdx.y][threadIdx.x] = st.mean;
  s2[threadIdx.y][threadIdx.x] = st.m2;
  __syncthreads();
  if (threadIdx.y == 0 && c < K) {
    for (int j = 1; j < blockDim.y; ++j) chan_merge(st, MeanM2{sn[j][threadIdx.x], sm[j][threadIdx.x], s2[j][threadIdx.x]});
    part[p * K + c] = st.mean;
    part[(nparts + p) * K + c] = st.m2;
  }
}

// ---- elementwise passes ----

template <typename T>
__global__ void scale_shift_relu_kernel(const T* __restrict__ z, const float* __restrict__ scale,
                                        const float* __restrict__ shift, const T* __restrict__ res, bool relu,
                                        T* __restrict__ y, int64_t total, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % K;
    float v = __fmaf_rn(to_float(z[i]), scale[c], shift[c]);
    if (res != nullptr) v = __fadd_rn(v, to_float(res[i]));
    y[i] = from_float<T>(relu ? fmaxf(v, 0.f) : v);
  }
}

template <typename T>
__global__ void backward_apply_kernel(const T* __restrict__ dy, const T* __restrict__ src,
                                      const float* __restrict__ ms, const float* __restrict__ mt,
                                      const float* __restrict__ k, const float* __restrict__ p,
                                      const float* __restrict__ q, bool relu, bool use_pq, T* __restrict__ g,
                                      int64_t total, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    g[i] = from_float<T>(bn_relu_grad(to_float(dy[i]), to_float(src[i]), i % K, ms, mt, k, p, q, relu, use_pq));
  }
}

// 16-byte versions for the fast path: each thread handles kVec consecutive channels of one row with one
// load per tensor (K a multiple of kVec, pointers 16-byte aligned).
template <typename T>
struct alignas(16) Vec {
  static constexpr int kVec = 16 / sizeof(T);
  T v[kVec];
};

template <typename T>
__global__ void scale_shift_relu_vec_kernel(const Vec<T>* __restrict__ z, const float* __restrict__ scale,
                                            const float* __restrict__ shift, const Vec<T>* __restrict__ res,
                                            bool relu, Vec<T>* __restrict__ y, int64_t vecs, int64_t K) {
  constexpr int kVec = Vec<T>::kVec;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < vecs; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c0 = (i * kVec) % K;
    const Vec<T> in = z[i];
    Vec<T> r{};
    if (res != nullptr) r = res[i];
    Vec<T> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      float v = __fmaf_rn(to_float(in.v[j]), scale[c0 + j], shift[c0 + j]);
      if (res != nullptr) v = __fadd_rn(v, to_float(r.v[j]));
      out.v[j] = from_float<T>(relu ? fmaxf(v, 0.f) : v);
    }
    y[i] = out;
  }
}

template <typename T>
__global__ void backward_apply_vec_kernel(const Vec<T>* __restrict__ dy, const Vec<T>* __restrict__ src,
                                          const float* __restrict__ ms, const float* __restrict__ mt,
                                          const float* __restrict__ k, const float* __restrict__ p,
                                          const float* __restrict__ q, bool relu, bool use_pq,
                                          Vec<T>* __restrict__ g, int64_t vecs, int64_t K) {
  constexpr int kVec = Vec<T>::kVec;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < vecs; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c0 = (i * kVec) % K;
    const Vec<T> d_in = dy[i], s_in = src[i];
    Vec<T> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      out.v[j] = from_float<T>(bn_relu_grad(to_float(d_in.v[j]), to_float(s_in.v[j]), c0 + j, ms, mt, k, p, q, relu,
                                            use_pq));
    g[i] = out;
  }
}

template <typename T>
bool vec_ok(int64_t K, std::initializer_list<const void*> ptrs) {
  if (K % Vec<T>::kVec != 0) return false;
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  return true;
}

unsigned grid_for(int64_t total) { return blocks_for(total, kThreads) > 65536u ? 65536u : blocks_for(total, kThreads); }

}  // namespace

StatLayout conv_fwd_simple_stat_layout(const ConvShape& s) {
  const int64_t rows = s.N * s.P * s.Q, nparts = parts_for(rows), per = (rows + nparts - 1) / nparts;
  return {per > 0 ? (rows + per - 1) / per : 1, per > 0 ? per : 1, rows};
}

int64_t backward_sums_workspace(int64_t rows, int64_t K) { return 2 * parts_for(rows) * K; }

void conv_fwd_simple_cuda(DType dtype, const void* x, const void* w, const float* bias, bool relu, void* z,
                          double* parts, const ConvShape& s, CUstream_st* stream) {
  const int64_t total = s.N * s.P * s.Q * s.K;
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    conv_fwd_simple_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), bias, relu, static_cast<T*>(z), s);
    check_launch("simple conv forward");
    // The simple path takes its statistics from the stored output, in a separate pass.
    if (parts != nullptr) {
      const StatLayout L = conv_fwd_simple_stat_layout(s);
      stat_parts_kernel<T><<<dim3(static_cast<unsigned>((s.K + 31) / 32), static_cast<unsigned>(L.nparts)),
                             dim3(32, 8), 0, stream>>>(static_cast<const T*>(z), L.rows, s.K, L.rows_per_part, parts);
      check_launch("simple conv statistics");
    }
  });
}

void conv_dgrad_simple_cuda(DType dtype, const void* g, const void* w, void* dx, const ConvShape& s,
                            CUstream_st* stream) {
  const int64_t total = s.N * s.H * s.W * s.C;
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    conv_dgrad_simple_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(g), static_cast<const T*>(w), static_cast<T*>(dx), s);
    check_launch("simple conv dgrad");
  });
}

void conv_wgrad_simple_cuda(DType dtype, const void* g, const void* x, float* dw, const ConvShape& s,
                            CUstream_st* stream) {
  const int64_t elems = s.K * s.R * s.S * (s.C / s.groups);
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    conv_wgrad_simple_kernel<T><<<static_cast<unsigned>(elems), kThreads, 0, stream>>>(
        static_cast<const T*>(g), static_cast<const T*>(x), dw, s);
    check_launch("simple conv wgrad");
  });
}

void scale_shift_relu_cuda(DType dtype, const void* z, const float* scale, const float* shift, const void* residual,
                           bool relu, void* y, int64_t rows, int64_t K, CUstream_st* stream) {
  const int64_t total = rows * K;
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    if (vec_ok<T>(K, {z, y, residual != nullptr ? residual : z})) {
      const int64_t vecs = total / Vec<T>::kVec;
      scale_shift_relu_vec_kernel<T><<<grid_for(vecs), kThreads, 0, stream>>>(
          static_cast<const Vec<T>*>(z), scale, shift, static_cast<const Vec<T>*>(residual), relu,
          static_cast<Vec<T>*>(y), vecs, K);
    } else {
      scale_shift_relu_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(z), scale, shift, static_cast<const T*>(residual), relu, static_cast<T*>(y), total,
          K);
    }
    check_launch("scale+shift+relu");
  });
}

void bn_relu_backward_sums_cuda(DType dtype, const void* dy, const void* src, const float* ms, const float* mt,
                                const float* center, bool relu, double* sums, double* workspace, int64_t rows,
                                int64_t K, CUstream_st* stream) {
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    const BackwardTerms<T> terms{static_cast<const T*>(dy), static_cast<const T*>(src), ms, mt, center, relu};
    launch_channel_sums(terms, rows, K, sums, workspace, stream);
  });
}

void bn_relu_backward_apply_cuda(DType dtype, const void* dy, const void* src, const float* ms, const float* mt,
                                 const float* k, const float* p, const float* q, bool relu, bool use_pq, void* g,
                                 int64_t rows, int64_t K, CUstream_st* stream) {
  const int64_t total = rows * K;
  WSLFAST_DTYPE_SWITCH(dtype, T, [&] {
    if (vec_ok<T>(K, {dy, src, g})) {
      const int64_t vecs = total / Vec<T>::kVec;
      backward_apply_vec_kernel<T><<<grid_for(vecs), kThreads, 0, stream>>>(
          static_cast<const Vec<T>*>(dy), static_cast<const Vec<T>*>(src), ms, mt, k, p, q, relu, use_pq,
          static_cast<Vec<T>*>(g), vecs, K);
    } else {
      backward_apply_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(dy), static_cast<const T*>(src), ms, mt, k, p, q, relu, use_pq,
          static_cast<T*>(g), total, K);
    }
    check_launch("bn+relu backward");
  });
}

}  // namespace wslfast::conv_bn
