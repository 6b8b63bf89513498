// Fused grouped conv + BatchNorm + ReLU: the plain C++ launchers of the CUDA kernels (conv_bn_cuda.cu).
// No torch headers: raw pointers, sizes and a stream. Torch glue is in conv_bn_cuda_glue.cpp.
//
// Layouts: activations NHWC (x [N,H,W,C], z/y/dy/g [N,P,Q,K]); weights KRSC ([K, R, S, C/groups], i.e.
// PyTorch's [K, C/groups, R, S] in channels_last). Per-channel coefficients are float32 [K].
//
// Every reduction is deterministic: blocks write partials (no atomics), which a later kernel merges in a
// fixed order. The forward's BN statistics are per-part (count, mean, M2) (conv_bn_stats.h): part p of the
// M = N*P*Q output rows holds rows [p * rows_per_part, (p + 1) * rows_per_part), its mean at
// parts[p * K + k] and M2 at parts[(nparts + p) * K + k] (2 * nparts * K doubles, written, not added to).
//
// Two implementations of each convolution: `simple` (one thread per output element, fp32 FMAs, easy to
// check by eye) and `fast` (tensor-core implicit GEMM, statistics in the epilogue; bf16/fp16 operands,
// or TF32 for float32 storage).
// Tests on the GPU machine compare both against the CPU reference and against each other.
#pragma once
#include <cstdint>

#include "../common/dtype.h"

namespace wslfast::conv_bn {

struct StatLayout {
  int64_t nparts, rows_per_part, rows;
};

struct ConvShape {
  int64_t N, H, W, C;  // input
  int64_t K, R, S;     // output channels, kernel height and width
  int64_t P, Q;        // output height and width
  int64_t stride, pad, groups;
};

// z = conv(x, w) (+ bias[k]) (then ReLU when relu); bias float32 [K] or nullptr. When parts != nullptr,
// also z's statistics partials (layout above; `stat_layout` says how many parts the implementation writes).
// The fast path takes them from the fp32 values before rounding to storage, the simple one from z.
StatLayout conv_fwd_simple_stat_layout(const ConvShape& shape);
void conv_fwd_simple_cuda(DType dtype, const void* x, const void* w, const float* bias, bool relu, void* z,
                          double* parts, const ConvShape& shape, CUstream_st* stream);
// Whether conv_fwd_fast_cuda handles this case (channels per group, in and out, a multiple of 4). It
// takes float32 too (TF32 operands); whether to use it for float32 is the caller's choice.
bool conv_fwd_fast_supported(DType dtype, const ConvShape& shape);
StatLayout conv_fwd_fast_stat_layout(const ConvShape& shape);
void conv_fwd_fast_cuda(DType dtype, const void* x, const void* w, const float* bias, bool relu, void* z,
                        double* parts, const ConvShape& shape, CUstream_st* stream);

// y = relu?(z * scale[k] + shift[k] (+ residual)) over rows x K; residual (z's layout) or nullptr.
void scale_shift_relu_cuda(DType dtype, const void* z, const float* scale, const float* shift, const void* residual,
                           bool relu, void* y, int64_t rows, int64_t K, CUstream_st* stream);

// mask = relu ? (src * ms[k] + mt[k] > 0) : 1.
// sums[k] = sum of mask * dy, sums[K + k] = sum of mask * dy * (src - center[k]) (written, not added to),
// through per-block partials in `workspace` (backward_sums_workspace(rows, K) doubles) summed in order.
int64_t backward_sums_workspace(int64_t rows, int64_t K);
void bn_relu_backward_sums_cuda(DType dtype, const void* dy, const void* src, const float* ms,
                                const float* mt, const float* center, bool relu, double* sums, double* workspace,
                                int64_t rows, int64_t K, CUstream_st* stream);
// g = mask * dy * k[c] + (use_pq ? src * p[c] + q[c] : 0).
void bn_relu_backward_apply_cuda(DType dtype, const void* dy, const void* src, const float* ms,
                                 const float* mt, const float* k, const float* p, const float* q, bool relu,
                                 bool use_pq, void* g, int64_t rows, int64_t K, CUstream_st* stream);

// dx = conv-transpose of g with w (storage dtype, NHWC); dw = weight gradient, float32 KRSC.
void conv_dgrad_simple_cuda(DType dtype, const void* g, const void* w, void* dx, const ConvShape& shape,
                            CUstream_st* stream);
void conv_wgrad_simple_cuda(DType dtype, const void* g, const void* x, float* dw, const ConvShape& shape,
                            CUstream_st* stream);

// The BN+ReLU backward folded into the tensor-core gradient kernels: they read grad_y (dy) and src
// instead of a stored conv-output gradient g, and form g = mask * dy * k[c] + (use_pq ? src * p[c] + q[c]
// : 0), mask = relu ? (src * ms[c] + mt[c] > 0) : 1, on the fly, rounded to the storage dtype as
// bn_relu_backward_apply_cuda would store it. src has dy's layout and dtype; coefficients float32 [K].
struct BnReluGrad {
  const void* src;
  const float *ms, *mt, *k, *p, *q;
  bool relu, use_pq;
};
// Tensor-core versions (same support rule as the forward). The data gradient takes the
// transposed weights w_t [C, R, S, K/groups] (per group, input and output channels swapped); the weight
// gradient writes dw, its m-splits through `workspace` (conv_wgrad_fast_workspace floats, at most
// workspace_limit_bytes; 0: none needed), summed in split order onto 0.f: the same bits for any limit
// (conv_bn_mma_plan.h, wgrad_rounds). Pass the same limit to both.
inline constexpr int64_t kWgradWorkspaceLimitBytes = int64_t(64) << 20;
void conv_dgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* w_t, void* dx,
                          const ConvShape& shape, CUstream_st* stream);
