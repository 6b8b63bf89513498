// CPU implementation of the sparse soft-target softmax cross-entropy (see soft_ce.h for the maths).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace wslfast::soft_ce {

// Throws (TORCH_CHECK) unless offsets start at 0, never decrease, end at nnz, and each row's ids are
// >= 0 and strictly increasing (the canonical form SparseTargets produces).
void check_targets_cpu(const at::Tensor& indices, const at::Tensor& offsets);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cpu_impl(
    const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
    int64_t col_begin);

at::Tensor backward_cpu_impl(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                             const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                             int64_t col_begin);

}  // namespace wslfast::soft_ce
