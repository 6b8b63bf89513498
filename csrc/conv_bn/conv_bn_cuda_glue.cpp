// CUDA primitives of the conv+BN+ReLU ops: tensors -> raw pointers for the launchers in conv_bn_cuda.cu.
// Activations are handled channels_last (NHWC), weights as KRSC (channels_last weights).
//
// WSLFAST_CONV_BN_IMPL picks the convolution kernels: "auto" (default: the tensor-core kernels where
// they apply, else the simple ones), "simple" or "fast" (an error where fast does not apply). float32
// runs the tensor cores in TF32 when torch.backends.cudnn.allow_tf32 is on (PyTorch's default). The GPU
// tests use it to check each implementation against the CPU reference and against the other.
#ifdef WSLFAST_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../common/torch_dtype.h"
#include "conv_bn_cuda.h"
#include "conv_bn_device.h"

namespace wslfast::conv_bn {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

DType dtype_of(const at::Tensor& t) { return cuda_dtype_of(t, "conv_bn_relu (CUDA): x"); }

CUstream_st* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

ConvShape shape_of(const at::Tensor& x, const at::Tensor& w, const ConvParams& p) {
  ConvShape s{};
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.K = w.size(0), s.R = w.size(2), s.S = w.size(3);
  s.stride = p.stride, s.pad = p.padding, s.groups = p.groups;
  s.P = (s.H + 2 * s.pad - s.R) / s.stride + 1;
  s.Q = (s.W + 2 * s.pad - s.S) / s.stride + 1;
  return s;
}

// float32 takes the tensor cores (TF32) only where PyTorch would let cuDNN do so for its convolutions
// (torch.backends.cudnn.allow_tf32, on by default); otherwise the simple kernels keep full float32.
bool fast_allowed(DType dt, const ConvShape& s) {
  if (dt == DType::kFloat32 && !at::globalContext().allowTF32CuDNN()) return false;
  return conv_fwd_fast_supported(dt, s);
}

bool use_fast(DType dt, const ConvShape& s) {
  const char* env = std::getenv("WSLFAST_CONV_BN_IMPL");
  if (env == nullptr || !std::strcmp(env, "") || !std::strcmp(env, "auto")) return fast_allowed(dt, s);
  if (!std::strcmp(env, "simple")) return false;
  TORCH_CHECK(!std::strcmp(env, "fast"), "WSLFAST_CONV_BN_IMPL must be auto, simple or fast, got '", env, "'");
  TORCH_CHECK(fast_allowed(dt, s), "WSLFAST_CONV_BN_IMPL=fast: the tensor-core kernels need channels per group "
              "(in and out) a multiple of 4, and for float32 torch.backends.cudnn.allow_tf32 = True");
  return true;
}

// The kernels move 16-byte (8-byte) vectors: a view that starts off such a boundary gets a fresh copy.
at::Tensor aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone(t.suggest_memory_format());
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(kCL), "conv_bn_relu (CUDA, internal): ", name,
              " must be a channels_last CUDA tensor");
}

// z = conv(x, w) (+ bias, ReLU); with want_stats also the statistics partials (ConvSums, conv_bn_cuda.h).
ConvSums conv_forward(const at::Tensor& x, const at::Tensor& w, const float* bias, bool relu, bool want_stats,
                      const ConvParams& p) {
  const at::Tensor xc = aligned(x.contiguous(kCL)), wc = aligned(w.contiguous(kCL));
  const ConvShape s = shape_of(xc, wc, p);
  const DType dt = dtype_of(xc);
  const bool fast = use_fast(dt, s);
  ConvSums cs;
  cs.z = at::empty({s.N, s.K, s.P, s.Q}, xc.options().memory_format(kCL));
  double* parts = nullptr;
  if (want_stats) {
    const StatLayout L = fast ? conv_fwd_fast_stat_layout(s) : conv_fwd_simple_stat_layout(s);
    cs.sums = at::empty({2, L.nparts, s.K}, xc.options().dtype(at::kDouble));
    cs.rows_per_part = L.rows_per_part;
    parts = cs.sums.data_ptr<double>();
  }
  if (fast) {
    conv_fwd_fast_cuda(dt, xc.const_data_ptr(), wc.const_data_ptr(), bias, relu, cs.z.data_ptr(), parts, s,
                       current_stream());
  } else {
    conv_fwd_simple_cuda(dt, xc.const_data_ptr(), wc.const_data_ptr(), bias, relu, cs.z.data_ptr(), parts, s,
                         current_stream());
  }
  return cs;
}

// float32 [K] copies of per-channel parameters for the kernels (no copy when they already are).
at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace

ConvSums conv_with_sums_cuda(const at::Tensor& x, const at::Tensor& w, const ConvParams& p) {
  const c10::cuda::CUDAGuard guard(x.device());
  return conv_forward(x, w, nullptr, false, true, p);
}

