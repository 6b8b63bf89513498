// The differentiable soft-target cross-entropy ops, built device-agnostically from the kernels:
// soft_ce / soft_ce_reduced (whole logits; on CUDA their own two-launch kernels in soft_ce.cpp take
// precedence) and linear_soft_ce(_reduced) (the classifier fused in, chunked over the vocabulary so the [B, V]
// logits never exist; extra memory O(B x chunk)). Each is partials per part (one part per chunk), stacked,
// then one soft_ce_finish: on CUDA a forward is a GEMM and a row kernel a chunk, plus two launches.
// Registered as CompositeExplicitAutograd; their autograd lives in soft_ce_autograd.cpp (C++, the Autograd key).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace wslfast::soft_ce {
namespace {

using Partials = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Partials partials(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets,
                  const at::Tensor& weights, int64_t col_begin) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wslfast::soft_ce_partials", "")
                       .typed<Partials(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, int64_t)>();
  return op.call(logits, indices, offsets, weights, col_begin);
}

Tensor3 finish(const at::Tensor& parts, const at::Tensor& offsets, c10::string_view reduction,
               at::ScalarType loss_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wslfast::soft_ce_finish", "")
                       .typed<Tensor3(const at::Tensor&, const at::Tensor&, c10::string_view, at::ScalarType)>();
  return op.call(parts, offsets, reduction, loss_dtype);
}

at::Tensor backward_kernel(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                           const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                           int64_t col_begin, const std::optional<at::Tensor>& norm) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wslfast::soft_ce_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                         const std::optional<at::Tensor>&)>();
  return op.call(grad_rows, logits, lse, indices, offsets, weights, col_begin, norm);
}

at::ScalarType loss_dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The parts' four per-row partials stacked as [4, P, B] (max, sum of exp, dot, weight; part-major), what
// soft_ce_finish takes: one copy launch for all of them.
at::Tensor stack_parts(const std::vector<Partials>& parts) {
  std::vector<at::Tensor> all;
  all.reserve(4 * parts.size());
  for (int i = 0; i < 4; ++i)
    for (const auto& p : parts) all.push_back(i == 0 ? std::get<0>(p) : i == 1 ? std::get<1>(p) : i == 2 ? std::get<2>(p) : std::get<3>(p));
  const int64_t rows = std::get<0>(parts.front()).size(0);
  return at::stack(all).view({4, static_cast<int64_t>(parts.size()), rows});
}

Tensor3 soft_ce_any(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets,
                    const at::Tensor& weights, c10::string_view reduction) {
  return finish(stack_parts({partials(logits, indices, offsets, weights, 0)}), offsets, reduction,
                loss_dtype_of(logits));
}

std::tuple<at::Tensor, at::Tensor> soft_ce(const at::Tensor& logits, const at::Tensor& indices,
                                           const at::Tensor& offsets, const at::Tensor& weights) {
  auto [loss, lse, norm] = soft_ce_any(logits, indices, offsets, weights, "none");
  return {loss, lse};
}

Tensor3 soft_ce_reduced(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets,
                        const at::Tensor& weights, c10::string_view reduction) {
  TORCH_CHECK(reduction == "sum" || reduction == "mean", "soft_ce_reduced: reduction must be 'sum' or 'mean', got '",
              reduction, "'");
  return soft_ce_any(logits, indices, offsets, weights, reduction);
}

void check_linear(const at::Tensor& features, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  int64_t chunk_size) {
  TORCH_CHECK(features.dim() == 2, "linear_soft_ce: features must be 2-D [B, D], got shape ", features.sizes());
  TORCH_CHECK(weight.dim() == 2, "linear_soft_ce: weight must be 2-D [V, D], got shape ", weight.sizes());
  TORCH_CHECK(features.size(1) == weight.size(1), "linear_soft_ce: features have D = ", features.size(1),
              " but weight has D = ", weight.size(1));
  TORCH_CHECK(features.scalar_type() == weight.scalar_type(), "linear_soft_ce: features are ",
              features.scalar_type(), " but weight is ", weight.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "linear_soft_ce: bias must be [V] = [",
                weight.size(0), "], got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), "linear_soft_ce: bias is ", bias->scalar_type(),
                " but weight is ", weight.scalar_type());
  }
  TORCH_CHECK(chunk_size > 0, "linear_soft_ce: chunk_size must be > 0, got ", chunk_size);
}

at::Tensor chunk_logits(const at::Tensor& features, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        int64_t c0, int64_t n) {
  const at::Tensor w = weight.narrow(0, c0, n);
  if (bias.has_value()) return at::addmm(bias->narrow(0, c0, n), features, w.t());
  return at::mm(features, w.t());
}

