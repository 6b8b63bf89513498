// Torch glue of the fused conv + BatchNorm + ReLU: input checks, the per-channel math shared by both
// devices (statistics -> scale/shift, backward coefficients), the CPU primitives, and the registration.
//
// Forward (training): z = conv(x, w); mean/var of z per channel; y = relu(z * scale + shift). The op
// returns z and the statistics for the backward and the caller's running-stat update (done in Python so
// the op stays functional). Eval folds BN into the convolution: y = relu(conv(x, w * s) + t).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "conv_bn.h"
#include "conv_bn_device.h"

namespace wslfast::conv_bn {
namespace {

// Per-channel coefficients and statistics: float32, or float64 for float64 storage (gradcheck).
at::ScalarType coef_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

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

// Per-channel math on CPU runs as plain loops over [K] values: on the late ResNeXt stages the dozens of
// tiny ATen ops of the generic version cost as much as the passes over the activations.
std::vector<double> to_doubles(const at::Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "to_doubles", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < t.numel(); ++i) out[i] = static_cast<double>(p[i * t.stride(0)]);
  });
  return out;
}

at::Tensor from_doubles(const std::vector<double>& v, at::ScalarType dt, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(v.size())}, like.options().dtype(dt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "from_doubles", [&] {
    scalar_t* p = out.data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(v[i]);
  });
  return out;
}

// scale = gamma / sqrt(var + eps), shift = beta - mean * scale, in double, then the coefficient dtype.
// Forward and backward both call this, so the ReLU mask the backward recomputes is the forward's.
std::pair<at::Tensor, at::Tensor> bn_scale_shift(const at::Tensor& mean, const at::Tensor& var,
                                                 const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                                 at::ScalarType ct) {
  if (mean.is_cpu()) {
    const auto m = to_doubles(mean), v = to_doubles(var), g = to_doubles(gamma), b = to_doubles(beta);
    std::vector<double> scale(m.size()), shift(m.size());
    for (size_t k = 0; k < m.size(); ++k) {
      scale[k] = g[k] * (1.0 / std::sqrt(v[k] + eps));
      shift[k] = b[k] - m[k] * scale[k];
    }
    return {from_doubles(scale, ct, mean), from_doubles(shift, ct, mean)};
  }
  const at::Tensor invstd = (var.to(at::kDouble) + eps).rsqrt();
  const at::Tensor scale = gamma.to(at::kDouble) * invstd;
  const at::Tensor shift = beta.to(at::kDouble) - mean.to(at::kDouble) * scale;
  return {scale.to(ct).contiguous(), shift.to(ct).contiguous()};
}

void apply(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, bool relu, at::Tensor& y) {
#ifdef WSLFAST_WITH_CUDA
  if (z.is_cuda()) return scale_shift_relu_cuda_t(z, scale, shift, relu, y);
#endif
  scale_shift_relu_cpu(z, scale, shift, relu, y);
}

void backward_sums(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms, const at::Tensor& mt,
                   const at::Tensor& center, bool relu, at::Tensor& sums) {
#ifdef WSLFAST_WITH_CUDA
  if (dy.is_cuda()) return bn_relu_backward_sums_cuda_t(dy, src, ms, mt, center, relu, sums);
#endif
  bn_relu_backward_sums_cpu(dy, src, ms, mt, center, relu, sums);
}

void backward_apply(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms, const at::Tensor& mt,
                    const at::Tensor& k, const at::Tensor& p, const at::Tensor& q, bool relu, bool use_pq,
                    at::Tensor& g) {
#ifdef WSLFAST_WITH_CUDA
  if (dy.is_cuda()) return bn_relu_backward_apply_cuda_t(dy, src, ms, mt, k, p, q, relu, use_pq, g);
#endif
  bn_relu_backward_apply_cpu(dy, src, ms, mt, k, p, q, relu, use_pq, g);
}