at::Tensor conv_bias_relu_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const ConvParams& p,
                               bool relu) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor b = f32(bias);
  return conv_forward(x, w, b.const_data_ptr<float>(), relu, false, p).z;
}

BnForward bn_forward_finalize_cuda(const ConvSums& cs, double count, const at::Tensor& gamma, const at::Tensor& beta,
                                   double eps) {
  const c10::cuda::CUDAGuard guard(cs.sums.device());
  TORCH_CHECK(!cs.pivot.defined() && cs.sums.dim() == 3 && cs.rows_per_part > 0,
              "conv_bn_relu (CUDA, internal): expected the CUDA statistics partials");
  const int64_t nparts = cs.sums.size(1), K = cs.sums.size(2);
  const at::Tensor g = f32(gamma), b = f32(beta);
  const auto opts = cs.sums.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({K}, opts), var = at::empty({K}, opts), ss = at::empty({2, K}, opts);
  const StatLayout layout{nparts, cs.rows_per_part, static_cast<int64_t>(count)};
  bn_forward_finalize_cuda(cs.sums.const_data_ptr<double>(), layout, g.const_data_ptr<float>(),
                           b.const_data_ptr<float>(), eps, mean.data_ptr<float>(), var.data_ptr<float>(),
                           ss.data_ptr<float>(), K, current_stream());
  return {mean, var, ss[0], ss[1]};
}

std::pair<at::Tensor, at::Tensor> bn_scale_shift_cuda(const at::Tensor& mean, const at::Tensor& var,
                                                      const at::Tensor& gamma, const at::Tensor& beta, double eps) {
  const c10::cuda::CUDAGuard guard(mean.device());
  const int64_t K = mean.size(0);
  const at::Tensor m = f32(mean), v = f32(var), g = f32(gamma), b = f32(beta);
  at::Tensor ss = at::empty({2, K}, m.options());
  bn_scale_shift_cuda(m.const_data_ptr<float>(), v.const_data_ptr<float>(), g.const_data_ptr<float>(),
                      b.const_data_ptr<float>(), eps, ss.data_ptr<float>(), K, current_stream());
  return {ss[0], ss[1]};
}

BnBackward bn_backward_finalize_cuda(const at::Tensor& sums, double count, const at::Tensor& mean,
                                     const at::Tensor& var, const at::Tensor& gamma, double eps) {
  const c10::cuda::CUDAGuard guard(sums.device());
  const int64_t K = sums.size(1);
  const at::Tensor m = f32(mean), v = f32(var), g = f32(gamma);
  const auto opts = m.options();
  at::Tensor kpq = at::empty({3, K}, opts), dgamma = at::empty({K}, opts), dbeta = at::empty({K}, opts);
  bn_backward_finalize_cuda(sums.const_data_ptr<double>(), count, m.const_data_ptr<float>(),
                            v.const_data_ptr<float>(), g.const_data_ptr<float>(), eps, kpq.data_ptr<float>(),
                            dgamma.data_ptr<float>(), dbeta.data_ptr<float>(), K, current_stream());
  return {kpq[0], kpq[1], kpq[2], dgamma, dbeta};
}

void update_running_stats_cuda(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                               const at::Tensor& var, double momentum, double unbias) {
  const c10::cuda::CUDAGuard guard(mean.device());
  TORCH_CHECK(running_mean.scalar_type() == running_var.scalar_type(),
              "bn_update_running_stats (CUDA): running_mean and running_var must have one dtype, got ",
              running_mean.scalar_type(), " and ", running_var.scalar_type());
  const at::Tensor m = f32(mean), v = f32(var);
  update_running_stats_cuda(cuda_dtype_of(running_mean, "bn_update_running_stats (CUDA): running_mean"),
                            running_mean.data_ptr(), running_var.data_ptr(), m.const_data_ptr<float>(),
                            v.const_data_ptr<float>(), momentum, unbias, mean.numel(), current_stream());
}