// Each chunk's partials are kept ([B] x 4 a chunk: O(B x V / chunk) in all, not O(B x V)) and merged once, in
// chunk order, by soft_ce_finish.
Tensor3 linear_any(const at::Tensor& features, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                   int64_t chunk_size, c10::string_view reduction) {
  check_linear(features, weight, bias, chunk_size);
  const int64_t V = weight.size(0);
  std::vector<Partials> parts;
  for (int64_t c0 = 0; c0 < V; c0 += chunk_size) {
    const int64_t n = std::min(chunk_size, V - c0);
    parts.push_back(partials(chunk_logits(features, weight, bias, c0, n), indices, offsets, weights, c0));
  }
  if (parts.empty())  // V = 0: one empty part (no classes: max -inf, no target term)
    parts.push_back(partials(features.new_empty({features.size(0), 0}), indices, offsets, weights, 0));
  return finish(stack_parts(parts), offsets, reduction, loss_dtype_of(features));
}

std::tuple<at::Tensor, at::Tensor> linear_soft_ce(const at::Tensor& features, const at::Tensor& weight,
                                                  const c10::optional<at::Tensor>& bias, const at::Tensor& indices,
                                                  const at::Tensor& offsets, const at::Tensor& weights,
                                                  int64_t chunk_size) {
  auto [loss, lse, norm] = linear_any(features, weight, bias, indices, offsets, weights, chunk_size, "none");
  return {loss, lse};
}

Tensor3 linear_soft_ce_reduced(const at::Tensor& features, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size,
                               c10::string_view reduction) {
  TORCH_CHECK(reduction == "sum" || reduction == "mean",
              "linear_soft_ce_reduced: reduction must be 'sum' or 'mean', got '", reduction, "'");
  return linear_any(features, weight, bias, indices, offsets, weights, chunk_size, reduction);
}

// Recomputes each chunk's logits (as cut-cross-entropy does) so the backward holds O(B x chunk) too. grad_rows
// may be a stride-0 view of one value, divided by `norm` in the kernel (the reduced op's gradient).
std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>> linear_soft_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& lse, const at::Tensor& indices,
    const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size, const std::optional<at::Tensor>& norm) {
  check_linear(features, weight, bias, chunk_size);
  const int64_t V = weight.size(0), chunks = (V + chunk_size - 1) / chunk_size;
  // Over several chunks, the feature gradient of bf16/fp16 inputs accumulates in fp32.
  const bool low_precision = features.scalar_type() != at::kFloat && features.scalar_type() != at::kDouble;
  const bool fp32_sum = low_precision && chunks > 1;
  at::Tensor grad_features;
  at::Tensor grad_weight = at::empty_like(weight, at::MemoryFormat::Contiguous);
  c10::optional<at::Tensor> grad_bias;
  if (bias.has_value()) grad_bias = at::empty_like(*bias, at::MemoryFormat::Contiguous);
  for (int64_t c0 = 0; c0 < V; c0 += chunk_size) {
    const int64_t n = std::min(chunk_size, V - c0);
    const at::Tensor gz = backward_kernel(grad_rows, chunk_logits(features, weight, bias, c0, n), lse, indices,
                                          offsets, weights, c0, norm);
    const at::Tensor w = weight.narrow(0, c0, n);
    if (c0 == 0) grad_features = fp32_sum ? at::mm(gz, w).to(at::kFloat) : at::mm(gz, w);
    else if (fp32_sum) grad_features.add_(at::mm(gz, w));
    else grad_features.addmm_(gz, w);
    at::Tensor gw = grad_weight.narrow(0, c0, n);
    at::mm_out(gw, gz.t(), features);
    if (grad_bias.has_value()) {  // accumulated in fp32 and rounded once, into the bias's dtype
      at::Tensor gb = grad_bias->narrow(0, c0, n);
      at::sum_out(gb, gz, {0});
    }
  }
  if (!grad_features.defined()) grad_features = at::zeros_like(features, at::MemoryFormat::Contiguous);  // V = 0
  return {fp32_sum ? grad_features.to(features.scalar_type()) : grad_features, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(wslfast, CompositeExplicitAutograd, m) {
  m.impl("soft_ce", &soft_ce);
  m.impl("soft_ce_reduced", &soft_ce_reduced);
  m.impl("linear_soft_ce", &linear_soft_ce);
  m.impl("linear_soft_ce_reduced", &linear_soft_ce_reduced);
  m.impl("linear_soft_ce_backward", &linear_soft_ce_backward);
}

// The partials and the finish are internal, non-differentiable building blocks: autograd passes straight
// through.
TORCH_LIBRARY_IMPL(wslfast, Autograd, m) {
  m.impl("soft_ce_partials", torch::CppFunction::makeFallthrough());
  m.impl("soft_ce_finish", torch::CppFunction::makeFallthrough());
}

}  // namespace wslfast::soft_ce
