// CUDA kernels of the sparse soft-target softmax cross-entropy. One block per row, or several (a split of
// the vocabulary, when the rows alone would leave SMs idle: small batches, large V) writing partial
// (max, sum of exp, target dot, weight) per (row, split); a second small kernel merges them in a fixed order
// and, for the loss, finishes lse and the loss (and its sum or mean): two launches per forward, one backward.
// Each thread walks its columns in 16-byte vectors (a scalar head and tail peeled off each row, so any row
// stride and offset keeps the aligned middle vectorized) keeping an online (max, sum of exp) pair
// (soft_ce_math.h: NaN in gives NaN out); no dense target is ever built: the row's few target ids are merged
// in as the thread passes their columns (ids sorted per row).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

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

template <typename T>
__device__ __forceinline__ int64_t row_head(const T* p) {
  return head_elems(reinterpret_cast<uintptr_t>(p), sizeof(T));
}

// Block (row, split) reduces columns [c0, c1) of the row (split_range_peeled): a scalar head up to the row's
// first 16-byte boundary, 16-byte vectors, a scalar tail, so every row of any stride reads its aligned middle
// in vectors. Partials go to [split * rows + row] of the four outputs. Rows whose targets are not canonical
// get NaN partials (so a NaN loss: the flag the caller's finite-loss check reads), and nothing outside the
// targets or the row is ever read.
template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
forward_kernel(const T* __restrict__ logits, int64_t cols, int64_t row_stride, int64_t col_begin, Targets tg,
               double* row_max, double* row_sumexp, double* target_dot, double* weight_sum) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[2][32];
  __shared__ double scratch_d[32];
  const int64_t row = blockIdx.x, rows = gridDim.x, splits = gridDim.y, sp = blockIdx.y;
  const T* z = logits + row * row_stride;
  const int64_t head = row_head(z);
  int64_t c0, c1, v0, v1;
  split_range_peeled(cols, head, kVec, splits, sp, c0, c1);
  vector_span(c0, c1, head, kVec, v0, v1);
  MaxSum st = max_sum_empty();
  for (int64_t c = c0 + threadIdx.x; c < v0; c += blockDim.x) add_value(st, to_float(z[c]));
  const uint4* zv = reinterpret_cast<const uint4*>(z + v0);
  for (int64_t v = threadIdx.x; v < (v1 - v0) / kVec; v += blockDim.x) {
    const uint4 raw = __ldg(zv + v);
    const T* e = reinterpret_cast<const T*>(&raw);
    float x[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = to_float(e[i]);
    add_values<kVec>(st, x);
  }
  for (int64_t c = v1 + threadIdx.x; c < c1; c += blockDim.x) add_value(st, to_float(z[c]));

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
    const int64_t o = sp * rows + row;
    row_max[o] = ok ? st.m : NAN;  // exact: an element of the row
    row_sumexp[o] = ok ? st.s : NAN;
    target_dot[o] = ok ? dot : NAN;
    weight_sum[o] = ok ? wsum : NAN;
  }
}

// A row's partials merged in part order. part: [4][parts][rows] (max, sum of exp, target dot, weight), as
// forward_kernel writes them (a part is a split, or a chunk of the vocabulary of the fused linear loss).
struct RowTotals {
  MaxSum st;
  double dot, wsum;
};

__device__ RowTotals merge_parts(const double* __restrict__ part, int64_t rows, int64_t parts, int64_t row) {
  const int64_t n = rows * parts;
  const double* p = part + row;
  RowTotals t{max_sum_empty(), 0.0, p[3 * n]};  // every part sums all of the row's weights; part 0's
  for (int64_t sp = 0; sp < parts; ++sp) {
    merge(t.st, MaxSum{static_cast<float>(p[sp * rows]), static_cast<float>(p[n + sp * rows])});
    t.dot += p[2 * n + sp * rows];
  }
  return t;
}

// One thread per row merges the row's split partials into the four per-row outputs (soft_ce_partials).
__global__ void merge_kernel(const double* __restrict__ part, int64_t rows, int64_t splits, double* row_max,
                             double* row_sumexp, double* target_dot, double* weight_sum) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const RowTotals t = merge_parts(part, rows, splits, row);
  row_max[row] = t.st.m;
  row_sumexp[row] = t.st.s;
  target_dot[row] = t.dot;
  weight_sum[row] = t.wsum;
}

