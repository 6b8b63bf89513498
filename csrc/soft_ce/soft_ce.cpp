// Torch glue of the soft-target cross-entropy: input checks, then the CPU or CUDA kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef WSLFAST_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../common/torch_dtype.h"
#endif

#include <cmath>
#include <cstdlib>
#include <optional>

#include "soft_ce.h"
#include "soft_ce_cpu.h"
#include "soft_ce_math.h"

namespace wslfast::soft_ce {
namespace {

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Returns logits with unit column stride (a copy only when needed).
at::Tensor check_inputs(const char* op, const at::Tensor& logits, const at::Tensor& indices,
                        const at::Tensor& offsets, const at::Tensor& weights, int64_t col_begin) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [B, V], got ", logits.dim(), "-D of shape ",
              logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op,
              ": logits must be float32, bfloat16 or float16 (float64 on CPU), got ", dt);
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong, op,
              ": indices must be a 1-D int64 tensor, got ", indices.scalar_type(), " of shape ", indices.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong, op,
              ": offsets must be a 1-D int64 tensor, got ", offsets.scalar_type(), " of shape ", offsets.sizes());
  TORCH_CHECK(weights.dim() == 1 && weights.scalar_type() == at::kFloat, op,
              ": weights must be a 1-D float32 tensor, got ", weights.scalar_type(), " of shape ", weights.sizes());
  TORCH_CHECK(offsets.numel() == logits.size(0) + 1, op, ": offsets must have B+1 = ", logits.size(0) + 1,
              " entries for logits with B = ", logits.size(0), " rows, got ", offsets.numel());
  TORCH_CHECK(weights.numel() == indices.numel(), op, ": weights has ", weights.numel(),
              " entries but indices has ", indices.numel());
  TORCH_CHECK(indices.device() == logits.device() && offsets.device() == logits.device() &&
                  weights.device() == logits.device(),
              op, ": logits, indices, offsets and weights must be on one device, got ", logits.device(), ", ",
              indices.device(), ", ", offsets.device(), ", ", weights.device());
  TORCH_CHECK(col_begin >= 0, op, ": col_begin must be >= 0, got ", col_begin);
  return logits.size(1) > 0 && logits.stride(1) != 1 ? logits.contiguous() : logits;
}

void check_row_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& logits) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == logits.size(0), op, ": ", name, " must be 1-D with B = ",
              logits.size(0), " entries, got shape ", t.sizes());
  TORCH_CHECK(t.device() == logits.device(), op, ": ", name, " must be on ", logits.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
    int64_t col_begin) {
  const at::Tensor z = check_inputs("soft_ce_partials", logits, indices, offsets, weights, col_begin);
  return forward_cpu_impl(z, indices.contiguous(), offsets.contiguous(), weights.contiguous(), col_begin);
}

void check_norm(const char* op, const std::optional<at::Tensor>& norm, const at::Tensor& logits) {
  if (!norm.has_value()) return;
  TORCH_CHECK(norm->numel() == 1 && norm->is_floating_point(), op, ": norm must be one floating value, got ",
              norm->scalar_type(), " of shape ", norm->sizes());
  TORCH_CHECK(norm->device() == logits.device(), op, ": norm must be on ", logits.device());
}

at::Tensor backward_cpu(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                        const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                        int64_t col_begin, const std::optional<at::Tensor>& norm) {
  const at::Tensor z = check_inputs("soft_ce_backward", logits, indices, offsets, weights, col_begin);
  check_row_tensor("soft_ce_backward", "grad_rows", grad_rows, z);
  check_row_tensor("soft_ce_backward", "lse", lse, z);
  check_norm("soft_ce_backward", norm, z);
  const auto acc = acc_type(z);
  at::Tensor g = grad_rows.to(acc);
  if (norm.has_value()) g = g / norm->reshape({}).to(acc);
  return backward_cpu_impl(g.contiguous(), z, lse.to(at::kDouble).contiguous(), indices.contiguous(),
                           offsets.contiguous(), weights.contiguous(), col_begin);
}

