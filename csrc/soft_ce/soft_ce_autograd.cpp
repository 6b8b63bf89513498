// Autograd of the soft-target cross-entropy ops, in C++ (the Autograd dispatch key): the forward saves the
// inputs and the float64 logsumexp, the backward is one call of the backward op. A Python formula
// (torch.library.register_autograd) cost a Python autograd Function per call, host time that was a large
// share of a ~1 ms CPU loss at the paper's 1.5k vocabulary.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace wslfast::soft_ce {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensor3o = std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>>;

c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }

using BackwardOp = c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, const std::optional<at::Tensor>&)>;
const BackwardOp& backward_op() {
  static const BackwardOp bwd =
      op("wslfast::soft_ce_backward")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&)>();
  return bwd;
}

class SoftCeFn : public torch::autograd::Function<SoftCeFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& weights) {
    static const auto fwd = op("wslfast::soft_ce").typed<Tensor2(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse] = fwd.call(logits, indices, offsets, weights);
    ctx->save_for_backward({logits, lse, indices, offsets, weights});
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(4);
    if (!grads[0].defined()) return out;
    const auto s = ctx->get_saved_variables();
    out[0] = backward_op().call(grads[0], s[0], s[1], s[2], s[3], s[4], 0, std::nullopt);
    return out;
  }
};

// The loss reduced inside the op: the backward reads the one upstream value through a stride-0 view (no
// per-row copy) and divides it by the saved norm in the kernel.
class SoftCeReducedFn : public torch::autograd::Function<SoftCeReducedFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& weights, c10::string_view reduction) {
    static const auto fwd = op("wslfast::soft_ce_reduced").typed<Tensor3(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&, const at::Tensor&,
                                                                         c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse, norm] = fwd.call(logits, indices, offsets, weights, reduction);
    ctx->save_for_backward({logits, lse, indices, offsets, weights, norm});
    ctx->mark_non_differentiable({lse, norm});
    ctx->set_materialize_grads(false);
    return {loss, lse, norm};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(5);
    if (!grads[0].defined()) return out;
    const auto s = ctx->get_saved_variables();
    out[0] = backward_op().call(grads[0].expand({s[0].size(0)}), s[0], s[1], s[2], s[3], s[4], 0, s[5]);
    return out;
  }
};

// Gradients of features, weight, bias from the saved (features, weight, bias, lse, indices, offsets, weights);
// `inputs` entries, the rest undefined.
variable_list linear_backward(AutogradContext* ctx, const variable_list& grads, const at::Tensor& grad_rows,
                              const std::optional<at::Tensor>& norm, size_t inputs) {
  static const auto bwd =
      op("wslfast::linear_soft_ce_backward")
          .typed<Tensor3o(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                          const std::optional<at::Tensor>&)>();
  variable_list out(inputs);
  if (!grads[0].defined()) return out;
  const auto s = ctx->get_saved_variables();
  const std::optional<at::Tensor> bias =
      ctx->saved_data.at("has_bias").toBool() ? std::optional<at::Tensor>(s[2]) : std::nullopt;
  auto [gf, gw, gb] = bwd.call(grad_rows, s[0], s[1], bias, s[3], s[4], s[5], s[6],
                               ctx->saved_data.at("chunk_size").toInt(), norm);
  out[0] = gf, out[1] = gw;
  if (gb.has_value()) out[2] = *gb;
  return out;
}

class LinearSoftCeFn : public torch::autograd::Function<LinearSoftCeFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& features, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size) {
    static const auto fwd =
        op("wslfast::linear_soft_ce")
            .typed<Tensor2(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, int64_t)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse] = fwd.call(features, weight, bias, indices, offsets, weights, chunk_size);
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->save_for_backward({features, weight, has_bias ? *bias : at::Tensor(), lse, indices, offsets, weights});
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return linear_backward(ctx, grads, grads[0], std::nullopt, 7);
  }
};

// The classifier and the loss reduced inside the op: as SoftCeReducedFn, the one upstream value is read
// through a stride-0 view and divided by the saved norm in the kernels.
class LinearSoftCeReducedFn : public torch::autograd::Function<LinearSoftCeReducedFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& features, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size,
                               c10::string_view reduction) {
    static const auto fwd =
        op("wslfast::linear_soft_ce_reduced")
            .typed<Tensor3(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, int64_t, c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse, norm] = fwd.call(features, weight, bias, indices, offsets, weights, chunk_size, reduction);
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->save_for_backward(
        {features, weight, has_bias ? *bias : at::Tensor(), lse, indices, offsets, weights, norm});
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->mark_non_differentiable({lse, norm});
    ctx->set_materialize_grads(false);
    return {loss, lse, norm};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(8);
    const auto s = ctx->get_saved_variables();
    return linear_backward(ctx, grads, grads[0].expand({s[0].size(0)}), s[7], 8);
  }
};

Tensor2 soft_ce_autograd(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets,
                         const at::Tensor& weights) {
  auto out = SoftCeFn::apply(logits, indices, offsets, weights);
  return {out[0], out[1]};
}

Tensor3 soft_ce_reduced_autograd(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets,
                                 const at::Tensor& weights, c10::string_view reduction) {
  auto out = SoftCeReducedFn::apply(logits, indices, offsets, weights, reduction);
  return {out[0], out[1], out[2]};
}

Tensor2 linear_soft_ce_autograd(const at::Tensor& features, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const at::Tensor& indices,
                                const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size) {
  auto out = LinearSoftCeFn::apply(features, weight, bias, indices, offsets, weights, chunk_size);
  return {out[0], out[1]};
}

Tensor3 linear_soft_ce_reduced_autograd(const at::Tensor& features, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& indices,
                                        const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size,
                                        c10::string_view reduction) {
  auto out = LinearSoftCeReducedFn::apply(features, weight, bias, indices, offsets, weights, chunk_size, reduction);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(wslfast, Autograd, m) {
  m.impl("soft_ce", &soft_ce_autograd);
  m.impl("soft_ce_reduced", &soft_ce_reduced_autograd);
  m.impl("linear_soft_ce", &linear_soft_ce_autograd);
  m.impl("linear_soft_ce_reduced", &linear_soft_ce_reduced_autograd);
}

}  // namespace wslfast::soft_ce
