// The wslfast operator library: every op's schema, declared once, and the Python module wslfast._C.
// Kernels register themselves beside their code with TORCH_LIBRARY_IMPL(wslfast, CPU|CUDA, m).
#include <torch/library.h>
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <vector>

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
  // (ids sorted and unique within a row; SparseTargets makes them so).
  // Differentiable ops (autograd registered in C++, csrc/soft_ce/soft_ce_autograd.cpp); both return the per-row loss
  // l_i = sum_j w_ij (lse_i - z_i[t_ij]) and lse_i, which the backward reuses.
  m.def("soft_ce(Tensor logits, Tensor indices, Tensor offsets, Tensor weights) -> (Tensor loss, Tensor lse)");
  // The same reduced in the op ("sum", or "mean" over the rows with targets): a 0-dim loss, lse, and norm (0-dim
  // float32: the mean's divisor, 1 for the sum), which the backward divides the upstream gradient by; on CUDA
  // the whole forward is two kernel launches and the backward one.
  m.def("soft_ce_reduced(Tensor logits, Tensor indices, Tensor offsets, Tensor weights, str reduction)"
        " -> (Tensor loss, Tensor lse, Tensor norm)");
  // grad_rows: [B], any stride (0 broadcasts one value); divided by norm when given.
  m.def("soft_ce_backward(Tensor grad_rows, Tensor logits, Tensor lse, Tensor indices, Tensor offsets,"
        " Tensor weights, int col_begin, Tensor? norm=None) -> Tensor");
  // z = features @ weight.T + bias, worked through `chunk_size` classes at a time, never [B, V] at once.
  m.def("linear_soft_ce(Tensor features, Tensor weight, Tensor? bias, Tensor indices, Tensor offsets,"
        " Tensor weights, int chunk_size) -> (Tensor loss, Tensor lse)");
  m.def("linear_soft_ce_reduced(Tensor features, Tensor weight, Tensor? bias, Tensor indices, Tensor offsets,"
        " Tensor weights, int chunk_size, str reduction) -> (Tensor loss, Tensor lse, Tensor norm)");
  m.def("linear_soft_ce_backward(Tensor grad_rows, Tensor features, Tensor weight, Tensor? bias, Tensor lse,"
        " Tensor indices, Tensor offsets, Tensor weights, int chunk_size, Tensor? norm=None)"
        " -> (Tensor, Tensor, Tensor?)");
  // The kernel both build on. `logits` holds classes [col_begin, col_begin + C) of the vocabulary; per
  // row it returns max_c z_c, sum_c exp(z_c - max), sum_j w_j z[t_j] over targets inside the block, and
  // the row's total target weight. soft_ce_backward writes g_i * (W_i * exp(z - lse_i) - target_ic).
  m.def("soft_ce_partials(Tensor logits, Tensor indices, Tensor offsets, Tensor weights, int col_begin)"
        " -> (Tensor row_max, Tensor row_sumexp, Tensor target_dot, Tensor weight_sum)");
  // The loss from P parts' partials stacked as float64 [4, P, B] (merged in part order; the weight from part
  // 0): loss ([B] for "none", else 0-dim) in loss_dtype, lse, norm (the mean's divisor; 1 otherwise).
  m.def("soft_ce_finish(Tensor parts, Tensor offsets, str reduction, ScalarType loss_dtype)"
        " -> (Tensor loss, Tensor lse, Tensor norm)");
  // Fused conv2d (no bias, dilation 1) + BatchNorm + optional ReLU (csrc/conv_bn); autograd registered in
  // wslfast/ops/conv_bn.py. Training returns the conv output z and the batch mean and biased variance
  // (float32, float64 for float64 x) for the backward; the caller updates the running statistics.
  // An optional residual is added before the ReLU (y = relu(bn(conv(x)) + residual), a ResNet block's
  // tail); its backward is the ReLU mask of y, applied by the autograd before the backward ops.
  m.def("conv_bn_relu_train(Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor? residual,"
        " int stride, int padding, int groups, float eps, bool relu) -> (Tensor y, Tensor z, Tensor mean, Tensor var)");
  m.def("conv_bn_relu_train_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor z, Tensor bn_weight,"
        " Tensor bn_bias, Tensor mean, Tensor var, int stride, int padding, int groups, float eps, bool relu)"
        " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bn_weight, Tensor grad_bn_bias)");
  // running = (1 - momentum) * running + momentum * batch, with the unbiased variance var * count / (count - 1)
  // (PyTorch's rule), in place: one call instead of a handful of [K]-sized ops per layer and step.
  m.def("bn_update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var,"
        " float momentum, int count) -> ()");
  // Eval: BatchNorm with the running statistics, folded into the convolution.
  m.def("conv_bn_relu_eval(Tensor x, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor running_mean,"
        " Tensor running_var, Tensor? residual, int stride, int padding, int groups, float eps, bool relu) -> Tensor");
  m.def("conv_bn_relu_eval_backward(Tensor grad_y, Tensor y, Tensor x, Tensor weight, Tensor bn_weight,"
        " Tensor running_mean, Tensor running_var, int stride, int padding, int groups, float eps, bool relu)"
        " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bn_weight, Tensor grad_bn_bias)");
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
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    return info;
  });
  // How many threads at::parallel_for ran chunks on in this build (1 where it was built without the
  // OpenMP torch runs on: then every CPU kernel of ours runs on one core). Tests and `wslfast.check` ask.
  module.def("cpu_parallel_threads", [](int64_t items) {
    TORCH_CHECK_VALUE(items >= 1, "cpu_parallel_threads: items must be >= 1, got ", items);
    std::vector<std::atomic<int>> seen(static_cast<size_t>(std::max(1, at::get_num_threads())));
    at::parallel_for(0, items, 1, [&](int64_t, int64_t) {
      const auto t = static_cast<size_t>(at::get_thread_num());
      if (t < seen.size()) seen[t].store(1);
    });
    int threads = 0;
    for (auto& s : seen) threads += s.load();
    return threads;
  }, pybind11::arg("items") = 64);
}
