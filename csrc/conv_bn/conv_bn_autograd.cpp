// Autograd of the fused conv + BN + ReLU ops, in C++ (the Autograd dispatch key): the forward saves x, w,
// the conv output z and the batch statistics; the backward is one call of the backward op. With a
// residual (y = relu(bn(conv(x)) + residual)) the output y is saved too: the ReLU's backward, dy masked
// by y > 0, is the residual's gradient and goes to the backward op as a gradient with no ReLU left. A Python
// autograd formula (torch.library.register_autograd) cost ~0.1 ms of host time per layer and step,
// as much as a ResNeXt layer's whole forward at small batches, so the training loop can stay GPU-bound.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace wslfast::conv_bn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using OptTensor = std::optional<at::Tensor>;

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// The gradient the backward ops see: with a residual the ReLU is undone here (dy * (y > 0)), and that
// is also the residual's gradient.
at::Tensor through_relu(const at::Tensor& dy, const at::Tensor& y, bool relu) {
  return relu ? at::threshold_backward(dy, y, 0) : dy;
}

c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }

class TrainFn : public torch::autograd::Function<TrainFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                               const at::Tensor& gamma, const at::Tensor& beta, const OptTensor& residual,
                               int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
    static const auto fwd =
        op("wslfast::conv_bn_relu_train")
            .typed<Tensor4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                           int64_t, int64_t, int64_t, double, bool)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, z, mean, var] = fwd.call(x, w, gamma, beta, residual, stride, padding, groups, eps, relu);
    const bool res = present(residual);
    ctx->save_for_backward({x, w, z, gamma, beta, mean, var, res ? y : at::Tensor()});
    ctx->saved_data["residual"] = res;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    ctx->mark_non_differentiable({z, mean, var});
    ctx->set_materialize_grads(false);  // no zero-filled [N, K, P, Q] gradient for z in every backward
    return {y, z, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd =
        op("wslfast::conv_bn_relu_train_backward")
            .typed<Tensor4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                           int64_t, double, bool)>();
    variable_list out(10);
    if (!grads[0].defined()) return out;  // y unused by the loss
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const bool res = d.at("residual").toBool();
    bool relu = d.at("relu").toBool();
    at::Tensor dy = grads[0];
    if (res) {
      dy = through_relu(dy, s[7], relu);
      relu = false;
      out[4] = dy;
    }
    auto [dx, dw, dgamma, dbeta] = bwd.call(dy, s[0], s[1], s[2], s[3], s[4], s[5], s[6], d.at("stride").toInt(),
                                            d.at("padding").toInt(), d.at("groups").toInt(), d.at("eps").toDouble(),
                                            relu);
    out[0] = dx, out[1] = dw, out[2] = dgamma, out[3] = dbeta;
    return out;
  }
};

class EvalFn : public torch::autograd::Function<EvalFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                               const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& running_mean,
                               const at::Tensor& running_var, const OptTensor& residual, int64_t stride,
                               int64_t padding, int64_t groups, double eps, bool relu) {
    static const auto fwd =
        op("wslfast::conv_bn_relu_eval")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, int64_t, int64_t,
                              double, bool)>();
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor y = fwd.call(x, w, gamma, beta, running_mean, running_var, residual, stride, padding, groups, eps,
                            relu);
    ctx->saved_data["residual"] = present(residual);
    // y itself is saved: the backward's ReLU mask is y > 0.
    ctx->save_for_backward({y, x, w, gamma, running_mean, running_var});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd =
        op("wslfast::conv_bn_relu_eval_backward")
            .typed<Tensor4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double,
                           bool)>();
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    variable_list out(12);
    bool relu = d.at("relu").toBool();
    at::Tensor dy = grads[0];
    if (d.at("residual").toBool()) {
      dy = through_relu(dy, s[0], relu);
      relu = false;
      out[6] = dy;
    }
    auto [dx, dw, dgamma, dbeta] = bwd.call(dy, s[0], s[1], s[2], s[3], s[4], s[5], d.at("stride").toInt(),
                                            d.at("padding").toInt(), d.at("groups").toInt(), d.at("eps").toDouble(),
                                            relu);
    out[0] = dx, out[1] = dw, out[2] = dgamma, out[3] = dbeta;
    return out;
  }
};

Tensor4 train_autograd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
                       const OptTensor& residual, int64_t stride, int64_t padding, int64_t groups, double eps,
                       bool relu) {
  auto out = TrainFn::apply(x, w, gamma, beta, residual, stride, padding, groups, eps, relu);
  return {out[0], out[1], out[2], out[3]};
}

at::Tensor eval_autograd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
                         const at::Tensor& running_mean, const at::Tensor& running_var, const OptTensor& residual,
                         int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
  return EvalFn::apply(x, w, gamma, beta, running_mean, running_var, residual, stride, padding, groups, eps,
                       relu)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(wslfast, Autograd, m) {
  m.impl("conv_bn_relu_train", &train_autograd);
  m.impl("conv_bn_relu_eval", &eval_autograd);
}

}  // namespace wslfast::conv_bn
