// What the conv+BN drivers share: the launchers of csrc/conv_bn/conv_bn_cuda.h (each called in one place,
// here), shapes, seeded tensors and the float64 references of the convolution and its gradients.
#pragma once
#include <algorithm>
#include <cmath>

#include "conv_bn/conv_bn_cuda.h"
#include "conv_bn/conv_bn_finalize.h"
#include "conv_bn/conv_bn_mma_plan.h"
#include "conv_bn/conv_bn_stats.h"
#include "harness.h"

namespace convdrv {

using namespace harness;
namespace cb = wslfast::conv_bn;
using wslfast::DType;

// ---- the launchers ----
inline cb::StatLayout fast_stat_layout(const cb::ConvShape& s) { return cb::conv_fwd_fast_stat_layout(s); }
inline cb::StatLayout simple_stat_layout(const cb::ConvShape& s) { return cb::conv_fwd_simple_stat_layout(s); }
inline bool fast_supported(DType dt, const cb::ConvShape& s) { return cb::conv_fwd_fast_supported(dt, s); }
inline void fwd_fast(DType dt, const void* x, const void* w, const float* bias, bool relu, void* z, double* parts,
                     const cb::ConvShape& s) {
  cb::conv_fwd_fast_cuda(dt, x, w, bias, relu, z, parts, s, nullptr);
  device_sync("conv_fwd_fast");
}
inline void fwd_simple(DType dt, const void* x, const void* w, const float* bias, bool relu, void* z, double* parts,
                       const cb::ConvShape& s) {
  cb::conv_fwd_simple_cuda(dt, x, w, bias, relu, z, parts, s, nullptr);
  device_sync("conv_fwd_simple");
}
inline void dgrad_fast(DType dt, const void* dy, const cb::BnReluGrad& bn, const void* w_t, void* dx,
                       const cb::ConvShape& s) {
  cb::conv_dgrad_fast_cuda(dt, dy, bn, w_t, dx, s, nullptr);
  device_sync("conv_dgrad_fast");
}
// limit: the weight gradient's workspace bound in bytes (the same for both calls)
inline int64_t wgrad_fast_workspace(const cb::ConvShape& s, int64_t limit = cb::kWgradWorkspaceLimitBytes) {
  return cb::conv_wgrad_fast_workspace(s, limit);
}
inline void wgrad_fast(DType dt, const void* dy, const cb::BnReluGrad& bn, const void* x, float* dw, float* ws,
                       const cb::ConvShape& s, int64_t limit = cb::kWgradWorkspaceLimitBytes) {
  cb::conv_wgrad_fast_cuda(dt, dy, bn, x, dw, ws, s, nullptr, limit);
  device_sync("conv_wgrad_fast");
}
inline void dgrad_simple(DType dt, const void* g, const void* w, void* dx, const cb::ConvShape& s) {
  cb::conv_dgrad_simple_cuda(dt, g, w, dx, s, nullptr);
  device_sync("conv_dgrad_simple");
}
inline void wgrad_simple(DType dt, const void* g, const void* x, float* dw, const cb::ConvShape& s) {
  cb::conv_wgrad_simple_cuda(dt, g, x, dw, s, nullptr);
  device_sync("conv_wgrad_simple");
}
inline void scale_shift_relu(DType dt, const void* z, const float* scale, const float* shift, const void* res,
                             bool relu, void* y, int64_t rows, int64_t K) {
  cb::scale_shift_relu_cuda(dt, z, scale, shift, res, relu, y, rows, K, nullptr);
  device_sync("scale_shift_relu");
}
inline int64_t sums_workspace(int64_t rows, int64_t K) { return cb::backward_sums_workspace(rows, K); }
inline void backward_sums(DType dt, const void* dy, const void* src, const float* ms, const float* mt,
                          const float* center, bool relu, double* sums, double* ws, int64_t rows, int64_t K) {
  cb::bn_relu_backward_sums_cuda(dt, dy, src, ms, mt, center, relu, sums, ws, rows, K, nullptr);
  device_sync("bn_relu_backward_sums");
}
inline void backward_apply(DType dt, const void* dy, const void* src, const float* ms, const float* mt,
                           const float* k, const float* p, const float* q, bool relu, bool use_pq, void* g,
                           int64_t rows, int64_t K) {
  cb::bn_relu_backward_apply_cuda(dt, dy, src, ms, mt, k, p, q, relu, use_pq, g, rows, K, nullptr);
  device_sync("bn_relu_backward_apply");
}
inline void forward_finalize(const double* parts, cb::StatLayout L, const float* gamma, const float* beta, double eps,
                             float* mean, float* var, float* ss, int64_t K) {
  cb::bn_forward_finalize_cuda(parts, L, gamma, beta, eps, mean, var, ss, K, nullptr);
  device_sync("bn_forward_finalize");
}
inline void scale_shift(const float* mean, const float* var, const float* gamma, const float* beta, double eps,
                        float* ss, int64_t K) {
  cb::bn_scale_shift_cuda(mean, var, gamma, beta, eps, ss, K, nullptr);
  device_sync("bn_scale_shift");
}
inline void backward_finalize(const double* sums, double count, const float* mean, const float* var,
                              const float* gamma, double eps, float* kpq, float* dgamma, float* dbeta, int64_t K) {
  cb::bn_backward_finalize_cuda(sums, count, mean, var, gamma, eps, kpq, dgamma, dbeta, K, nullptr);
  device_sync("bn_backward_finalize");
}
inline void running_stats(DType dt, void* rm, void* rv, const float* mean, const float* var, double momentum,
                          double unbias, int64_t K) {
  cb::update_running_stats_cuda(dt, rm, rv, mean, var, momentum, unbias, K, nullptr);
  device_sync("update_running_stats");
}

// ---- shapes ----
struct Sh {
  int64_t N, C, H, W, K, G, R, S, stride, pad;
};
inline cb::ConvShape shape_of(const Sh& s) {
  cb::ConvShape c{};
  c.N = s.N, c.H = s.H, c.W = s.W, c.C = s.C, c.K = s.K, c.R = s.R, c.S = s.S;
  c.P = (s.H + 2 * s.pad - s.R) / s.stride + 1;
  c.Q = (s.W + 2 * s.pad - s.S) / s.stride + 1;
  c.stride = s.stride, c.pad = s.pad, c.groups = s.G;
  return c;
}
inline std::string tag_of(const char* dtype, const Sh& s) {
  return fmt("%s N%ld C%ld H%ld W%ld K%ld G%ld R%ld S%ld stride%ld pad%ld", dtype, s.N, s.C, s.H, s.W, s.K, s.G, s.R,
             s.S, s.stride, s.pad);
}
inline int64_t rows_of(const cb::ConvShape& s) { return s.N * s.P * s.Q; }

// Values in storage T and, beside them, as the floats a kernel reads.
template <typename T>
struct Tensor {
  std::vector<T> s;
  std::vector<float> f;
  template <typename Gen>
  static Tensor make(size_t n, Gen&& gen) {
    Tensor t;
    t.s.resize(n);
    t.f.resize(n);
    for (size_t i = 0; i < n; ++i) {
      t.s[i] = from_f<T>(static_cast<float>(gen(i)));
      t.f[i] = to_f<T>(t.s[i]);
    }
    return t;
  }
};
// The operand values the tensor cores multiply: TF32-rounded for float32 storage, else as stored.
template <typename T>
std::vector<float> operand(const std::vector<float>& v, bool tensor_cores) {
  std::vector<float> o = v;
  if (std::is_same_v<T, float> && tensor_cores)
    for (auto& x : o) x = tf32(x);
  return o;
}

// Error of an fp32 accumulation over n products (of operands the products of which are exact), relative to
// the sum of their magnitudes: a few ulps per add, the hardware's order unknown. Broken indexing or a lost
// term moves a value by a whole term, far more.
inline double acc_rel(double n_terms) { return kU32 * (8.0 + n_terms / 8.0); }

// z[m, k] = sum over the group's (r, s, c) of x * w, and the sum of the terms' magnitudes, in float64.
inline void conv_ref(const cb::ConvShape& s, const std::vector<float>& x, const std::vector<float>& w,
                     std::vector<double>& z, std::vector<double>& zabs) {
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups, M = rows_of(s);
  z.assign(static_cast<size_t>(M * s.K), 0.0);
  zabs.assign(z.size(), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          double acc = 0, ab = 0;
          const int64_t g = k / kg;
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t h = p * s.stride - s.pad + r, wi = q * s.stride - s.pad + t;
              if (h < 0 || h >= s.H || wi < 0 || wi >= s.W) continue;
              for (int64_t c = 0; c < cg; ++c) {
                const double v = double(x[((n * s.H + h) * s.W + wi) * s.C + g * cg + c]) *
                                 w[((k * s.R + r) * s.S + t) * cg + c];
                acc += v;
                ab += std::fabs(v);
              }
            }
          const int64_t m = (n * s.P + p) * s.Q + q;
          z[m * s.K + k] = acc;
          zabs[m * s.K + k] = ab;
        }
}