// "none" | "sum" | "mean" (the ops' str argument) as the kernels' Reduction.
Reduction reduction_of(c10::string_view reduction, const char* op) {
  TORCH_CHECK(reduction == "none" || reduction == "sum" || reduction == "mean", op,
              ": reduction must be 'none', 'sum' or 'mean', got '", reduction, "'");
  return reduction == "none" ? Reduction::kNone : (reduction == "sum" ? Reduction::kSum : Reduction::kMean);
}

void check_finish_inputs(const at::Tensor& parts, const at::Tensor& offsets, at::ScalarType loss_dtype) {
  TORCH_CHECK(parts.dim() == 3 && parts.size(0) == 4 && parts.size(1) >= 1 && parts.scalar_type() == at::kDouble,
              "soft_ce_finish: parts must be float64 [4, P >= 1, B], got ", parts.scalar_type(), " of shape ",
              parts.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.numel() == parts.size(2) + 1,
              "soft_ce_finish: offsets must be int64 [B+1] = [", parts.size(2) + 1, "], got ", offsets.scalar_type(),
              " of shape ", offsets.sizes());
  TORCH_CHECK(offsets.device() == parts.device(), "soft_ce_finish: parts and offsets must be on one device");
  TORCH_CHECK(loss_dtype == at::kFloat || loss_dtype == at::kDouble,
              "soft_ce_finish: loss_dtype must be float32 or float64, got ", loss_dtype);
}

// The CPU finish, in float64 throughout (the kernels merge (max, sum of exp) in fp32): per row the parts'
// online merge in part order (NaN stays NaN), lse = max + log(sum), loss = W * lse - dot (0 where W = 0); the
// reduction in row order.
std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_cpu(const at::Tensor& parts_in, const at::Tensor& offsets_in,
                                                          c10::string_view reduction, at::ScalarType loss_dtype) {
  check_finish_inputs(parts_in, offsets_in, loss_dtype);
  const Reduction red = reduction_of(reduction, "soft_ce_finish");
  const at::Tensor parts = parts_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t P = parts.size(1), B = parts.size(2);
  const double* pm = parts.const_data_ptr<double>();
  const double *ps = pm + P * B, *pd = ps + P * B, *pw = pd + P * B;
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const auto f64 = parts.options();
  at::Tensor lse = at::empty({B}, f64), rows = at::empty({B}, f64);
  double* L = lse.data_ptr<double>();
  double* l = rows.data_ptr<double>();
  double total = 0.0;
  int64_t with_targets = 0;
  for (int64_t r = 0; r < B; ++r) {
    double m = -INFINITY, s = 0.0, dot = 0.0;
    for (int64_t p = 0; p < P; ++p) {
      const double mp = pm[p * B + r], sp = ps[p * B + r];
      const double mn = std::isnan(m) ? m : ((std::isnan(mp) || mp > m) ? mp : m);
      if (mn != -INFINITY) {  // both empty (or all -inf): nothing to add
        s = (m == -INFINITY ? 0.0 : s * std::exp(m - mn)) + (mp == -INFINITY ? 0.0 : sp * std::exp(mp - mn));
        m = mn;
      }
      dot += pd[p * B + r];
    }
    const double W = pw[r];
    L[r] = m + std::log(s);
    l[r] = W == 0.0 ? 0.0 : W * L[r] - dot;
    total += l[r];
    with_targets += off[r + 1] != off[r];
  }
  if (red == Reduction::kNone) return {rows.to(loss_dtype), lse, at::ones({}, f64.dtype(at::kFloat))};
  const double d = red == Reduction::kMean && with_targets > 1 ? static_cast<double>(with_targets) : 1.0;
  return {at::scalar_tensor(total / d, f64.dtype(loss_dtype)), lse, at::scalar_tensor(d, f64.dtype(at::kFloat))};
}

#ifdef WSLFAST_WITH_CUDA
DType dtype_of(const at::Tensor& t) { return cuda_dtype_of(t, "soft_ce (CUDA): logits"); }

Targets targets_of(const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights) {
  return {indices.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), weights.const_data_ptr<float>(),
          indices.numel()};
}

// Blocks per row: by shape and SM count (choose_splits), or WSLFAST_SOFT_CE_SPLITS (tests, benchmarks).
int64_t splits_for(int64_t rows, int64_t cols) {
  const char* env = std::getenv("WSLFAST_SOFT_CE_SPLITS");
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    TORCH_CHECK(*end == '\0' && v >= 1 && v <= kMaxSplits, "WSLFAST_SOFT_CE_SPLITS must be an integer in [1, ",
                kMaxSplits, "], got '", env, "'");
    return v;
  }
  return choose_splits(rows, cols, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
}

