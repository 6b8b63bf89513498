// The differentiable soft-target cross-entropy ops, built device-agnostically from the kernels:
// soft_ce (whole logits) and linear_soft_ce (the classifier fused in, chunked over the vocabulary so the
// [B, V] logits never exist; extra memory O(B x chunk)). Registered as CompositeExplicitAutograd; their
// autograd lives in soft_ce_autograd.cpp (C++, the Autograd key).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <limits>
#include <optional>

namespace wslfast::soft_ce {
namespace {

using Partials = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Partials partials(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets,
                  const at::Tensor& weights, int64_t col_begin) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wslfast::soft_ce_partials", "")
                       .typed<Partials(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, int64_t)>();
  return op.call(logits, indices, offsets, weights, col_begin);
}

at::Tensor backward_kernel(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                           const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                           int64_t col_begin) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wslfast::soft_ce_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                         const std::optional<at::Tensor>&)>();
  return op.call(grad_rows, logits, lse, indices, offsets, weights, col_begin, std::nullopt);
}

// loss_i = W_i * lse_i - dot_i, and exactly 0 for rows without targets (W_i = 0), whatever lse is.
// Partials and lse are float64 (the subtraction cancels); the loss comes back in fp32 (fp64 for fp64).
std::tuple<at::Tensor, at::Tensor> finish(const at::Tensor& row_max, const at::Tensor& row_sumexp,
                                          const at::Tensor& target_dot, const at::Tensor& weight_sum,
                                          at::ScalarType loss_dtype) {
  at::Tensor lse = row_max + at::log(row_sumexp);
  at::Tensor loss = at::where(weight_sum == 0, at::zeros_like(lse), weight_sum * lse - target_dot);
  return {loss.to(loss_dtype), lse};
}

bool is_mean(c10::string_view reduction, const char* op) {
  TORCH_CHECK(reduction == "sum" || reduction == "mean", op, ": reduction must be 'sum' or 'mean', got '", reduction,
              "'");
  return reduction == "mean";
}

// The sum of the float64 row losses (then the loss dtype), or that sum over max(1, rows with targets), and the
// divisor as norm (float32; 1 for the sum): what the CUDA kernel computes, in ATen ops (the CPU's path).
std::tuple<at::Tensor, at::Tensor, at::Tensor> reduce_rows(const at::Tensor& loss_rows64, const at::Tensor& lse,
                                                           const at::Tensor& offsets, bool mean,
                                                           at::ScalarType loss_dtype) {
  at::Tensor norm = mean ? at::count_nonzero(offsets.diff()).clamp_min(1).to(at::kFloat)
                         : at::ones({}, loss_rows64.options().dtype(at::kFloat));
  at::Tensor total = loss_rows64.sum();
  if (mean) total = total / norm;
  return {total.to(loss_dtype), lse, norm};
}

at::ScalarType loss_dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Online-softmax merge of a chunk's (max, sumexp) into the running pair, in place.
void merge_chunk(at::Tensor& run_max, at::Tensor& run_sum, const at::Tensor& mx, const at::Tensor& se) {
  const at::Tensor new_max = at::maximum(run_max, mx);
  const at::Tensor empty = new_max == -std::numeric_limits<double>::infinity();
  const at::Tensor safe = at::where(empty, at::zeros_like(new_max), new_max);
  run_sum = at::where(empty, run_sum, run_sum * at::exp(run_max - safe) + se * at::exp(mx - safe));
  run_max = new_max;
}