// The loss from the partials: per row lse = max + log(sum of exp) and loss = W * lse - dot (exactly 0 for rows
// without target weight, whatever lse is). kReduce: ONE block sums the rows' losses (float64, each thread its
// rows in order, then the block's fixed-order tree: bit for bit repeatable) and counts the rows with targets;
// loss[0] = sum, or sum / max(count, 1) for the mean, norm[0] = that divisor (1 for the sum), which the
// backward divides the upstream gradient by. Otherwise loss[row] per row, on as many blocks as it takes (and
// norm[0] = 1 when asked for).
template <bool kReduce>
__global__ void __launch_bounds__(kMaxThreads)
finish_kernel(const double* __restrict__ part, int64_t rows, int64_t splits, const int64_t* __restrict__ offsets,
              bool mean, double* __restrict__ lse, float* __restrict__ loss, float* __restrict__ norm) {
  __shared__ double scratch[32];
  double total = 0.0, with_targets = 0.0;
  const int64_t step = kReduce ? int64_t(blockDim.x) : int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += step) {
    const RowTotals t = merge_parts(part, rows, splits, r);
    const double L = static_cast<double>(t.st.m) + log(static_cast<double>(t.st.s));
    const double l = t.wsum == 0.0 ? 0.0 : t.wsum * L - t.dot;
    lse[r] = L;
    if constexpr (kReduce) total += l;
    else loss[r] = static_cast<float>(l);
  }
  if (!kReduce && norm != nullptr && blockIdx.x == 0 && threadIdx.x == 0) norm[0] = 1.f;
  if constexpr (kReduce) {
    // counted in a loop of its own: fewer values live across the float64 log's call (no spill)
    for (int64_t r = threadIdx.x; mean && r < rows; r += blockDim.x) with_targets += offsets[r + 1] != offsets[r];
    total = block_sum(total, scratch);
    with_targets = block_sum(with_targets, scratch);
    if (threadIdx.x == 0) {
      const double d = mean && with_targets > 1.0 ? with_targets : 1.0;
      loss[0] = static_cast<float>(total / d);
      norm[0] = static_cast<float>(d);
    }
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

// Block (row, split) writes columns [c0, c1) of the row's gradient; rows with non-canonical targets get NaN.
// Where the logits row and the gradient row have the same 16-byte phase (always for contiguous logits: the
// glue allocates the gradient in the logits' phase) the aligned middle goes in 16-byte vectors, loads and
// stores, between a scalar head and tail; other rows go element by element.
template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
backward_kernel(GradRows gr, const T* __restrict__ logits, int64_t cols, int64_t row_stride,
                const double* __restrict__ lse, int64_t col_begin, Targets tg, T* __restrict__ grad,
                int64_t grad_row_stride) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, rows = gridDim.x;
  const T* z = logits + row * row_stride;
  T* out = grad + row * grad_row_stride;
  const int64_t head = row_head(z);
  const bool vec = head == row_head(out);
  int64_t c0, c1, v0, v1;
  split_range_peeled(cols, vec ? head : 0, vec ? kVec : 1, gridDim.y, blockIdx.y, c0, c1);
  if (vec) vector_span(c0, c1, head, kVec, v0, v1);
  else v0 = v1 = c1;  // all scalar
  int64_t b, e;
  const bool ok = row_targets_ok(tg, row, rows, b, e);
  float wpart = 0.f;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) wpart += tg.weights[j];
  const float gv = gr.values[row * gr.stride];
  const float g = gr.norm != nullptr ? gv / gr.norm[0] : gv;
  // Rows without targets get an exact zero gradient, whatever their logits hold; broken rows NaN.
  const float wsum = block_sum(wpart, scratch);
  const bool empty = b == e && ok;
  const float scale = !ok ? NAN : (empty ? 0.f : g * wsum);
  // lse as hi + lo floats: z - hi is exact when z is near lse, which is where the precision matters.
  const float L = static_cast<float>(lse[row]);
  const float L_lo = static_cast<float>(lse[row] - static_cast<double>(L));
  int64_t p = lower_bound(tg.indices, b, ok ? e : b, col_begin + c0);  // broken rows: no target terms
  const int64_t pe = ok ? e : b;
  // Each thread walks its columns in increasing order (head, vectors, tail), so p only moves forward.
  const auto one = [&](int64_t c) {
    float y = empty ? 0.f : scale * expf((to_float(z[c]) - L) - L_lo);
    const int64_t id = col_begin + c;
    while (p < pe && tg.indices[p] < id) ++p;
    if (p < pe && tg.indices[p] == id) y -= g * tg.weights[p];
    out[c] = from_float<T>(y);
  };
  for (int64_t c = c0 + threadIdx.x; c < v0; c += blockDim.x) one(c);
  const uint4* zv = reinterpret_cast<const uint4*>(z + v0);
  uint4* ov = reinterpret_cast<uint4*>(out + v0);
  for (int64_t v = threadIdx.x; v < (v1 - v0) / kVec; v += blockDim.x) {
    const uint4 raw = __ldg(zv + v);
    const T* x = reinterpret_cast<const T*>(&raw);
    float y[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) y[i] = empty ? 0.f : scale * expf((to_float(x[i]) - L) - L_lo);
    const int64_t lo = col_begin + v0 + v * kVec;
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
    ov[v] = packed;
  }
  for (int64_t c = v1 + threadIdx.x; c < c1; c += blockDim.x) one(c);
}