// The CUDA kernels need no host-side check of the targets' CSR structure (that would cost a sync per call):
// they clamp every read into the targets and give rows whose targets are not canonical NaN results, which
// the training loop's finite-loss check (the one sync per step it has anyway) turns into a skipped step.
// SparseTargets validates on construction, so the public API never gets there. Nothing here launches a
// kernel but the launchers (allocations are the caching allocator's; the inputs are contiguous already in
// every call the public API makes), so a forward is 2 launches and a backward 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cuda_op(
    const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
    int64_t col_begin) {
  const at::Tensor z = check_inputs("soft_ce_partials", logits, indices, offsets, weights, col_begin);
  const auto dt = dtype_of(z);
  const c10::cuda::CUDAGuard guard(z.device());
  const auto opts = z.options().dtype(at::kDouble);
  const int64_t rows = z.size(0);
  at::Tensor mx = at::empty({rows}, opts), se = at::empty({rows}, opts);
  at::Tensor td = at::empty({rows}, opts), ws = at::empty({rows}, opts);
  const at::Tensor ids = indices.contiguous(), offs = offsets.contiguous(), w = weights.contiguous();
  const int64_t splits = splits_for(rows, z.size(1));
  at::Tensor part = splits > 1 ? at::empty({4 * rows * splits}, opts) : at::Tensor();
  forward_cuda(dt, z.const_data_ptr(), rows, z.size(1), z.stride(0), col_begin, targets_of(ids, offs, w), splits,
               splits > 1 ? part.data_ptr<double>() : nullptr, mx.data_ptr<double>(), se.data_ptr<double>(),
               td.data_ptr<double>(), ws.data_ptr<double>(), c10::cuda::getCurrentCUDAStream().stream());
  return {mx, se, td, ws};
}

