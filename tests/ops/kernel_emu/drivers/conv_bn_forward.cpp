// The conv+BN forward kernels (csrc/conv_bn/conv_bn_cuda_mma.cu, conv_bn_cuda.cu, conv_bn_cuda_finalize.cu)
// against float64 references:
//   conv_fast_forward  conv_gemm_kernel<.., kDgrad = false>: z (bf16/fp16, TF32 for float32) over odd shapes,
//                      groups of 4 and 8 channels, 16/32/64-column tiles, k tails, strides 1-3; the
//                      per-part (mean, M2) statistics epilogue (at mean/std up to 10^4, constant and NaN
//                      channels), then the finalize; the eval epilogue (bias + ReLU); bit-for-bit repeats;
//   conv_simple        conv_fwd_simple_kernel + stat_parts_kernel, conv_dgrad_simple_kernel,
//                      conv_wgrad_simple_kernel;
//   bn_finalize        forward_finalize_kernel (parts merged in 16 slices), scale_shift_kernel,
//                      backward_finalize_kernel, running_stats_kernel.
#include "conv_bn_common.h"

using namespace convdrv;

namespace {

enum class Data { kNormal, kOffset, kExact, kExactTight };

// x, w for a case: normal (weights ~ 1 / sqrt(fan-in)), normal around 30 (large BN mean), or exact: every
// product and partial sum is exactly representable in fp32 (x in k/8, w in j/8, input channel 0 = 1 with
// weight `ratio`), so the fp32 conv values are exact and the statistics can be held to 1e-6 at
// mean/std = ratio; the last output channel is constant (variance exactly 0). kExactTight: weights 16x
// smaller (j/128), so std ~ 0.1 and the epilogue's correction for float(mean) (n (mean - float(mean))^2)
// is ~1e-4 of M2 at mean 10^4, well above the tolerance.
template <typename T>
void make_inputs(const cb::ConvShape& s, Data kind, double ratio, Rng& rng, Tensor<T>& x, Tensor<T>& w) {
  const int64_t cg = s.C / s.groups, fan = s.R * s.S * cg;
  const size_t nx = static_cast<size_t>(s.N * s.H * s.W * s.C), nw = static_cast<size_t>(s.K * fan);
  if (kind == Data::kExact || kind == Data::kExactTight) {
    const double scale = kind == Data::kExactTight ? 1.0 / 16 : 1.0;
    x = Tensor<T>::make(nx, [&](size_t i) { return i % s.C == 0 ? 1.0 : (rng.below(33) - 16) / 8.0; });
    w = Tensor<T>::make(nw, [&](size_t i) {
      const int64_t k = static_cast<int64_t>(i) / fan, c = static_cast<int64_t>(i) % cg;
      const int64_t tap = (static_cast<int64_t>(i) % fan) / cg;
      if (c == 0) return tap == 0 ? ratio : 0.0;
      return k == s.K - 1 ? 0.0 : (rng.below(9) - 4) / 8.0 * scale;
    });
    return;
  }
  const double off = kind == Data::kOffset ? 30.0 : 0.0;
  x = Tensor<T>::make(nx, [&](size_t) { return off + rng.normal(); });
  w = Tensor<T>::make(nw, [&](size_t) { return rng.normal() / std::sqrt(double(fan)) + (off ? 0.05 : 0.0); });
}

// Mean and M2 of values[rows r0..r1) of channel k (row stride K), float64 two-pass.
void moments(const std::vector<double>& v, int64_t K, int64_t k, int64_t r0, int64_t r1, double& mean, double& m2) {
  mean = 0.0, m2 = 0.0;
  for (int64_t r = r0; r < r1; ++r) mean += v[r * K + k];
  mean /= double(r1 - r0);
  for (int64_t r = r0; r < r1; ++r) m2 += (v[r * K + k] - mean) * (v[r * K + k] - mean);
}

// A channel with NaN values has a NaN mean (and so NaN scale/shift and output), but its variance comes back
// 0: bn_forward_one clamps with `v > 0 ? v : 0`, which NaN fails. Accepted here as the code stands (the
// running variance then takes a finite value from a NaN batch); anything else but NaN is an error.
void accept_nan_variance(const std::string& tag, const std::vector<double>& got, std::vector<double>& want) {
  for (size_t k = 0; k < want.size(); ++k)
    if (std::isnan(want[k])) {
      expect(std::isnan(got[k]) || got[k] == 0.0, "%s: NaN channel %zu has variance %g", tag.c_str(), k, got[k]);
      want[k] = got[k];
    }
}

// |statistic of perturbed values - statistic of exact ones| when each value may be off by e: the mean by e,
// M2 by 2 sqrt(n M2) e + n e^2 (Cauchy-Schwarz), plus the merge's own rounding.
double m2_tol(double n, double m2, double e) { return 2 * std::sqrt(n * m2) * e + n * e * e + 2e-6 * m2 + 1e-30; }

template <typename T>
void fast_forward_case(const Sh& sh, Data kind, double ratio, Rng& rng, bool nan_pixel = false) {
  const cb::ConvShape s = shape_of(sh);
  const int64_t M = rows_of(s), K = s.K, Kg = s.R * s.S * (s.C / s.groups);
  const bool exact = kind == Data::kExact || kind == Data::kExactTight;
  std::string tag = tag_of(name_of<T>(), sh) + (exact ? fmt(" exact data, mean %g%s", ratio,
                                                            kind == Data::kExactTight ? ", std ~0.1" : "")
                                               : kind == Data::kOffset ? " mean 30" : "");
  if (nan_pixel) tag += " NaN pixel";
  Tensor<T> x, w;
  make_inputs(s, kind, ratio, rng, x, w);
  if (nan_pixel) {
    x.s[5 * s.C + 3] = from_f<T>(NAN);
    x.f[5 * s.C + 3] = NAN;
  }
  std::vector<double> zr, zabs;
  conv_ref(s, operand<T>(x.f, true), operand<T>(w.f, true), zr, zabs);
  const double acc = exact ? 0.0 : acc_rel(double(Kg));
  expect(fast_supported(dtype_of<T>(), s), "%s: conv_fwd_fast_supported says no", tag.c_str());

  const cb::StatLayout L = fast_stat_layout(s);
  expect(L.rows == M && L.rows_per_part > 0 && L.nparts * L.rows_per_part >= M &&
             (L.nparts - 1) * L.rows_per_part < M,
         "%s: statistics layout (%ld parts of %ld rows) does not cover the %ld rows once", tag.c_str(), L.nparts,
         L.rows_per_part, M);
  Dev<T> dx(x.s), dw(w.s), z(static_cast<size_t>(M * K));
  Dev<double> parts(static_cast<size_t>(2 * L.nparts * K));
  fwd_fast(dtype_of<T>(), dx.p, dw.p, nullptr, false, z.p, parts.p, s);
  const std::vector<double> zg = as_double(z.get()), pg = parts.get();
  std::vector<double> tol(zr.size());
  for (size_t i = 0; i < zr.size(); ++i) tol[i] = unit_roundoff<T>() * std::fabs(zr[i]) + acc * zabs[i];
  compare(tag + " z", zg, zr, tol);

  // The epilogue's per-part (mean, M2) of the fp32 values (before rounding to storage).
  std::vector<double> pw(pg.size()), pt(pg.size());
  for (int64_t p = 0; p < L.nparts; ++p) {
    const int64_t r0 = p * L.rows_per_part, r1 = std::min(M, r0 + L.rows_per_part);
    for (int64_t k = 0; k < K; ++k) {
      double mean, m2, e = 0.0;
      moments(zr, K, k, r0, r1, mean, m2);
      for (int64_t r = r0; r < r1; ++r) e = std::max(e, acc * zabs[r * K + k]);
      const size_t im = static_cast<size_t>(p * K + k), i2 = static_cast<size_t>((L.nparts + p) * K + k);
      pw[im] = mean, pt[im] = e + 1e-12 * std::fabs(mean);
      pw[i2] = m2, pt[i2] = m2_tol(double(r1 - r0), m2, e);
    }
  }
  compare(tag + " statistics partials (mean, M2 per part)", pg, pw, pt);

  // The finalize over those partials.
  std::vector<float> gamma(K), beta(K);
  for (int64_t k = 0; k < K; ++k) gamma[k] = float(1.0 + 0.1 * rng.normal()), beta[k] = float(0.1 * rng.normal());
  const double eps = 1e-5;
  Dev<float> dgam(gamma), dbet(beta), mean(K), var(K), ss(2 * K);
  forward_finalize(parts.p, L, dgam.p, dbet.p, eps, mean.p, var.p, ss.p, K);
  std::vector<double> mw(K), mt(K), vw(K), vt(K);
  for (int64_t k = 0; k < K; ++k) {
    double m, m2, e = 0.0;
    moments(zr, K, k, 0, M, m, m2);
    for (int64_t r = 0; r < M; ++r) e = std::max(e, acc * zabs[r * K + k]);
    mw[k] = m, mt[k] = e + kU32 * std::fabs(m);
    vw[k] = m2 / double(M), vt[k] = m2_tol(double(M), m2, e) / double(M) + kU32 * m2 / double(M);
  }
  const std::vector<double> mg = as_double(mean.get()), vg = as_double(var.get());
  accept_nan_variance(tag, vg, vw);
  compare(tag + " finalize mean", mg, mw, mt);
  compare(tag + " finalize var", vg, vw, vt);
  if (exact && !nan_pixel)
    expect(vg[K - 1] == 0.0, "%s: constant channel has variance %g, want exactly 0", tag.c_str(), vg[K - 1]);
  const std::vector<double> sg = as_double(ss.get());
  std::vector<double> sw(2 * K), st(2 * K);
  for (int64_t k = 0; k < K; ++k) {  // from the stored (rounded) mean and var, as the backward recomputes it
    const double sc = gamma[k] / std::sqrt(vg[k] + eps), sf = beta[k] - mg[k] * sc;
    sw[k] = sc, st[k] = 4 * kU32 * std::fabs(sc);
    sw[K + k] = sf, st[K + k] = 4 * kU32 * (std::fabs(beta[k]) + std::fabs(mg[k] * sc));
  }
  compare(tag + " finalize scale/shift", sg, sw, st);

  // Bit for bit the same on a second run (no atomics anywhere).
  Dev<T> z2(static_cast<size_t>(M * K));
  Dev<double> parts2(static_cast<size_t>(2 * L.nparts * K));
  fwd_fast(dtype_of<T>(), dx.p, dw.p, nullptr, false, z2.p, parts2.p, s);
  compare_exact(tag + " repeat z", as_double(z2.get()), zg);
  compare_exact(tag + " repeat partials", parts2.get(), pg);

  // Eval: bias and ReLU in the epilogue, no statistics.
  std::vector<float> bias(K);
  for (auto& b : bias) b = float(0.3 * rng.normal());
  Dev<float> db(bias);
  Dev<T> ze(static_cast<size_t>(M * K));
  fwd_fast(dtype_of<T>(), dx.p, dw.p, db.p, true, ze.p, nullptr, s);
  std::vector<double> ew(zr.size()), et(zr.size());
  for (size_t i = 0; i < zr.size(); ++i) {
    ew[i] = std::fmax(zr[i] + bias[i % K], 0.0);  // fmaxf: ReLU of NaN is 0
    et[i] = unit_roundoff<T>() * std::fabs(ew[i]) + acc * (zabs[i] + std::fabs(bias[i % K])) +
            kU32 * std::fabs(bias[i % K]);
  }
  compare(tag + " eval z (bias + ReLU)", as_double(ze.get()), ew, et);
}

// N, C, H, W, K, groups, R, S, stride, pad: 4- and 8-channel groups (4- and 8-wide loads), 16/32/64-column
// tiles, several row and column blocks, k tails, strides 1-3, a single output pixel.
const std::vector<Sh> kFastShapes = {
    {2, 16, 7, 9, 24, 2, 3, 3, 2, 1},    {3, 16, 11, 11, 16, 2, 3, 3, 1, 1}, {1, 8, 9, 10, 80, 1, 2, 3, 3, 2},
    {2, 128, 5, 5, 128, 32, 3, 3, 1, 1}, {1, 72, 6, 6, 40, 1, 3, 3, 1, 1},   {2, 16, 5, 6, 32, 1, 1, 1, 2, 0},
    {1, 8, 1, 1, 8, 1, 1, 1, 1, 0},      {2, 12, 6, 7, 20, 1, 3, 3, 2, 1},
};

HARNESS_FAMILY(conv_fast_forward, "conv_fast_forward", "conv_gemm_kernel (forward, statistics, eval), finalize")
void conv_fast_forward() {
  Rng rng(42);
  const size_t n = options().quick ? 2 : kFastShapes.size();
  for (size_t i = 0; i < n; ++i) {
    fast_forward_case<__nv_bfloat16>(kFastShapes[i], Data::kNormal, 0, rng);
    fast_forward_case<float>(kFastShapes[i], Data::kNormal, 0, rng);
    if (!options().quick) fast_forward_case<__half>(kFastShapes[i], Data::kNormal, 0, rng);
  }
  if (options().quick) return;
  fast_forward_case<__nv_bfloat16>({2, 16, 9, 9, 16, 1, 3, 3, 1, 1}, Data::kOffset, 0, rng);
  fast_forward_case<float>({2, 16, 9, 9, 16, 1, 3, 3, 1, 1}, Data::kOffset, 0, rng);
  // The statistics at large mean / std, on exact data: rows = 129 (a one-row last part), 196, 3136 (25 parts:
  // every one of the finalize's 16 slices merges two)
  for (double ratio : {1.0, 100.0, 1000.0, 10000.0}) {
    fast_forward_case<__nv_bfloat16>({1, 16, 3, 43, 16, 1, 1, 1, 1, 0}, Data::kExact, ratio, rng);
    fast_forward_case<float>({4, 16, 7, 7, 16, 1, 1, 1, 1, 0}, Data::kExact, ratio, rng);
  }
  fast_forward_case<__nv_bfloat16>({2, 16, 9, 11, 16, 1, 1, 1, 1, 0}, Data::kExactTight, 10000.0, rng);
  fast_forward_case<float>({2, 16, 9, 11, 16, 1, 1, 1, 1, 0}, Data::kExactTight, 10000.0, rng);
  fast_forward_case<__half>({4, 16, 28, 28, 16, 1, 1, 1, 1, 0}, Data::kExact, 1000.0, rng);
  fast_forward_case<__nv_bfloat16>({4, 16, 28, 28, 16, 1, 1, 1, 1, 0}, Data::kExact, 10000.0, rng);
  fast_forward_case<__nv_bfloat16>({1, 16, 3, 43, 16, 1, 1, 1, 1, 0}, Data::kExact, 1000.0, rng, true);
  fast_forward_case<float>({2, 16, 10, 10, 16, 1, 1, 1, 1, 0}, Data::kExact, 1000.0, rng, true);

  // What the fast path takes, and what it refuses.
  expect(!fast_supported(DType::kBFloat16, shape_of({1, 6, 4, 4, 8, 1, 1, 1, 1, 0})), "6 input channels accepted");
  expect(!fast_supported(DType::kBFloat16, shape_of({1, 8, 4, 4, 6, 1, 1, 1, 1, 0})), "6 output channels accepted");
  expect(!fast_supported(DType::kFloat64, shape_of({1, 8, 4, 4, 8, 1, 1, 1, 1, 0})), "float64 accepted");
  const cb::ConvShape s = shape_of({1, 8, 4, 4, 8, 1, 1, 1, 1, 0});
  Dev<__nv_bfloat16> x(128), w(64), z(128);
  Dev<float> bias(8);
  Dev<double> parts(16);
  expect_throws("statistics with a bias", [&] { fwd_fast(DType::kBFloat16, x.p, w.p, bias.p, false, z.p, parts.p, s); });
  expect_throws("float64", [&] { fwd_fast(DType::kFloat64, x.p, w.p, nullptr, false, z.p, nullptr, s); });
}

// ---- the simple kernels ----
template <typename T>
void simple_case(const Sh& sh, Rng& rng, Data kind = Data::kNormal, double ratio = 0) {
  const cb::ConvShape s = shape_of(sh);
  const int64_t M = rows_of(s), K = s.K, cg = s.C / s.groups, Kg = s.R * s.S * cg;
  const std::string tag = tag_of(name_of<T>(), sh) + " simple" +
                          (kind == Data::kExact ? fmt(" mean/std ~%g", ratio) : kind == Data::kOffset ? " mean 30" : "");
  Tensor<T> x, w;
  make_inputs(s, kind, ratio, rng, x, w);
  std::vector<double> zr, zabs;
  conv_ref(s, x.f, w.f, zr, zabs);
  const double acc = kU32 * (8.0 + Kg);  // one fp32 FMA after another
  const cb::StatLayout L = simple_stat_layout(s);
  expect(L.rows == M && L.nparts * L.rows_per_part >= M && (L.nparts - 1) * L.rows_per_part < M,
         "%s: statistics layout (%ld parts of %ld rows) does not cover the %ld rows once", tag.c_str(), L.nparts,
         L.rows_per_part, M);
  Dev<T> dx(x.s), dw(w.s), z(static_cast<size_t>(M * K));
  Dev<double> parts(static_cast<size_t>(2 * L.nparts * K));
  fwd_simple(dtype_of<T>(), dx.p, dw.p, nullptr, false, z.p, parts.p, s);
  const std::vector<double> zg = as_double(z.get());
  std::vector<double> tol(zr.size());
  for (size_t i = 0; i < zr.size(); ++i) tol[i] = unit_roundoff<T>() * std::fabs(zr[i]) + acc * zabs[i];
  compare(tag + " z", zg, zr, tol);
  // The simple path's statistics are those of the stored z, Welford in float64.
  std::vector<double> pw(2 * L.nparts * K), pt(pw.size());
  for (int64_t p = 0; p < L.nparts; ++p) {
    const int64_t r0 = p * L.rows_per_part, r1 = std::min(M, r0 + L.rows_per_part);
    for (int64_t k = 0; k < K; ++k) {
      double mean, m2;
      moments(zg, K, k, r0, r1, mean, m2);
      pw[p * K + k] = mean, pt[p * K + k] = 1e-12 * (std::fabs(mean) + std::sqrt(m2));
      pw[(L.nparts + p) * K + k] = m2, pt[(L.nparts + p) * K + k] = 1e-10 * m2 + 1e-30;
    }
  }
  compare(tag + " statistics partials", parts.get(), pw, pt);
  // eval epilogue
  std::vector<float> bias(K);
  for (auto& b : bias) b = float(0.3 * rng.normal());
  Dev<float> db(bias);
  Dev<T> ze(static_cast<size_t>(M * K));
  fwd_simple(dtype_of<T>(), dx.p, dw.p, db.p, true, ze.p, nullptr, s);
  std::vector<double> ew(zr.size()), et(zr.size());
  for (size_t i = 0; i < zr.size(); ++i) {
    ew[i] = std::fmax(zr[i] + bias[i % K], 0.0);
    et[i] = unit_roundoff<T>() * std::fabs(ew[i]) + acc * (zabs[i] + std::fabs(bias[i % K]));
  }
  compare(tag + " eval z (bias + ReLU)", as_double(ze.get()), ew, et);
  // gradients of a stored conv-output gradient g
  const Tensor<T> g = Tensor<T>::make(static_cast<size_t>(M * K), [&](size_t) { return rng.normal(); });
  std::vector<double> dxr, dxa, dwr, dwa;
  grads_ref(s, g.f, w.f, x.f, dxr, dxa, dwr, dwa);
  Dev<T> dg(g.s), gx(x.s.size());
  Dev<float> gw(w.s.size());
  dgrad_simple(dtype_of<T>(), dg.p, dw.p, gx.p, s);
  wgrad_simple(dtype_of<T>(), dg.p, dx.p, gw.p, s);
  std::vector<double> t1(dxr.size()), t2(dwr.size());
  const double acc_d = kU32 * (8.0 + s.R * s.S * (K / s.groups)), acc_w = kU32 * (16.0 + M / 256.0 + 8.0);
  for (size_t i = 0; i < dxr.size(); ++i) t1[i] = unit_roundoff<T>() * std::fabs(dxr[i]) + acc_d * dxa[i];
  for (size_t i = 0; i < dwr.size(); ++i) t2[i] = acc_w * dwa[i];
  compare(tag + " dgrad", as_double(gx.get()), dxr, t1);
  compare(tag + " wgrad", as_double(gw.get()), dwr, t2);
}

HARNESS_FAMILY(conv_simple, "conv_simple",
               "conv_fwd_simple_kernel, stat_parts_kernel, conv_dgrad_simple_kernel, conv_wgrad_simple_kernel")
void conv_simple() {
  Rng rng(7);
  const std::vector<Sh> shapes = {
      {1, 4, 3, 5, 4, 1, 1, 1, 1, 0}, {2, 16, 7, 9, 24, 2, 3, 3, 2, 1}, {1, 8, 9, 10, 12, 2, 2, 3, 3, 2},
      {3, 6, 30, 31, 6, 3, 1, 1, 1, 0},  // 2790 rows: several statistics parts
  };
  const size_t n = options().quick ? 1 : shapes.size();
  for (size_t i = 0; i < n; ++i) {
    simple_case<float>(shapes[i], rng);
    simple_case<__nv_bfloat16>(shapes[i], rng);
    if (!options().quick) simple_case<__half>(shapes[i], rng);
  }
  if (options().quick) return;
  // Welford partials at a large mean (the stored z's statistics, float64)
  simple_case<float>({2, 16, 9, 9, 16, 1, 3, 3, 1, 1}, rng, Data::kOffset);
  simple_case<__nv_bfloat16>({4, 16, 7, 7, 16, 1, 1, 1, 1, 0}, rng, Data::kExact, 1000.0);
  simple_case<float>({4, 16, 7, 7, 16, 1, 1, 1, 1, 0}, rng, Data::kExact, 10000.0);
}

// ---- per-channel finalize kernels ----
void forward_finalize_case(int64_t K, int64_t nparts, int64_t rpp, int64_t rows, double offset, Rng& rng) {
  const std::string tag = fmt("finalize K=%ld parts=%ld rows/part=%ld rows=%ld mean %g", K, nparts, rpp, rows, offset);
  // Per-channel data, cut into parts; each part's (mean, M2) in float64. Channel 1 (if any) has a NaN value;
  // parts past the rows (empty) hold NaN, which the merge must not read.
  std::vector<double> data(static_cast<size_t>(rows * K));
  for (auto& v : data) v = offset + rng.normal() * (1.0 + rng.uniform());
  if (K > 1 && rows > 3) data[3 * K + 1] = NAN;
  std::vector<double> parts(static_cast<size_t>(2 * nparts * K), NAN);
  for (int64_t p = 0; p < nparts; ++p) {
    const int64_t r0 = p * rpp, r1 = std::min(rows, r0 + rpp);
    if (r1 <= r0) continue;
    for (int64_t k = 0; k < K; ++k) moments(data, K, k, r0, r1, parts[p * K + k], parts[(nparts + p) * K + k]);
  }
  std::vector<float> gamma(K), beta(K);
  for (int64_t k = 0; k < K; ++k) gamma[k] = float(1.0 + 0.1 * rng.normal()), beta[k] = float(0.1 * rng.normal());
  const double eps = 1e-5;
  Dev<double> dp(parts);
  Dev<float> dg(gamma), db(beta), mean(K), var(K), ss(2 * K);
  forward_finalize(dp.p, cb::StatLayout{nparts, rpp, rows}, dg.p, db.p, eps, mean.p, var.p, ss.p, K);
  std::vector<double> mw(K), mt(K), vw(K), vt(K);
  for (int64_t k = 0; k < K; ++k) {
    double m, m2;
    moments(data, K, k, 0, rows, m, m2);
    // float64 merges of float64 parts: only the rounding to float32 is left
    mw[k] = m, mt[k] = 1.01 * kU32 * std::fabs(m) + 1e-12 * std::sqrt(m2 / rows);
    vw[k] = m2 / double(rows), vt[k] = 1.01 * kU32 * vw[k] + 1e-10 * vw[k] + 1e-30;
  }
  const std::vector<double> mg = as_double(mean.get()), vg = as_double(var.get());
  accept_nan_variance(tag, vg, vw);
  compare(tag + " mean", mg, mw, mt);
  compare(tag + " var", vg, vw, vt);
  std::vector<double> sw(2 * K), st(2 * K);
  for (int64_t k = 0; k < K; ++k) {
    const double sc = gamma[k] / std::sqrt(vg[k] + eps), sf = beta[k] - mg[k] * sc;
    sw[k] = sc, st[k] = 4 * kU32 * std::fabs(sc);
    sw[K + k] = sf, st[K + k] = 4 * kU32 * (std::fabs(beta[k]) + std::fabs(mg[k] * sc));
  }
  compare(tag + " scale/shift", as_double(ss.get()), sw, st);
  // scale/shift again from the stored mean and var (bn_scale_shift_cuda): the same values
  Dev<float> ss2(2 * K);
  scale_shift(mean.p, var.p, dg.p, db.p, eps, ss2.p, K);
  compare(tag + " scale_shift_kernel", as_double(ss2.get()), sw, st);
}

void backward_finalize_case(int64_t K, Rng& rng) {
  std::vector<double> sums(2 * K);
  std::vector<float> mean(K), var(K), gamma(K);
  const double count = 1000.0, eps = 1e-5;
  for (int64_t k = 0; k < K; ++k) {
    sums[k] = rng.normal() * 30, sums[K + k] = rng.normal() * 30;
    mean[k] = float(rng.normal() * 3), var[k] = float(rng.uniform(0.01, 4.0)), gamma[k] = float(rng.uniform(0.5, 2));
  }
  Dev<double> ds(sums);
  Dev<float> dm(mean), dv(var), dg(gamma), kpq(3 * K), dgam(K), dbet(K);
  backward_finalize(ds.p, count, dm.p, dv.p, dg.p, eps, kpq.p, dgam.p, dbet.p, K);
  std::vector<double> w(5 * K), t(5 * K);
  for (int64_t k = 0; k < K; ++k) {  // dx = k dz + p z + q, dgamma = S1 / std, dbeta = S0 (conv_bn_finalize.h)
    const long double istd = 1.0L / std::sqrt((long double)var[k] + eps), S0 = sums[k], S1 = sums[K + k];
    const long double kk = gamma[k] * istd, p = -kk * istd * istd * S1 / count, q = -p * mean[k] - kk * S0 / count;
    const long double vals[5] = {kk, p, q, S1 * istd, S0};
    const double mag[5] = {double(std::fabs(kk)), double(std::fabs(p)),
                           double(std::fabs(p * mean[k]) + std::fabs(kk * S0 / count)), double(std::fabs(S1 * istd)),
                           double(std::fabs(S0))};
    for (int j = 0; j < 5; ++j) w[j * K + k] = double(vals[j]), t[j * K + k] = 4 * kU32 * mag[j];
  }
  std::vector<double> got = as_double(kpq.get());
  for (double v : as_double(dgam.get())) got.push_back(v);
  for (double v : as_double(dbet.get())) got.push_back(v);
  compare(fmt("backward finalize K=%ld (k, p, q, dgamma, dbeta)", K), got, w, t);
}

template <typename T>
void running_stats_case(int64_t K, Rng& rng) {
  std::vector<T> rm(K), rv(K);
  std::vector<float> m(K), v(K);
  for (int64_t k = 0; k < K; ++k) {
    rm[k] = from_f<T>(float(rng.normal())), rv[k] = from_f<T>(float(rng.uniform(0.5, 2)));
    m[k] = float(rng.normal()), v[k] = float(rng.uniform(0.1, 3));
  }
  const double momentum = 0.1, unbias = 10.0 / 9.0;
  Dev<T> drm(rm), drv(rv);
  Dev<float> dm(m), dv(v);
  running_stats(dtype_of<T>(), drm.p, drv.p, dm.p, dv.p, momentum, unbias, K);
  std::vector<double> w(2 * K), t(2 * K), got = as_double(drm.get());
  for (double x : as_double(drv.get())) got.push_back(x);
  for (int64_t k = 0; k < K; ++k) {
    const double a = to_f<T>(rm[k]), b = to_f<T>(rv[k]);
    w[k] = (1 - momentum) * a + momentum * m[k];
    w[K + k] = (1 - momentum) * b + momentum * v[k] * unbias;
    t[k] = unit_roundoff<T>() * std::fabs(w[k]) + 4 * kU32 * (std::fabs(a) + std::fabs(m[k]));
    t[K + k] = unit_roundoff<T>() * std::fabs(w[K + k]) + 4 * kU32 * (std::fabs(b) + std::fabs(v[k] * unbias));
  }
  compare(fmt("%s running statistics K=%ld", name_of<T>(), K), got, w, t);
}

HARNESS_FAMILY(bn_finalize, "bn_finalize",
               "forward_finalize_kernel, scale_shift_kernel, backward_finalize_kernel, running_stats_kernel")
void bn_finalize() {
  Rng rng(5);
  // K, parts, rows per part, rows (fewer than parts x rows per part: a short or empty last part), mean
  forward_finalize_case(5, 3, 128, 300, 0.0, rng);
  backward_finalize_case(3, rng);
  running_stats_case<float>(5, rng);
  if (options().quick) return;
  forward_finalize_case(1, 1, 128, 100, 0.0, rng);
  forward_finalize_case(33, 16, 128, 2000, 1000.0, rng);
  forward_finalize_case(70, 17, 128, 2100, 1e4, rng);
  forward_finalize_case(3, 40, 64, 2500, 0.5, rng);
  forward_finalize_case(4, 5, 100, 400, 3.0, rng);  // the last part is empty (NaN there is never read)
  backward_finalize_case(1, rng);
  backward_finalize_case(130, rng);
  running_stats_case<float>(130, rng);
  running_stats_case<__nv_bfloat16>(1, rng);
  running_stats_case<__nv_bfloat16>(130, rng);
  running_stats_case<__half>(7, rng);
}

}  // namespace