int threads_for(int64_t cols, int vec) {
  int64_t want = (cols + 2 * vec - 1) / (2 * vec);  // about two vectors per thread
  want = ((want + 31) / 32) * 32;
  return static_cast<int>(want < 32 ? 32 : (want > kMaxThreads ? kMaxThreads : want));
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("wslfast soft_ce ") + what + ": " + cudaGetErrorString(err));
}

void check_splits(int64_t splits) {
  if (splits < 1 || splits > kMaxSplits)
    throw std::invalid_argument("wslfast soft_ce (CUDA): splits must be in [1, 256]");
}

// The vector loads need element-aligned rows (any tensor's are); a raw pointer that is not gets an error.
template <typename T>
void check_element_aligned(const void* p, const char* name) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0)
    throw std::invalid_argument(std::string("wslfast soft_ce (CUDA): ") + name + " is not aligned to its element size");
}

// The row kernel: partials of block (row, split) at [split * rows + row] of out[0..3].
template <typename T>
void launch_forward(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_begin,
                    Targets tg, int64_t splits, double* const (&out)[4], cudaStream_t stream) {
  check_element_aligned<T>(logits, "logits");
  constexpr int kVec = 16 / sizeof(T);
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  forward_kernel<T><<<grid, threads_for((cols + splits - 1) / splits, kVec), 0, stream>>>(
      static_cast<const T*>(logits), cols, row_stride, col_begin, tg, out[0], out[1], out[2], out[3]);
  check_launch("forward");
}

template <typename T>
void forward_typed(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_begin,
                   Targets tg, int64_t splits, double* workspace, double* row_max, double* row_sumexp,
                   double* target_dot, double* weight_sum, cudaStream_t stream) {
  if (rows == 0) return;
  check_splits(splits);
  if (splits > 1 && workspace == nullptr)
    throw std::invalid_argument("wslfast soft_ce (CUDA): splits above 1 need a workspace");
  const int64_t n = rows * splits;
  double* const direct[4] = {row_max, row_sumexp, target_dot, weight_sum};
  double* const parts[4] = {workspace, workspace + n, workspace + 2 * n, workspace + 3 * n};
  launch_forward<T>(logits, rows, cols, row_stride, col_begin, tg, splits, splits > 1 ? parts : direct, stream);
  if (splits > 1) {
    merge_kernel<<<static_cast<unsigned>((rows + 127) / 128), 128, 0, stream>>>(workspace, rows, splits, row_max,
                                                                               row_sumexp, target_dot, weight_sum);
    check_launch("forward merge");
  }
}

void finish_launch(const double* parts, int64_t rows, int64_t num_parts, const int64_t* offsets, Reduction reduction,
                   double* lse, float* loss, float* norm, cudaStream_t stream) {
  if (num_parts < 1 || (rows > 0 && parts == nullptr))
    throw std::invalid_argument("wslfast soft_ce (CUDA): the finish needs 4 * rows * num_parts partials, num_parts >= 1");
  if (reduction == Reduction::kNone) {
    if (rows == 0 && norm == nullptr) return;  // nothing to write
    constexpr int kThreads = 256;
    const int64_t blocks = rows == 0 ? 1 : (rows + kThreads - 1) / kThreads;
    finish_kernel<false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(parts, rows, num_parts, offsets, false,
                                                                              lse, loss, norm);
  } else {
    // One block, sized by the rows alone (so the order of the sum is too).
    const int64_t want = (rows + 31) / 32 * 32;
    const int threads = static_cast<int>(want < 32 ? 32 : (want > kMaxThreads ? kMaxThreads : want));
    finish_kernel<true><<<1, threads, 0, stream>>>(parts, rows, num_parts, offsets, reduction == Reduction::kMean,
                                                   lse, loss, norm);
  }
  check_launch("loss finish");
}