std::tuple<at::Tensor, at::Tensor> bn_relu_conv_backward_cuda(const at::Tensor& dy, const at::Tensor& src,
                                                              const at::Tensor& ms, const at::Tensor& mt,
                                                              const at::Tensor& k, const at::Tensor& p,
                                                              const at::Tensor& q, bool relu, bool use_pq,
                                                              const at::Tensor& x, const at::Tensor& w,
                                                              const ConvParams& params) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dyc = aligned(dy.contiguous(kCL)), srcc = aligned(src.contiguous(kCL)),
                   xc = aligned(x.contiguous(kCL)), wc = aligned(w.contiguous(kCL));
  const at::Tensor msf = f32(ms), mtf = f32(mt), kf = f32(k), pf = f32(p), qf = f32(q);
  const ConvShape s = shape_of(xc, wc, params);
  const DType dt = dtype_of(xc);
  at::Tensor dx = at::empty_like(xc, xc.options().memory_format(kCL));
  // Both paths write every element of dw (no atomics, no zeroing needed).
  at::Tensor dw = at::empty({s.K, s.R, s.S, s.C / s.groups}, x.options().dtype(at::kFloat));
  if (use_fast(dt, s)) {
    // g = BN+ReLU backward of dy is formed inside both gradient kernels' loaders; it is never stored.
    const BnReluGrad bn{srcc.const_data_ptr(), msf.const_data_ptr<float>(), mtf.const_data_ptr<float>(),
                        kf.const_data_ptr<float>(), pf.const_data_ptr<float>(), qf.const_data_ptr<float>(), relu,
                        use_pq};
    // Transposed weights for the data gradient: [G, K/G, C/G, R, S] -> [G, C/G, R, S, K/G] = [C, R, S, K/G].
    const int64_t G = s.groups;
    const at::Tensor w_t = w.reshape({G, s.K / G, s.C / G, s.R, s.S}).permute({0, 2, 3, 4, 1}).contiguous();
    conv_dgrad_fast_cuda(dt, dyc.const_data_ptr(), bn, w_t.const_data_ptr(), dx.data_ptr(), s, current_stream());
    const int64_t ws = conv_wgrad_fast_workspace(s);
    at::Tensor workspace = ws > 0 ? at::empty({ws}, x.options().dtype(at::kFloat)) : at::Tensor();
    conv_wgrad_fast_cuda(dt, dyc.const_data_ptr(), bn, xc.const_data_ptr(), dw.data_ptr<float>(),
                         ws > 0 ? workspace.data_ptr<float>() : nullptr, s, current_stream());
  } else {
    // The reference path: the separate BN+ReLU backward pass stores g, the simple kernels read it.
    at::Tensor g = at::empty_like(srcc);
    bn_relu_backward_apply_cuda(dt, dyc.const_data_ptr(), srcc.const_data_ptr(), msf.const_data_ptr<float>(),
                                mtf.const_data_ptr<float>(), kf.const_data_ptr<float>(), pf.const_data_ptr<float>(),
                                qf.const_data_ptr<float>(), relu, use_pq, g.data_ptr(), srcc.numel() / s.K, s.K,
                                current_stream());
    conv_dgrad_simple_cuda(dt, g.const_data_ptr(), wc.const_data_ptr(), dx.data_ptr(), s, current_stream());
    conv_wgrad_simple_cuda(dt, g.const_data_ptr(), xc.const_data_ptr(), dw.data_ptr<float>(), s, current_stream());
  }
  // KRSC float32 -> [K, C/groups, R, S] in the weight's dtype and memory format.
  at::Tensor dw_out = dw.permute({0, 3, 1, 2}).to(w.scalar_type()).contiguous(w.suggest_memory_format());
  return {dx, dw_out};
}

void scale_shift_relu_cuda_t(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                             const at::Tensor* residual, at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(z.device());
  check_rows(z, "z");
  check_rows(y, "y");
  if (residual != nullptr) check_rows(*residual, "residual");
  const int64_t K = z.size(1);
  const at::Tensor s = f32(scale), t = f32(shift);
  scale_shift_relu_cuda(dtype_of(z), z.const_data_ptr(), s.const_data_ptr<float>(), t.const_data_ptr<float>(),
                        residual != nullptr ? residual->const_data_ptr() : nullptr, relu, y.data_ptr(),
                        z.numel() / K, K, current_stream());
}

void bn_relu_backward_sums_cuda_t(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                  const at::Tensor& mt, const at::Tensor& center, bool relu, at::Tensor& sums) {
  const c10::cuda::CUDAGuard guard(dy.device());
  check_rows(dy, "grad_y");
  check_rows(src, "z");
  const int64_t K = src.size(1), rows = src.numel() / K;
  TORCH_CHECK(sums.is_contiguous() && sums.numel() == 2 * K && sums.scalar_type() == at::kDouble,
              "conv_bn_relu (CUDA, internal): sums must be a contiguous double [2, K]");
  at::Tensor workspace = at::empty({backward_sums_workspace(rows, K)}, sums.options());
  bn_relu_backward_sums_cuda(dtype_of(src), dy.const_data_ptr(), src.const_data_ptr(), ms.const_data_ptr<float>(),
                             mt.const_data_ptr<float>(), center.const_data_ptr<float>(), relu,
                             sums.data_ptr<double>(), workspace.data_ptr<double>(), rows, K, current_stream());
}

}  // namespace wslfast::conv_bn
#endif  // WSLFAST_WITH_CUDA
