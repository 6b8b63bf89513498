// The device primitives the conv+BN+ReLU ops are built from, one set per device. conv_bn.cpp holds the
// shared math (statistics -> scale/shift, backward coefficients) and picks the set by x's device.
#pragma once

#include <ATen/ATen.h>

namespace wslfast::conv_bn {

struct ConvParams {
  int64_t stride, padding, groups;
};

// z = conv(x, w) and its per-channel sums about `pivot`: sums [2, K] double, pivot [K] (coef dtype).
struct ConvSums {
  at::Tensor z, sums, pivot;
};

// ---- CPU (conv_bn.cpp over ATen's convolution + conv_bn_cpu.cpp) ----
ConvSums conv_with_sums_cpu(const at::Tensor& x, const at::Tensor& w, const ConvParams& p);
at::Tensor conv_bias_relu_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                              const ConvParams& p, bool relu);
std::tuple<at::Tensor, at::Tensor> conv_backward_cpu(const at::Tensor& g, const at::Tensor& x,
                                                     const at::Tensor& w, const ConvParams& p);

#ifdef WSLFAST_WITH_CUDA
// ---- CUDA (conv_bn_cuda_glue.cpp over conv_bn_cuda.cu); activations come back channels_last ----
ConvSums conv_with_sums_cuda(const at::Tensor& x, const at::Tensor& w, const ConvParams& p);
at::Tensor conv_bias_relu_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                               const ConvParams& p, bool relu);
std::tuple<at::Tensor, at::Tensor> conv_backward_cuda(const at::Tensor& g, const at::Tensor& x,
                                                      const at::Tensor& w, const ConvParams& p);
void scale_shift_relu_cuda_t(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                             at::Tensor& y);
void bn_relu_backward_sums_cuda_t(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                  const at::Tensor& mt, const at::Tensor& center, bool relu, at::Tensor& sums);
void bn_relu_backward_apply_cuda_t(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                   const at::Tensor& mt, const at::Tensor& k, const at::Tensor& p,
                                   const at::Tensor& q, bool relu, bool use_pq, at::Tensor& g);
#endif

}  // namespace wslfast::conv_bn