std::tuple<at::Tensor, at::Tensor> conv_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
                                                 const ConvParams& p) {
#ifdef WSLFAST_WITH_CUDA
  auto [dx, dw] = g.is_cuda() ? conv_backward_cuda(g, x, w, p) : conv_backward_cpu(g, x, w, p);
#else
  auto [dx, dw] = conv_backward_cpu(g, x, w, p);
#endif
  // Gradients come back in the memory format of the tensor they belong to (what the fake kernels say).
  return {dx.contiguous(x.suggest_memory_format()), dw.contiguous(w.suggest_memory_format())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
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
  const auto ct = coef_type(x);
#ifdef WSLFAST_WITH_CUDA
  ConvSums cs = x.is_cuda() ? conv_with_sums_cuda(x, weight, p) : conv_with_sums_cpu(x, weight, p);
#else
  ConvSums cs = conv_with_sums_cpu(x, weight, p);
#endif
  // mean = pivot + E[z - pivot]; var = E[(z - pivot)^2] - E[z - pivot]^2 (biased, as BN normalizes).
  if (x.is_cpu()) {
    const auto piv = to_doubles(cs.pivot);
    const double* sums = cs.sums.const_data_ptr<double>();
    std::vector<double> mean(K), var(K);
    for (int64_t k = 0; k < K; ++k) {
      const double s0 = sums[k] / static_cast<double>(count), s1 = sums[K + k] / static_cast<double>(count);
      mean[k] = piv[k] + s0;
      var[k] = std::max(s1 - s0 * s0, 0.0);
    }
    const at::Tensor mean_t = from_doubles(mean, ct, cs.sums), var_t = from_doubles(var, ct, cs.sums);
    const auto [scale, shift] = bn_scale_shift(mean_t, var_t, bn_weight, bn_bias, eps, ct);
    at::Tensor y = at::empty_like(cs.z);
    apply(cs.z, scale, shift, relu, y);
    return {y, cs.z, mean_t, var_t};
  }
  const at::Tensor s0 = cs.sums[0] / static_cast<double>(count), s1 = cs.sums[1] / static_cast<double>(count);
  // Rounded to the coefficient dtype before use, so the backward recomputes the very same scale/shift.
  const at::Tensor mean = (cs.pivot.to(at::kDouble) + s0).to(ct);
  const at::Tensor var = (s1 - s0 * s0).clamp_min(0.0).to(ct);
  const auto [scale, shift] = bn_scale_shift(mean, var, bn_weight, bn_bias, eps, ct);
  at::Tensor y = at::empty_like(cs.z);
  apply(cs.z, scale, shift, relu, y);
  return {y, cs.z, mean, var};
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
  const auto ct = coef_type(x);
  const double count = static_cast<double>(z.numel() / K);
  const auto [scale, shift] = bn_scale_shift(mean, var, bn_weight, bn_bias, eps, ct);
  const at::Tensor zc = z.contiguous(format_of(z));
  const at::Tensor dy = grad_y.contiguous(format_of(zc));
  at::Tensor sums = at::zeros({2, K}, x.options().dtype(at::kDouble));
  backward_sums(dy, zc, scale, shift, as_coef(mean, x), relu, sums);
  at::Tensor g = at::empty_like(zc);
  if (x.is_cpu()) {  // the same coefficients as below, as one loop
    const auto m = to_doubles(mean), v = to_doubles(var), gm = to_doubles(bn_weight);
    const double* S = sums.const_data_ptr<double>();
    std::vector<double> kc(K), pc(K), qc(K), dgamma(K), dbeta(K);
    for (int64_t c = 0; c < K; ++c) {
      const double invstd = 1.0 / std::sqrt(v[c] + eps);
      kc[c] = gm[c] * invstd;
      pc[c] = -kc[c] * invstd * invstd * S[K + c] / count;
      qc[c] = -pc[c] * m[c] - kc[c] * S[c] / count;
      dgamma[c] = S[K + c] * invstd;
      dbeta[c] = S[c];
    }
    backward_apply(dy, zc, scale, shift, from_doubles(kc, ct, x), from_doubles(pc, ct, x), from_doubles(qc, ct, x),
                   relu, true, g);
    auto [dx, dw] = conv_backward(g, x, weight, p);
    return {dx, dw, from_doubles(dgamma, bn_weight.scalar_type(), x), from_doubles(dbeta, bn_bias.scalar_type(), x)};
  }
  // With dz = mask * dy and xhat = (z - mean) * invstd, the BN backward is
  //   dx_bn = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)) = k * dz + p * z + q.
  const at::Tensor invstd = (var.to(at::kDouble) + eps).rsqrt();
  const at::Tensor k = bn_weight.to(at::kDouble) * invstd;
  const at::Tensor pc = -k * invstd * invstd * sums[1] / count;
  const at::Tensor qc = -pc * mean.to(at::kDouble) - k * sums[0] / count;
  backward_apply(dy, zc, scale, shift, k.to(ct).contiguous(), pc.to(ct).contiguous(), qc.to(ct).contiguous(),
                 relu, true, g);
  auto [dx, dw] = conv_backward(g, x, weight, p);
  const at::Tensor dgamma = (sums[1] * invstd).to(bn_weight.scalar_type());
  const at::Tensor dbeta = sums[0].to(bn_bias.scalar_type());
  return {dx, dw, dgamma, dbeta};
}

// Eval folds BN into the convolution: weights w * s and bias beta + t, with s = gamma / sqrt(rv + eps)
// and t = -rm * s (double).
std::pair<at::Tensor, at::Tensor> folded(const at::Tensor& bn_weight, const at::Tensor& running_mean,
                                         const at::Tensor& running_var, double eps) {
  const at::Tensor zero = at::zeros_like(running_mean, running_mean.options().dtype(at::kDouble));
  return bn_scale_shift(running_mean, running_var, bn_weight, zero, eps, at::kDouble);
}

at::Tensor eval_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bn_weight,
                        const at::Tensor& bn_bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                        int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
  static const char* op = "conv_bn_relu (eval)";
  const ConvParams p{stride, padding, groups};
  check_conv(op, x, weight, p);
  const int64_t K = weight.size(0);
  for (auto [name, t] : {std::pair{"bn_weight", &bn_weight}, {"bn_bias", &bn_bias},
                         {"running_mean", &running_mean}, {"running_var", &running_var}})
    check_channel_vector(op, name, *t, K, x);
  const auto [s, t0] = folded(bn_weight, running_mean, running_var, eps);
  const at::Tensor shift = bn_bias.to(at::kDouble) + t0;
  const at::Tensor wf = (weight.to(at::kDouble) * s.view({K, 1, 1, 1})).to(x.scalar_type());
#ifdef WSLFAST_WITH_CUDA
  if (x.is_cuda()) return conv_bias_relu_cuda(x, wf, shift.to(at::kFloat), p, relu);
#endif
  return conv_bias_relu_cpu(x, wf, shift.to(x.scalar_type()), p, relu);
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
  const auto ct = coef_type(x);
  const at::Tensor s = folded(bn_weight, running_mean, running_var, eps).first;
  const at::Tensor wf = (weight.to(at::kDouble) * s.view({K, 1, 1, 1})).to(x.scalar_type());
  const at::Tensor yc = y.contiguous(format_of(y));
  const at::Tensor dy = grad_y.contiguous(format_of(yc));
  const at::Tensor one = at::ones({K}, x.options().dtype(ct)), zero = at::zeros({K}, x.options().dtype(ct));
  // g = mask(y > 0) * dy, and dshift = sum of g per channel.
  at::Tensor sums = at::zeros({2, K}, x.options().dtype(at::kDouble));
  backward_sums(dy, yc, one, zero, zero, relu, sums);
  at::Tensor g = at::empty_like(yc);
  backward_apply(dy, yc, one, zero, one, zero, zero, relu, false, g);
  auto [dx, dwf] = conv_backward(g, x, wf, p);
  // w' = w * s and t = beta - rm * s with s = gamma * rinv: chain rule back to w, gamma and beta.
  const at::Tensor dwf64 = dwf.to(at::kDouble);
  const at::Tensor dw = (dwf64 * s.view({K, 1, 1, 1})).to(weight.scalar_type());
  const at::Tensor ds = (dwf64 * weight.to(at::kDouble)).sum({1, 2, 3});
  const at::Tensor rinv = (running_var.to(at::kDouble) + eps).rsqrt();
  const at::Tensor dgamma = ((ds - running_mean.to(at::kDouble) * sums[0]) * rinv).to(bn_weight.scalar_type());
  const at::Tensor dbeta = sums[0].to(bn_weight.scalar_type());
  return {dx, dw, dgamma, dbeta};
}

}  // namespace

