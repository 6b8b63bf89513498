// CPU passes of the fused conv + BatchNorm + ReLU: one parallel statistics pass over the conv output,
// one fused scale+shift+ReLU pass, and the two fused BN+ReLU backward passes (conv_bn_cpu_kernels.h).
// The convolution itself is ATen's (oneDNN), called from conv_bn.cpp. The passes are built for AVX2+FMA
// and for the baseline ISA and picked at run time: the extension is compiled without -march flags,
// so on x86-64 the loops get the same vector width as PyTorch's own (AVX2) kernels.
#include "conv_bn.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WSLFAST_CPU_MULTIVERSION 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define WSLFAST_CPU_NS avx2
#include "conv_bn_cpu_kernels.h"
#undef WSLFAST_CPU_NS
#pragma GCC pop_options
#endif

#define WSLFAST_CPU_NS base
#include "conv_bn_cpu_kernels.h"
#undef WSLFAST_CPU_NS

namespace wslfast {
namespace conv_bn {
namespace {

bool use_avx2() {
#ifdef WSLFAST_CPU_MULTIVERSION
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace

#ifdef WSLFAST_CPU_MULTIVERSION
#define WSLFAST_CPU_CALL(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define WSLFAST_CPU_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

void channel_sums_cpu(const at::Tensor& z, const at::Tensor& pivot, at::Tensor& sums) {
  WSLFAST_CPU_CALL(channel_sums, z, pivot, sums);
}

void scale_shift_relu_cpu(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                          const at::Tensor* residual, at::Tensor& y) {
  WSLFAST_CPU_CALL(scale_shift_relu, z, scale, shift, relu, residual, y);
}

void bn_relu_backward_sums_cpu(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                               const at::Tensor& mt, const at::Tensor& center, bool relu, at::Tensor& sums) {
  WSLFAST_CPU_CALL(bn_relu_backward_sums, dy, src, ms, mt, center, relu, sums);
}

void bn_relu_backward_apply_cpu(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                const at::Tensor& mt, const at::Tensor& k, const at::Tensor& p,
                                const at::Tensor& q, bool relu, bool use_pq, at::Tensor& g) {
  WSLFAST_CPU_CALL(bn_relu_backward_apply, dy, src, ms, mt, k, p, q, relu, use_pq, g);
}

}  // namespace conv_bn
}  // namespace wslfast