// dx = the transposed convolution of g with w; dw[k, r, s, c] = sum over m of g[m, k] x[patch]; float64, with
// the sums of the terms' magnitudes.
inline void grads_ref(const cb::ConvShape& s, const std::vector<float>& g, const std::vector<float>& w,
                      const std::vector<float>& x, std::vector<double>& dx, std::vector<double>& dx_abs,
                      std::vector<double>& dw, std::vector<double>& dw_abs) {
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups;
  dx.assign(static_cast<size_t>(s.N * s.H * s.W * s.C), 0.0);
  dx_abs.assign(dx.size(), 0.0);
  dw.assign(static_cast<size_t>(s.K * s.R * s.S * cg), 0.0);
  dw_abs.assign(dw.size(), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t m = (n * s.P + p) * s.Q + q, gr = k / kg;
          const double gv = g[m * s.K + k];
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t h = p * s.stride - s.pad + r, wi = q * s.stride - s.pad + t;
              if (h < 0 || h >= s.H || wi < 0 || wi >= s.W) continue;
              for (int64_t c = 0; c < cg; ++c) {
                const int64_t xi = ((n * s.H + h) * s.W + wi) * s.C + gr * cg + c;
                const int64_t wi2 = ((k * s.R + r) * s.S + t) * cg + c;
                dx[xi] += gv * w[wi2];
                dx_abs[xi] += std::fabs(gv * w[wi2]);
                dw[wi2] += gv * x[xi];
                dw_abs[wi2] += std::fabs(gv * x[xi]);
              }
            }
        }
}