std::tuple<at::Tensor, at::Tensor> soft_ce(const at::Tensor& logits, const at::Tensor& indices,
                                           const at::Tensor& offsets, const at::Tensor& weights) {
  auto [mx, se, td, ws] = partials(logits, indices, offsets, weights, 0);
  return finish(mx, se, td, ws, loss_dtype_of(logits));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_ce_reduced(const at::Tensor& logits, const at::Tensor& indices,
                                                               const at::Tensor& offsets, const at::Tensor& weights,
                                                               c10::string_view reduction) {
  const bool mean = is_mean(reduction, "soft_ce_reduced");
  auto [mx, se, td, ws] = partials(logits, indices, offsets, weights, 0);
  auto [loss_rows, lse] = finish(mx, se, td, ws, at::kDouble);
  return reduce_rows(loss_rows, lse, offsets, mean, loss_dtype_of(logits));
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

std::tuple<at::Tensor, at::Tensor> linear_soft_ce(const at::Tensor& features, const at::Tensor& weight,
                                                  const c10::optional<at::Tensor>& bias, const at::Tensor& indices,
                                                  const at::Tensor& offsets, const at::Tensor& weights,
                                                  int64_t chunk_size) {
  check_linear(features, weight, bias, chunk_size);
  const int64_t V = weight.size(0);
  const auto opts = features.options().dtype(at::kDouble);
  at::Tensor run_max = at::full({features.size(0)}, -std::numeric_limits<double>::infinity(), opts);
  at::Tensor run_sum = at::zeros({features.size(0)}, opts);
  at::Tensor dot = at::zeros({features.size(0)}, opts), wsum = at::zeros({features.size(0)}, opts);
  for (int64_t c0 = 0; c0 < V; c0 += chunk_size) {
    const int64_t n = std::min(chunk_size, V - c0);
    auto [mx, se, td, ws] = partials(chunk_logits(features, weight, bias, c0, n), indices, offsets, weights, c0);
    merge_chunk(run_max, run_sum, mx, se);
    dot.add_(td);
    wsum = ws;
  }
  return finish(run_max, run_sum, dot, wsum, loss_dtype_of(features));
}

// Recomputes each chunk's logits (as cut-cross-entropy does) so the backward holds O(B x chunk) too.
std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>> linear_soft_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& lse, const at::Tensor& indices,
    const at::Tensor& offsets, const at::Tensor& weights, int64_t chunk_size) {
  check_linear(features, weight, bias, chunk_size);
  const int64_t V = weight.size(0);
  const bool low_precision = features.scalar_type() != at::kFloat && features.scalar_type() != at::kDouble;
  // The feature gradient sums over every chunk: accumulate it in fp32 for bf16/fp16 inputs.
  at::Tensor grad_features = at::zeros(features.sizes(), features.options().dtype(
      low_precision ? at::kFloat : features.scalar_type()));
  at::Tensor grad_weight = at::empty_like(weight, at::MemoryFormat::Contiguous);
  c10::optional<at::Tensor> grad_bias;
  if (bias.has_value()) grad_bias = at::empty_like(*bias, at::MemoryFormat::Contiguous);
  for (int64_t c0 = 0; c0 < V; c0 += chunk_size) {
    const int64_t n = std::min(chunk_size, V - c0);
    const at::Tensor gz = backward_kernel(grad_rows, chunk_logits(features, weight, bias, c0, n), lse, indices,
                                          offsets, weights, c0);
    const at::Tensor w = weight.narrow(0, c0, n);
    if (low_precision) grad_features.add_(at::mm(gz, w));
    else grad_features.addmm_(gz, w);
    at::Tensor gw = grad_weight.narrow(0, c0, n);
    at::mm_out(gw, gz.t(), features);
    if (grad_bias.has_value()) grad_bias->narrow(0, c0, n).copy_(gz.sum(0, false, at::kFloat));
  }
  return {grad_features.to(features.scalar_type()), grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(wslfast, CompositeExplicitAutograd, m) {
  m.impl("soft_ce", &soft_ce);
  m.impl("soft_ce_reduced", &soft_ce_reduced);
  m.impl("linear_soft_ce", &linear_soft_ce);
  m.impl("linear_soft_ce_backward", &linear_soft_ce_backward);
}

// The partials are an internal, non-differentiable building block: autograd passes straight through.
TORCH_LIBRARY_IMPL(wslfast, Autograd, m) {
  m.impl("soft_ce_partials", torch::CppFunction::makeFallthrough());
}

}  // namespace wslfast::soft_ce
