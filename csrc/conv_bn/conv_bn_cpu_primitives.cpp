// The CPU set of the conv+BN+ReLU device primitives (conv_bn_device.h): ATen's convolution (oneDNN),
// our fused per-channel passes (conv_bn_cpu.cpp) and the per-channel finalize math as plain loops over
// [K] values: on the late ResNeXt stages the dozens of tiny ATen ops a generic version would run cost as
// much as the passes over the activations.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

#include "conv_bn.h"
#include "conv_bn_device.h"
#include "conv_bn_finalize.h"

namespace wslfast::conv_bn {
namespace {

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

}  // namespace

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
  at::Tensor y = at::convolution(x, w, bias.to(x.scalar_type()), {p.stride, p.stride}, {p.padding, p.padding},
                                 {1, 1}, false, {0, 0}, p.groups);
  y = y.contiguous(x.suggest_memory_format());
  return relu ? y.clamp_min_(0) : y;
}

BnForward bn_forward_finalize_cpu(const ConvSums& cs, double count, const at::Tensor& gamma, const at::Tensor& beta,
                                  double eps) {
  const int64_t K = cs.sums.size(1);
  const auto ct = cs.pivot.scalar_type();
  const auto piv = to_doubles(cs.pivot), g = to_doubles(gamma), b = to_doubles(beta);
  const double* sums = cs.sums.const_data_ptr<double>();
  std::vector<double> mean(K), var(K), scale(K), shift(K);
  for (int64_t c = 0; c < K; ++c) {
    if (ct == at::kDouble) {
      bn_forward_one<double>(sums[c], sums[K + c], count, piv[c], g[c], b[c], eps, mean[c], var[c], scale[c], shift[c]);
    } else {
      float m, v;
      bn_forward_one<float>(sums[c], sums[K + c], count, piv[c], g[c], b[c], eps, m, v, scale[c], shift[c]);
      mean[c] = m, var[c] = v;
    }
  }
  return {from_doubles(mean, ct, cs.sums), from_doubles(var, ct, cs.sums), from_doubles(scale, ct, cs.sums),
          from_doubles(shift, ct, cs.sums)};
}

std::pair<at::Tensor, at::Tensor> bn_scale_shift_cpu(const at::Tensor& mean, const at::Tensor& var,
                                                     const at::Tensor& gamma, const at::Tensor& beta, double eps) {
  const auto m = to_doubles(mean), v = to_doubles(var), g = to_doubles(gamma), b = to_doubles(beta);
  std::vector<double> scale(m.size()), shift(m.size());
  for (size_t c = 0; c < m.size(); ++c) bn_scale_shift_one(m[c], v[c], g[c], b[c], eps, scale[c], shift[c]);
  return {from_doubles(scale, mean.scalar_type(), mean), from_doubles(shift, mean.scalar_type(), mean)};
}

BnBackward bn_backward_finalize_cpu(const at::Tensor& sums, double count, const at::Tensor& mean,
                                    const at::Tensor& var, const at::Tensor& gamma, double eps) {
  const int64_t K = sums.size(1);
  const auto m = to_doubles(mean), v = to_doubles(var), g = to_doubles(gamma);
  const double* S = sums.const_data_ptr<double>();
  std::vector<double> kc(K), pc(K), qc(K), dgamma(K), dbeta(K);
  for (int64_t c = 0; c < K; ++c) {
    const BnBackwardCoef r = bn_backward_one(S[c], S[K + c], count, m[c], v[c], g[c], eps);
    kc[c] = r.k, pc[c] = r.p, qc[c] = r.q, dgamma[c] = r.dgamma, dbeta[c] = r.dbeta;
  }
  const auto ct = mean.scalar_type();
  return {from_doubles(kc, ct, sums), from_doubles(pc, ct, sums), from_doubles(qc, ct, sums),
          from_doubles(dgamma, gamma.scalar_type(), sums), from_doubles(dbeta, gamma.scalar_type(), sums)};
}

void update_running_stats_cpu(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                              const at::Tensor& var, double momentum, double unbias) {
  const auto m = to_doubles(mean), v = to_doubles(var);
  // In the running buffers' own math type, as (1 - momentum) * running + momentum * batch.
  auto update = [&](at::Tensor& running, const std::vector<double>& batch, double factor) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running.scalar_type(), "update_running_stats", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* r = running.data_ptr<scalar_t>();
      const acc_t keep = static_cast<acc_t>(1.0 - momentum), mom = static_cast<acc_t>(momentum);
      for (size_t c = 0; c < batch.size(); ++c)
        r[c] = static_cast<scalar_t>(static_cast<acc_t>(r[c]) * keep +
                                     mom * static_cast<acc_t>(static_cast<acc_t>(batch[c]) * static_cast<acc_t>(factor)));
    });
  };
  update(running_mean, m, 1.0);
  update(running_var, v, unbias);
}

std::tuple<at::Tensor, at::Tensor> bn_relu_conv_backward_cpu(const at::Tensor& dy, const at::Tensor& src,
                                                             const at::Tensor& ms, const at::Tensor& mt,
                                                             const at::Tensor& k, const at::Tensor& p,
                                                             const at::Tensor& q, bool relu, bool use_pq,
                                                             const at::Tensor& x, const at::Tensor& w,
                                                             const ConvParams& params) {
  at::Tensor g = at::empty_like(src);
  bn_relu_backward_apply_cpu(dy, src, ms, mt, k, p, q, relu, use_pq, g);
  auto [dx, dw, db] = at::convolution_backward(g, x, w, std::nullopt, {params.stride, params.stride},
                                               {params.padding, params.padding}, {1, 1}, false, {0, 0},
                                               params.groups, {true, true, false});
  return {dx, dw};
}

}  // namespace wslfast::conv_bn
