// The wslfast operator library: every op's schema, declared once, and the Python module wslfast._C.
// Kernels register themselves beside their code with TORCH_LIBRARY_IMPL(wslfast, CPU|CUDA, m).
#include <torch/library.h>
#include <torch/extension.h>

#ifndef WSLFAST_VERSION
#define WSLFAST_VERSION "unknown"
#endif
#ifndef WSLFAST_TORCH_VERSION
#define WSLFAST_TORCH_VERSION "unknown"
#endif
#ifndef WSLFAST_CUDA_ARCHS
#define WSLFAST_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(wslfast, m) {
  // Sparse multi-hot soft-target softmax cross-entropy (csrc/soft_ce). Targets are canonical CSR rows
  // (ids sorted and unique within a row). `logits` holds classes [col_begin, col_begin + C) of a
  // vocabulary: the whole of it for the plain op, one chunk of it for the fused-linear variant.
  // Forward partials per row: max over the chunk, sum of exp(z - max), sum_j w_j z[t_j] over the
  // targets inside the chunk, and the row's total target weight.
  m.def("soft_ce_forward(Tensor logits, Tensor indices, Tensor offsets, Tensor weights, int col_begin)"
        " -> (Tensor row_max, Tensor row_sumexp, Tensor target_dot, Tensor weight_sum)");
  // grad = g_i * (W_i * exp(z - lse_i) - target_ic), written in the dtype of logits.
  m.def("soft_ce_backward(Tensor grad_rows, Tensor logits, Tensor lse, Tensor indices, Tensor offsets,"
        " Tensor weights, int col_begin) -> Tensor");
}

PYBIND11_MODULE(_C, module) {
  module.def("build_info", []() {
    pybind11::dict info;
    info["version"] = WSLFAST_VERSION;
    info["torch"] = WSLFAST_TORCH_VERSION;
#ifdef WSLFAST_WITH_CUDA
    info["cuda_compiled"] = true;
#else
    info["cuda_compiled"] = false;
#endif
    info["cuda_archs"] = WSLFAST_CUDA_ARCHS;
    return info;
  });
}