template <typename T>
void loss_typed(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, Targets tg, int64_t splits,
                Reduction reduction, double* workspace, double* lse, float* loss, float* norm, cudaStream_t stream) {
  check_splits(splits);
  if (rows > 0 && workspace == nullptr)
    throw std::invalid_argument("wslfast soft_ce (CUDA): the loss needs a workspace of 4 * rows * splits doubles");
  const int64_t n = rows * splits;
  if (rows > 0) {
    double* const parts[4] = {workspace, workspace + n, workspace + 2 * n, workspace + 3 * n};
    launch_forward<T>(logits, rows, cols, row_stride, 0, tg, splits, parts, stream);
  }
  finish_launch(workspace, rows, splits, tg.offsets, reduction, lse, loss, norm, stream);
}

template <typename T>
void backward_typed(GradRows grad_rows, const void* logits, int64_t rows, int64_t cols, int64_t row_stride,
                    const double* lse, int64_t col_begin, Targets tg, int64_t splits, void* grad,
                    int64_t grad_row_stride, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  check_splits(splits);
  check_element_aligned<T>(logits, "logits");
  check_element_aligned<T>(grad, "grad");
  constexpr int kVec = 16 / sizeof(T);
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  backward_kernel<T><<<grid, threads_for((cols + splits - 1) / splits, kVec), 0, stream>>>(
      grad_rows, static_cast<const T*>(logits), cols, row_stride, lse, col_begin, tg, static_cast<T*>(grad),
      grad_row_stride);
  check_launch("backward");
}

}  // namespace

#define WSLFAST_SOFT_CE_DTYPE_SWITCH(dtype, T, ...)                                                      \
  switch (dtype) {                                                                                       \
    case DType::kFloat32: { using T = float; __VA_ARGS__; } break;                                       \
    case DType::kFloat16: { using T = __half; __VA_ARGS__; } break;                                      \
    case DType::kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__; } break;                              \
    default: throw std::invalid_argument("wslfast soft_ce (CUDA): logits must be float32, float16 or bfloat16"); \
  }

void forward_cuda(DType dtype, const void* logits, int64_t rows, int64_t cols, int64_t row_stride,
                  int64_t col_begin, Targets targets, int64_t splits, double* workspace, double* row_max,
                  double* row_sumexp, double* target_dot, double* weight_sum, CUstream_st* stream) {
  WSLFAST_SOFT_CE_DTYPE_SWITCH(dtype, T, forward_typed<T>(logits, rows, cols, row_stride, col_begin, targets, splits,
                                                          workspace, row_max, row_sumexp, target_dot, weight_sum,
                                                          stream));
}

void loss_cuda(DType dtype, const void* logits, int64_t rows, int64_t cols, int64_t row_stride, Targets targets,
               int64_t splits, Reduction reduction, double* workspace, double* lse, float* loss, float* norm,
               CUstream_st* stream) {
  WSLFAST_SOFT_CE_DTYPE_SWITCH(dtype, T, loss_typed<T>(logits, rows, cols, row_stride, targets, splits, reduction,
                                                       workspace, lse, loss, norm, stream));
}

void finish_cuda(const double* parts, int64_t rows, int64_t num_parts, const int64_t* offsets, Reduction reduction,
                 double* lse, float* loss, float* norm, CUstream_st* stream) {
  finish_launch(parts, rows, num_parts, offsets, reduction, lse, loss, norm, stream);
}

void backward_cuda(DType dtype, GradRows grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, int64_t splits,
                   void* grad, int64_t grad_row_stride, CUstream_st* stream) {
  WSLFAST_SOFT_CE_DTYPE_SWITCH(dtype, T, backward_typed<T>(grad_rows, logits, rows, cols, row_stride, lse, col_begin,
                                                           targets, splits, grad, grad_row_stride, stream));
}

void backward_cuda(DType dtype, const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, int64_t splits,
                   void* grad, int64_t grad_row_stride, CUstream_st* stream) {
  backward_cuda(dtype, GradRows{grad_rows, 1, nullptr}, logits, rows, cols, row_stride, lse, col_begin, targets,
                splits, grad, grad_row_stride, stream);
}

}  // namespace wslfast::soft_ce
