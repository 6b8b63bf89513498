// Torch glue of the fused conv + BatchNorm + ReLU: input checks, the sequence of device primitives for
// each op (conv_bn_device.h has one set per device), and the registration.
//
// Forward (training): z = conv(x, w); mean/var of z per channel; y = relu(z * scale + shift). The op
// returns z and the statistics for the backward and the caller's running-stat update (done in Python so
// the op stays functional). Eval folds BN into the convolution: y = relu(conv(x, w * s) + t).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "conv_bn.h"
#include "conv_bn_device.h"

namespace wslfast::conv_bn {
namespace {

at::MemoryFormat format_of(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous;
}

void check_channel_vector(const char* op, const char* name, const at::Tensor& t, int64_t K, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == K, op, ": ", name, " must be 1-D with ", K,
              " entries (the conv's output channels), got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), ", got ", t.device());
}

// Checks everything about x and w; returns the output spatial size.
std::pair<int64_t, int64_t> check_conv(const char* op, const at::Tensor& x, const at::Tensor& w,
                                       const ConvParams& p) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D of shape ", x.sizes());
  TORCH_CHECK(w.dim() == 4, op, ": weight must be 4-D [K, C/groups, R, S], got shape ", w.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble, op,
              ": x must be float32, bfloat16, float16 or float64, got ", dt);
  TORCH_CHECK(w.scalar_type() == dt, op, ": weight dtype ", w.scalar_type(), " must match x dtype ", dt);
  TORCH_CHECK(w.device() == x.device(), op, ": weight must be on ", x.device(), ", got ", w.device());
  TORCH_CHECK(!(x.is_cuda() && dt == at::kDouble), op, ": float64 is supported on CPU only");
  TORCH_CHECK(x.is_cpu() || x.is_cuda(), op, ": x must be a CPU or CUDA tensor, got ", x.device());
  TORCH_CHECK(p.groups >= 1, op, ": groups must be >= 1, got ", p.groups);
  TORCH_CHECK(p.stride >= 1, op, ": stride must be >= 1, got ", p.stride);
  TORCH_CHECK(p.padding >= 0, op, ": padding must be >= 0, got ", p.padding);
  const int64_t K = w.size(0), C = x.size(1);
  TORCH_CHECK(K % p.groups == 0, op, ": weight has ", K, " output channels, not divisible by groups=", p.groups);
  TORCH_CHECK(C == w.size(1) * p.groups, op, ": x has ", C, " channels but weight expects ", w.size(1), " x groups=",
              p.groups, " = ", w.size(1) * p.groups);
  const int64_t P = (x.size(2) + 2 * p.padding - w.size(2)) / p.stride + 1;
  const int64_t Q = (x.size(3) + 2 * p.padding - w.size(3)) / p.stride + 1;
  TORCH_CHECK(x.size(2) + 2 * p.padding >= w.size(2) && x.size(3) + 2 * p.padding >= w.size(3) && P > 0 && Q > 0,
              op, ": kernel ", w.size(2), "x", w.size(3), " is larger than the padded input ", x.sizes());
  TORCH_CHECK(x.size(0) > 0, op, ": x must hold at least one sample");
  return {P, Q};
}

at::Tensor as_coef(const at::Tensor& t, const at::Tensor& x) { return t.to(coef_type(x)).contiguous(); }

// fn##_cpu or fn##_cuda by the device of t.
#ifdef WSLFAST_WITH_CUDA
#define WSLFAST_ON_DEVICE(t, fn, ...) ((t).is_cuda() ? fn##_cuda(__VA_ARGS__) : fn##_cpu(__VA_ARGS__))
#else
#define WSLFAST_ON_DEVICE(t, fn, ...) fn##_cpu(__VA_ARGS__)
#endif

// y = relu?(z * scale + shift (+ residual)), a new tensor in z's layout.
at::Tensor apply(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                 const at::Tensor* residual) {
  at::Tensor y = at::empty_like(z);
#ifdef WSLFAST_WITH_CUDA
  if (z.is_cuda()) {
    scale_shift_relu_cuda_t(z, scale, shift, relu, residual, y);
    return y;
  }
#endif
  scale_shift_relu_cpu(z, scale, shift, relu, residual, y);
  return y;
}

// The residual added before the ReLU: the output's shape, x's dtype and device; returned in z's layout.
std::optional<at::Tensor> check_residual(const char* op, const std::optional<at::Tensor>& residual,
                                         const at::Tensor& x, const at::Tensor& z) {
  if (!residual.has_value() || !residual->defined()) return std::nullopt;
  const at::Tensor& r = *residual;
  TORCH_CHECK(r.sizes() == z.sizes(), op, ": residual must have the output's shape ", z.sizes(), ", got ",
              r.sizes());
  TORCH_CHECK(r.scalar_type() == x.scalar_type(), op, ": residual dtype ", r.scalar_type(), " must match x dtype ",
              x.scalar_type());
  TORCH_CHECK(r.device() == x.device(), op, ": residual must be on ", x.device(), ", got ", r.device());
  return r.contiguous(format_of(z));
}

void backward_sums(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms, const at::Tensor& mt,
                   const at::Tensor& center, bool relu, at::Tensor& sums) {
#ifdef WSLFAST_WITH_CUDA
  if (dy.is_cuda()) return bn_relu_backward_sums_cuda_t(dy, src, ms, mt, center, relu, sums);
#endif
  bn_relu_backward_sums_cpu(dy, src, ms, mt, center, relu, sums);
}

// The conv's dx, dw from grad_y through the BN+ReLU backward (conv_bn_device.h), in the memory formats
// of x and w (what the fake kernels say).
std::tuple<at::Tensor, at::Tensor> bn_relu_conv_backward(const at::Tensor& dy, const at::Tensor& src,
                                                         const at::Tensor& ms, const at::Tensor& mt,
                                                         const at::Tensor& k, const at::Tensor& p,
                                                         const at::Tensor& q, bool relu, bool use_pq,
                                                         const at::Tensor& x, const at::Tensor& w,
                                                         const ConvParams& params) {
  auto [dx, dw] = WSLFAST_ON_DEVICE(dy, bn_relu_conv_backward, dy, src, ms, mt, k, p, q, relu, use_pq, x, w, params);
  return {dx.contiguous(x.suggest_memory_format()), dw.contiguous(w.suggest_memory_format())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, int64_t groups, double eps,
    bool relu) {
  static const char* op = "conv_bn_relu (training)";
  const ConvParams p{stride, padding, groups};
  const auto [P, Q] = check_conv(op, x, weight, p);
  const int64_t K = weight.size(0);
  check_channel_vector(op, "bn_weight", bn_weight, K, x);
  check_channel_vector(op, "bn_bias", bn_bias, K, x);
  const int64_t count = x.size(0) * P * Q;
  TORCH_CHECK(count > 1, op, ": expected more than 1 value per channel when training, got output size [",
              x.size(0), ", ", K, ", ", P, ", ", Q, "]");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const ConvSums cs = WSLFAST_ON_DEVICE(x, conv_with_sums, x, weight, p);
  // Statistics are rounded to the coefficient dtype before scale/shift are formed from them, so the
  // backward, which gets the rounded ones, recomputes the very same scale/shift (and ReLU mask).
  const BnForward bn =
      WSLFAST_ON_DEVICE(x, bn_forward_finalize, cs, static_cast<double>(count), bn_weight, bn_bias, eps);
  const auto res = check_residual(op, residual, x, cs.z);
  at::Tensor y = apply(cs.z, bn.scale, bn.shift, relu, res ? &*res : nullptr);
  return {y, cs.z, bn.mean, bn.var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& z,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& mean, const at::Tensor& var,
    int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
  static const char* op = "conv_bn_relu_train_backward";
  const ConvParams p{stride, padding, groups};
  check_conv(op, x, weight, p);
  const int64_t K = weight.size(0);
  TORCH_CHECK(z.dim() == 4 && z.size(1) == K && grad_y.sizes() == z.sizes(), op,
              ": grad_y and z must both have the conv output's shape, got ", grad_y.sizes(), " and ", z.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && z.scalar_type() == x.scalar_type(), op,
              ": grad_y and z must have x's dtype ", x.scalar_type());
  for (auto [name, t] : {std::pair{"bn_weight", &bn_weight}, {"bn_bias", &bn_bias}, {"mean", &mean}, {"var", &var}})
    check_channel_vector(op, name, *t, K, x);
  const at::Tensor mean_c = as_coef(mean, x), var_c = as_coef(var, x);
  const auto [scale, shift] = WSLFAST_ON_DEVICE(x, bn_scale_shift, mean_c, var_c, bn_weight, bn_bias, eps);
  const at::Tensor zc = z.contiguous(format_of(z));
  const at::Tensor dy = grad_y.contiguous(format_of(zc));
  // Two passes over (dy, z): the per-channel sums, then g = k * mask * dy + p * z + q into the conv's
  // gradients (on CUDA's tensor-core path g is formed inside the gradient kernels and never stored).
  at::Tensor sums = at::zeros({2, K}, x.options().dtype(at::kDouble));
  backward_sums(dy, zc, scale, shift, mean_c, relu, sums);
  const BnBackward c = WSLFAST_ON_DEVICE(x, bn_backward_finalize, sums, static_cast<double>(z.numel() / K), mean_c,
                                         var_c, bn_weight, eps);
  auto [dx, dw] = bn_relu_conv_backward(dy, zc, scale, shift, c.k, c.p, c.q, relu, true, x, weight, p);
  return {dx, dw, c.dgamma.to(bn_weight.scalar_type()), c.dbeta.to(bn_bias.scalar_type())};
}

void update_running_stats(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum, int64_t count) {
  static const char* op = "bn_update_running_stats";
  const int64_t K = mean.numel();
  using Named = std::pair<const char*, const at::Tensor*>;
  for (auto [name, t] : {Named{"running_mean", &running_mean}, Named{"running_var", &running_var},
                         Named{"mean", &mean}, Named{"var", &var}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == K, op, ": ", name, " must be 1-D with ", K, " entries, got shape ",
                t->sizes());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name, " must be floating point, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == mean.device(), op, ": ", name, " must be on ", mean.device(), ", got ", t->device());
  }
  TORCH_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(), op,
              ": running_mean and running_var must be contiguous (BatchNorm's buffers are)");
  TORCH_CHECK(count > 1, op, ": count must be > 1 for the unbiased variance, got ", count);
  TORCH_CHECK(std::isfinite(momentum), op, ": momentum must be finite, got ", momentum);
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  WSLFAST_ON_DEVICE(mean, update_running_stats, running_mean, running_var, mean, var, momentum, unbias);
}

// Eval folds BN into the convolution: weights w * s and bias beta - rm * s, s = gamma / sqrt(rv + eps),
// in double (off the training path, so plain ATen ops on either device). Forward and backward both fold.
struct Folded {
  at::Tensor s;   // [K] double
  at::Tensor wf;  // w * s in x's dtype
};

Folded fold(const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& running_var, double eps,
            const at::Tensor& x) {
  const at::Tensor s = bn_weight.to(at::kDouble) / (running_var.to(at::kDouble) + eps).sqrt();
  return {s, (weight.to(at::kDouble) * s.view({weight.size(0), 1, 1, 1})).to(x.scalar_type())};
}

// Scale 1 and shift 0 in the coefficient dtype: the per-channel passes as a plain ReLU / mask.
std::pair<at::Tensor, at::Tensor> unit_coefs(int64_t K, const at::Tensor& x) {
  const auto opts = x.options().dtype(coef_type(x));
  return {at::ones({K}, opts), at::zeros({K}, opts)};
}

at::Tensor eval_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                        const at::Tensor& bn_bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                        const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, int64_t groups,
                        double eps, bool relu) {
  static const char* op = "conv_bn_relu (eval)";
  const ConvParams p{stride, padding, groups};
  check_conv(op, x, weight, p);
  const int64_t K = weight.size(0);
  for (auto [name, t] : {std::pair{"bn_weight", &bn_weight}, {"bn_bias", &bn_bias},
                         {"running_mean", &running_mean}, {"running_var", &running_var}})
    check_channel_vector(op, name, *t, K, x);
  const auto [s, wf] = fold(weight, bn_weight, running_var, eps, x);
  const at::Tensor shift = bn_bias.to(at::kDouble) - running_mean.to(at::kDouble) * s;
  if (!residual.has_value() || !residual->defined()) return WSLFAST_ON_DEVICE(x, conv_bias_relu, x, wf, shift, p, relu);
  // With a residual the ReLU comes after the sum: conv + bias, then one pass relu(. + residual).
  const at::Tensor z = WSLFAST_ON_DEVICE(x, conv_bias_relu, x, wf, shift, p, false);
  const auto res = check_residual(op, residual, x, z);
  const auto [one, zero] = unit_coefs(K, x);
  return apply(z, one, zero, relu, &*res);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> eval_backward(
    const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bn_weight, const at::Tensor& running_mean, const at::Tensor& running_var, int64_t stride,
    int64_t padding, int64_t groups, double eps, bool relu) {
  static const char* op = "conv_bn_relu_eval_backward";
  const ConvParams p{stride, padding, groups};
  check_conv(op, x, weight, p);
  const int64_t K = weight.size(0);
  TORCH_CHECK(y.dim() == 4 && y.size(1) == K && grad_y.sizes() == y.sizes(), op,
              ": grad_y and y must both have the conv output's shape, got ", grad_y.sizes(), " and ", y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && y.scalar_type() == x.scalar_type(), op,
              ": grad_y and y must have x's dtype ", x.scalar_type());
  for (auto [name, t] : {std::pair{"bn_weight", &bn_weight}, {"running_mean", &running_mean},
                         {"running_var", &running_var}})
    check_channel_vector(op, name, *t, K, x);
  const auto [s, wf] = fold(weight, bn_weight, running_var, eps, x);
  const at::Tensor yc = y.contiguous(format_of(y));
  const at::Tensor dy = grad_y.contiguous(format_of(yc));
  const auto [one, zero] = unit_coefs(K, x);
  // g = mask(y > 0) * dy, and dshift = sum of g per channel.
  at::Tensor sums = at::zeros({2, K}, x.options().dtype(at::kDouble));
  backward_sums(dy, yc, one, zero, zero, relu, sums);
  auto [dx, dwf] = bn_relu_conv_backward(dy, yc, one, zero, one, zero, zero, relu, false, x, wf, p);
  // w' = w * s and t = beta - rm * s with s = gamma * rinv: chain rule back to w, gamma and beta.
  const at::Tensor dwf64 = dwf.to(at::kDouble);
  const at::Tensor dw = (dwf64 * s.view({K, 1, 1, 1})).to(weight.scalar_type()).contiguous(weight.suggest_memory_format());
  const at::Tensor ds = (dwf64 * weight.to(at::kDouble)).sum({1, 2, 3});
  const at::Tensor rinv = (running_var.to(at::kDouble) + eps).rsqrt();
  const at::Tensor dgamma = ((ds - running_mean.to(at::kDouble) * sums[0]) * rinv).to(bn_weight.scalar_type());
  const at::Tensor dbeta = sums[0].to(bn_weight.scalar_type());
  return {dx, dw, dgamma, dbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(wslfast, CPU, m) {
  m.impl("conv_bn_relu_train", &train_forward);
  m.impl("conv_bn_relu_train_backward", &train_backward);
  m.impl("conv_bn_relu_eval", &eval_forward);
  m.impl("conv_bn_relu_eval_backward", &eval_backward);
  m.impl("bn_update_running_stats", &update_running_stats);
}

#ifdef WSLFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(wslfast, CUDA, m) {
  m.impl("conv_bn_relu_train", &train_forward);
  m.impl("conv_bn_relu_train_backward", &train_backward);
  m.impl("conv_bn_relu_eval", &eval_forward);
  m.impl("conv_bn_relu_eval_backward", &eval_backward);
  m.impl("bn_update_running_stats", &update_running_stats);
}
#endif

}  // namespace wslfast::conv_bn
