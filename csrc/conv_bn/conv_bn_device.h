// The device primitives the conv+BN+ReLU ops are built from, one set per device with the same names
// and a _cpu or _cuda suffix. conv_bn.cpp checks the inputs, sequences the primitives and picks the set
// by x's device; the per-channel math both sets run is conv_bn_finalize.h.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <utility>

namespace wslfast::conv_bn {

struct ConvParams {
  int64_t stride, padding, groups;
};

// Per-channel coefficients and statistics: float32, or float64 for float64 storage (gradcheck).
inline at::ScalarType coef_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// z = conv(x, w) and its per-channel statistics. CPU: sums [2, K] double about `pivot` ([K], coefficient
// dtype). CUDA: sums [2, nparts, K] double, the per-part (mean, M2) partials of conv_bn_cuda.h, each part
// `rows_per_part` of the output rows, pivot undefined.
struct ConvSums {
  at::Tensor z, sums, pivot;
  int64_t rows_per_part = 0;
};

// Batch statistics (the op's outputs) and the scale/shift that normalize with them, all [K] in the
// coefficient dtype (float32; float64 for float64 storage).
struct BnForward {
  at::Tensor mean, var, scale, shift;
};

// Backward coefficients k, p, q [K] (coefficient dtype) and the BN parameter gradients (gamma's dtype).
struct BnBackward {
  at::Tensor k, p, q, dgamma, dbeta;
};

// ---- CPU (conv_bn_cpu.cpp: ATen's convolution plus our fused passes and per-channel loops) ----
ConvSums conv_with_sums_cpu(const at::Tensor& x, const at::Tensor& w, const ConvParams& p);
at::Tensor conv_bias_relu_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                              const ConvParams& p, bool relu);
BnForward bn_forward_finalize_cpu(const ConvSums& cs, double count, const at::Tensor& gamma, const at::Tensor& beta,
                                  double eps);
std::pair<at::Tensor, at::Tensor> bn_scale_shift_cpu(const at::Tensor& mean, const at::Tensor& var,
                                                     const at::Tensor& gamma, const at::Tensor& beta, double eps);
BnBackward bn_backward_finalize_cpu(const at::Tensor& sums, double count, const at::Tensor& mean,
                                    const at::Tensor& var, const at::Tensor& gamma, double eps);
// running = (1 - momentum) * running + momentum * batch (unbiased = var * count / (count - 1)), in place.
void update_running_stats_cpu(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                              const at::Tensor& var, double momentum, double unbias);
// dx, dw of the conv from grad_y through the BN+ReLU backward g = mask * dy * k + (use_pq ? src * p + q : 0)
// with mask = relu ? (src * ms + mt > 0) : 1 (conv_bn.h has the passes).
std::tuple<at::Tensor, at::Tensor> bn_relu_conv_backward_cpu(const at::Tensor& dy, const at::Tensor& src,
                                                             const at::Tensor& ms, const at::Tensor& mt,
                                                             const at::Tensor& k, const at::Tensor& p,
                                                             const at::Tensor& q, bool relu, bool use_pq,
                                                             const at::Tensor& x, const at::Tensor& w,
                                                             const ConvParams& params);

#ifdef WSLFAST_WITH_CUDA
// ---- CUDA (conv_bn_cuda_glue.cpp over the kernels; activations come back channels_last) ----
ConvSums conv_with_sums_cuda(const at::Tensor& x, const at::Tensor& w, const ConvParams& p);
at::Tensor conv_bias_relu_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                               const ConvParams& p, bool relu);
BnForward bn_forward_finalize_cuda(const ConvSums& cs, double count, const at::Tensor& gamma, const at::Tensor& beta,
                                   double eps);
std::pair<at::Tensor, at::Tensor> bn_scale_shift_cuda(const at::Tensor& mean, const at::Tensor& var,
                                                      const at::Tensor& gamma, const at::Tensor& beta, double eps);
BnBackward bn_backward_finalize_cuda(const at::Tensor& sums, double count, const at::Tensor& mean,
                                     const at::Tensor& var, const at::Tensor& gamma, double eps);
void update_running_stats_cuda(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                               const at::Tensor& var, double momentum, double unbias);
// Tensor-core path: the BN+ReLU backward runs inside the gradient kernels' loaders (g never stored).
std::tuple<at::Tensor, at::Tensor> bn_relu_conv_backward_cuda(const at::Tensor& dy, const at::Tensor& src,
                                                              const at::Tensor& ms, const at::Tensor& mt,
                                                              const at::Tensor& k, const at::Tensor& p,
                                                              const at::Tensor& q, bool relu, bool use_pq,
                                                              const at::Tensor& x, const at::Tensor& w,
                                                              const ConvParams& params);
void scale_shift_relu_cuda_t(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                             const at::Tensor* residual, at::Tensor& y);
void bn_relu_backward_sums_cuda_t(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                  const at::Tensor& mt, const at::Tensor& center, bool relu, at::Tensor& sums);
#endif

}  // namespace wslfast::conv_bn