// The BN+ReLU backward of one element as conv_bn_cuda.h specifies it (BnReluGrad): the forward's mask
// relu(fma(src, ms, mt)), then fma(dy, k, fma(src, p, q)), or dy * k without p, q; the kernels store it
// (or feed it to the tensor cores) rounded to the storage type.
inline float bn_grad(float dy, float src, float ms, float mt, float k, float p, float q, bool relu, bool use_pq) {
  if (relu && !(std::fmaf(src, ms, mt) > 0.f)) dy = 0.f;
  if (!use_pq) return dy * k;
  return std::fmaf(dy, k, std::fmaf(src, p, q));
}

// Per-channel BN backward coefficients and the forward's scale/shift for a backward test: random, about
// half of the elements masked.
struct Coefs {
  std::vector<float> ms, mt, k, p, q;
};
inline Coefs random_coefs(int64_t K, Rng& rng) {
  Coefs c;
  for (int64_t i = 0; i < K; ++i) {
    c.ms.push_back(static_cast<float>(rng.uniform(0.5, 1.5)));
    c.mt.push_back(static_cast<float>(rng.uniform(-0.3, 0.3)));
    c.k.push_back(static_cast<float>(rng.uniform(0.5, 1.5)));
    c.p.push_back(static_cast<float>(rng.uniform(-0.2, 0.2)));
    c.q.push_back(static_cast<float>(rng.uniform(-0.2, 0.2)));
  }
  return c;
}

// Transposed weights for the data gradient: w_t[g * cg + c][r][s][kk] = w[g * kg + kk][r][s][c].
template <typename T>
std::vector<T> transpose_weights(const cb::ConvShape& s, const std::vector<T>& w) {
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups;
  std::vector<T> wt(w.size());
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t t = 0; t < s.S; ++t)
          for (int64_t kk = 0; kk < kg; ++kk)
            wt[(((g * cg + c) * s.R + r) * s.S + t) * kg + kk] = w[(((g * kg + kk) * s.R + r) * s.S + t) * cg + c];
  return wt;
}

// Mean and M2 of values[rows r0..r1) of channel k (row stride K), float64 two-pass.
inline void moments(const std::vector<double>& v, int64_t K, int64_t k, int64_t r0, int64_t r1, double& mean, double& m2) {
  mean = 0.0, m2 = 0.0;
  for (int64_t r = r0; r < r1; ++r) mean += v[r * K + k];
  mean /= double(r1 - r0);
  for (int64_t r = r0; r < r1; ++r) m2 += (v[r * K + k] - mean) * (v[r * K + k] - mean);
}

// What the forward finalize must give from statistics partials, bit for bit: the partials merged in the
// kernel's order (merge_parts_tree: lane slices, then the halving tree of merge_geometry's lanes) and
// bn_forward_one on the result (conv_bn_cuda_finalize.cu). Compared only in emulation: the host and the
// emulated kernel share their arithmetic exactly, while nvcc may fuse the merge's multiply-adds on a GPU.
inline void check_finalize_order(const std::string& tag, const double* parts, cb::StatLayout L,
                                 const std::vector<float>& gamma, const std::vector<float>& beta, double eps,
                                 const std::vector<double>& mean, const std::vector<double>& var,
                                 const std::vector<double>& ss) {
  if (!emulated()) return;
  const int64_t K = static_cast<int64_t>(gamma.size());
  const int lanes = cb::mma::merge_geometry(K, L.nparts).lanes;
  std::vector<double> wm(K), wv(K), wss(2 * K);
  for (int64_t k = 0; k < K; ++k) {
    const cb::MeanM2 st = cb::merge_parts_tree(parts, L.nparts, K, k, L.rows_per_part, L.rows, lanes);
    float m, v;
    double sc, sf;
    cb::bn_forward_one<float>(0.0, st.m2, st.n, st.mean, gamma[k], beta[k], eps, m, v, sc, sf);
    wm[k] = m, wv[k] = v, wss[k] = static_cast<float>(sc), wss[K + k] = static_cast<float>(sf);
  }
  compare_exact(tag + " finalize mean (merge_parts_tree's order)", mean, wm);
  compare_exact(tag + " finalize var (merge_parts_tree's order)", var, wv);
  compare_exact(tag + " finalize scale/shift (merge_parts_tree's order)", ss, wss);
}

}  // namespace convdrv