// loss [B] (kNone) or 0-dim, lse [B] float64, norm 0-dim float32 (reductions only).
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_cuda_op(const char* op, const at::Tensor& logits,
                                                            const at::Tensor& indices, const at::Tensor& offsets,
                                                            const at::Tensor& weights, Reduction reduction) {
  const at::Tensor z = check_inputs(op, logits, indices, offsets, weights, 0);
  const auto dt = dtype_of(z);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t rows = z.size(0), splits = splits_for(rows, z.size(1));
  const bool none = reduction == Reduction::kNone;
  const auto f32 = z.options().dtype(at::kFloat);
  at::Tensor loss = none ? at::empty({rows}, f32) : at::empty({}, f32);
  at::Tensor lse = at::empty({rows}, z.options().dtype(at::kDouble));
  at::Tensor norm = none ? at::Tensor() : at::empty({}, f32);
  at::Tensor work = at::empty({4 * rows * splits}, z.options().dtype(at::kDouble));
  const at::Tensor ids = indices.contiguous(), offs = offsets.contiguous(), w = weights.contiguous();
  loss_cuda(dt, z.const_data_ptr(), rows, z.size(1), z.stride(0), targets_of(ids, offs, w), splits, reduction,
            rows > 0 ? work.data_ptr<double>() : nullptr, lse.data_ptr<double>(), loss.data_ptr<float>(),
            none ? nullptr : norm.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  return {loss, lse, norm};
}

std::tuple<at::Tensor, at::Tensor> soft_ce_cuda_op(const at::Tensor& logits, const at::Tensor& indices,
                                                   const at::Tensor& offsets, const at::Tensor& weights) {
  auto [loss, lse, norm] = loss_cuda_op("soft_ce", logits, indices, offsets, weights, Reduction::kNone);
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_ce_reduced_cuda_op(const at::Tensor& logits,
                                                                       const at::Tensor& indices,
                                                                       const at::Tensor& offsets,
                                                                       const at::Tensor& weights,
                                                                       c10::string_view reduction) {
  const Reduction red = reduction_of(reduction, "soft_ce_reduced");
  TORCH_CHECK(red != Reduction::kNone, "soft_ce_reduced: reduction must be 'sum' or 'mean', got 'none'");
  return loss_cuda_op("soft_ce_reduced", logits, indices, offsets, weights, red);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_cuda_op(const at::Tensor& parts_in, const at::Tensor& offsets_in,
                                                              c10::string_view reduction, at::ScalarType loss_dtype) {
  check_finish_inputs(parts_in, offsets_in, loss_dtype);
  TORCH_CHECK(loss_dtype == at::kFloat, "soft_ce_finish (CUDA): loss_dtype must be float32");
  const Reduction red = reduction_of(reduction, "soft_ce_finish");
  const c10::cuda::CUDAGuard guard(parts_in.device());
  const at::Tensor parts = parts_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t P = parts.size(1), B = parts.size(2);
  const auto f32 = parts.options().dtype(at::kFloat);
  at::Tensor loss = red == Reduction::kNone ? at::empty({B}, f32) : at::empty({}, f32);
  at::Tensor lse = at::empty({B}, parts.options()), norm = at::empty({}, f32);
  finish_cuda(parts.const_data_ptr<double>(), B, P, offsets.const_data_ptr<int64_t>(), red, lse.data_ptr<double>(),
              loss.data_ptr<float>(), norm.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  return {loss, lse, norm};
}

// The gradient in the logits' 16-byte phase (a few elements of slack in front when the logits do not start on
// a 16-byte boundary), so that every row of contiguous logits runs vector loads and stores alike.
at::Tensor grad_in_phase_of(const at::Tensor& z) {
  const int64_t rows = z.size(0), cols = z.size(1), es = z.element_size();
  const int64_t phase = static_cast<int64_t>(reinterpret_cast<uintptr_t>(z.const_data_ptr()) & 15) / es;
  if (phase == 0 || rows * cols == 0) return at::empty({rows, cols}, z.options());
  return at::empty({rows * cols + 16 / es}, z.options()).narrow(0, phase, rows * cols).view({rows, cols});
}

at::Tensor backward_cuda_op(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                            const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                            int64_t col_begin, const std::optional<at::Tensor>& norm) {
  const at::Tensor z = check_inputs("soft_ce_backward", logits, indices, offsets, weights, col_begin);
  check_row_tensor("soft_ce_backward", "grad_rows", grad_rows, z);
  check_row_tensor("soft_ce_backward", "lse", lse, z);
  check_norm("soft_ce_backward", norm, z);
  const auto dt = dtype_of(z);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor grad = grad_in_phase_of(z);
  // Any stride, 0 included (the gradient of a sum arrives expanded): read in place, no copy.
  const at::Tensor g = grad_rows.to(at::kFloat), L = lse.to(at::kDouble).contiguous();
  const at::Tensor nf = norm.has_value() ? norm->to(at::kFloat) : at::Tensor();
  const at::Tensor ids = indices.contiguous(), offs = offsets.contiguous(), w = weights.contiguous();
  const GradRows gr{g.const_data_ptr<float>(), g.stride(0), norm.has_value() ? nf.const_data_ptr<float>() : nullptr};
  backward_cuda(dt, gr, z.const_data_ptr(), z.size(0), z.size(1), z.stride(0), L.const_data_ptr<double>(), col_begin,
                targets_of(ids, offs, w), splits_for(z.size(0), z.size(1)), grad.data_ptr(), grad.stride(0),
                c10::cuda::getCurrentCUDAStream().stream());
  return grad;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(wslfast, CPU, m) {
  m.impl("soft_ce_partials", &forward_cpu);
  m.impl("soft_ce_finish", &finish_cpu);
  m.impl("soft_ce_backward", &backward_cpu);
}

#ifdef WSLFAST_WITH_CUDA
// soft_ce and soft_ce_reduced are CompositeExplicitAutograd (soft_ce_composite.cpp) for the CPU; these CUDA
// kernels take precedence on CUDA tensors.
TORCH_LIBRARY_IMPL(wslfast, CUDA, m) {
  m.impl("soft_ce_partials", &forward_cuda_op);
  m.impl("soft_ce", &soft_ce_cuda_op);
  m.impl("soft_ce_reduced", &soft_ce_reduced_cuda_op);
  m.impl("soft_ce_finish", &finish_cuda_op);
  m.impl("soft_ce_backward", &backward_cuda_op);
}
#endif

}  // namespace wslfast::soft_ce
