// Internal declarations shared by the conv+BN+ReLU torch glue (conv_bn.cpp) and its CPU passes
// (conv_bn_cpu.cpp). The CUDA launchers have their own torch-free header, conv_bn_cuda.h.
#pragma once

#include <ATen/ATen.h>

namespace wslfast {
namespace conv_bn {

// The per-channel passes see a tensor as [outer, C, inner]: channels_last is [N*H*W, C, 1],
// contiguous NCHW is [N, C, H*W]. Inputs must be one of the two (the glue makes sure).

// sums[0][c] = sum over (n, h, w) of (z - pivot[c]), sums[1][c] = sum of (z - pivot[c])^2, in double.
// The pivot (a sample of each channel) keeps E[z^2] - E[z]^2 from cancelling when |mean| >> std.
void channel_sums_cpu(const at::Tensor& z, const at::Tensor& pivot, at::Tensor& sums);

// y = relu?(z * scale[c] + shift[c] (+ residual)); scale/shift float32 [C]; y and the residual (or
// nullptr) have z's shape, dtype and layout.
void scale_shift_relu_cpu(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift,
                          bool relu, const at::Tensor* residual, at::Tensor& y);

// The ReLU mask of the backward is (src * ms[c] + mt[c] > 0): src = z with the BN scale/shift in
// training, src = y with (1, 0) in eval. Without relu the mask is all ones.
// sums[0][c] = sum of mask * dy, sums[1][c] = sum of mask * dy * (src - center[c]), in double.
void bn_relu_backward_sums_cpu(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                               const at::Tensor& mt, const at::Tensor& center, bool relu,
                               at::Tensor& sums);

// g = mask * dy * k[c] + (use_pq ? src * p[c] + q[c] : 0), written in dy's dtype and src's layout.
void bn_relu_backward_apply_cpu(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                const at::Tensor& mt, const at::Tensor& k, const at::Tensor& p,
                                const at::Tensor& q, bool relu, bool use_pq, at::Tensor& g);

}  // namespace conv_bn
}  // namespace wslfast