// ---- CPU primitives: ATen's convolution (oneDNN) plus our fused per-channel passes ----
ConvSums conv_with_sums_cpu(const at::Tensor& x, const at::Tensor& w, const ConvParams& p) {
  at::Tensor z = at::convolution(x, w, {}, {p.stride, p.stride}, {p.padding, p.padding}, {1, 1}, false, {0, 0},
                                 p.groups);
  z = z.contiguous(x.suggest_memory_format());
  // Pivot: the first sample's top-left value of each channel, a typical value of the channel.
  const at::Tensor pivot = z.select(0, 0).select(1, 0).select(1, 0).to(coef_type(x)).contiguous();
  at::Tensor sums = at::empty({2, z.size(1)}, x.options().dtype(at::kDouble));
  channel_sums_cpu(z, pivot, sums);
  return {z, sums, pivot};
}

at::Tensor conv_bias_relu_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                              const ConvParams& p, bool relu) {
  at::Tensor y = at::convolution(x, w, bias, {p.stride, p.stride}, {p.padding, p.padding}, {1, 1}, false, {0, 0},
                                 p.groups);
  y = y.contiguous(x.suggest_memory_format());
  return relu ? y.clamp_min_(0) : y;
}

std::tuple<at::Tensor, at::Tensor> conv_backward_cpu(const at::Tensor& g, const at::Tensor& x,
                                                     const at::Tensor& w, const ConvParams& p) {
  auto [dx, dw, db] = at::convolution_backward(g, x, w, std::nullopt, {p.stride, p.stride}, {p.padding, p.padding},
                                               {1, 1}, false, {0, 0}, p.groups, {true, true, false});
  return {dx, dw};
}

TORCH_LIBRARY_IMPL(wslfast, CPU, m) {
  m.impl("conv_bn_relu_train", &train_forward);
  m.impl("conv_bn_relu_train_backward", &train_backward);
  m.impl("conv_bn_relu_eval", &eval_forward);
  m.impl("conv_bn_relu_eval_backward", &eval_backward);
}

#ifdef WSLFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(wslfast, CUDA, m) {
  m.impl("conv_bn_relu_train", &train_forward);
  m.impl("conv_bn_relu_train_backward", &train_backward);
  m.impl("conv_bn_relu_eval", &eval_forward);
  m.impl("conv_bn_relu_eval_backward", &eval_backward);
}
#endif

}  // namespace wslfast::conv_bn