int64_t conv_wgrad_fast_workspace(const ConvShape& shape, int64_t workspace_limit_bytes = kWgradWorkspaceLimitBytes);
void conv_wgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* x, float* dw,
                          float* workspace, const ConvShape& shape, CUstream_st* stream,
                          int64_t workspace_limit_bytes = kWgradWorkspaceLimitBytes);

// ---- per-channel finalize kernels (conv_bn_cuda_finalize.cu): one thread per channel, the double math
// of conv_bn_finalize.h; gamma/beta/mean/var float32 [K], sums double [2, K] ----
// Forward: the conv's statistics partials (merged in a fixed order) -> mean, var [K] and scale_shift [2, K].
void bn_forward_finalize_cuda(const double* parts, StatLayout layout, const float* gamma, const float* beta,
                              double eps, float* mean, float* var, float* scale_shift, int64_t K, CUstream_st* stream);
// scale_shift [2, K] from the stored mean and var (the backward's ReLU mask).
void bn_scale_shift_cuda(const float* mean, const float* var, const float* gamma, const float* beta, double eps,
                         float* scale_shift, int64_t K, CUstream_st* stream);
// Backward: sums (mask * dy, mask * dy * (z - mean)) -> kpq [3, K] and dgamma, dbeta [K].
void bn_backward_finalize_cuda(const double* sums, double count, const float* mean, const float* var,
                               const float* gamma, double eps, float* kpq, float* dgamma, float* dbeta, int64_t K,
                               CUstream_st* stream);

// running = (1 - momentum) * running + momentum * batch * factor (factor 1 for the mean, count / (count - 1)
// for the variance), in place; running buffers in `dtype` (float32/float16/bfloat16), batch stats float32.
void update_running_stats_cuda(DType dtype, void* running_mean, void* running_var, const float* mean,
                               const float* var, double momentum, double unbias, int64_t K, CUstream_st* stream);

}  // namespace wslfast::conv_bn
