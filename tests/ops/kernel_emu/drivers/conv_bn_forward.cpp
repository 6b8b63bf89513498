// The conv+BN forward kernels (csrc/conv_bn/conv_bn_cuda_mma.cu, conv_bn_cuda.cu; the finalize after the
// tensor-core forward) against float64 references:
//   conv_fast_forward  conv_gemm_kernel<.., kDgrad = false>: z (bf16/fp16, TF32 for float32) over odd shapes,
//                      groups of 4 and 8 channels, 16/32/64-column tiles, k tails, strides 1-3, pixel pairs
//                      (4 channels a group, even widths; two output pixels a GEMM row); the per-part (mean,
//                      M2) statistics epilogue (at mean/std up to 10^4, constant and NaN channels), then the
//                      finalize (against float64, and bit for bit against merge_parts_tree's order); the eval
//                      epilogue (bias + ReLU); bit-for-bit repeats;
//   conv_simple        conv_fwd_simple_kernel + stat_parts_kernel, conv_dgrad_simple_kernel,
//                      conv_wgrad_simple_kernel.
#include "conv_bn_common.h"

using namespace convdrv;

namespace {

enum class Data { kNormal, kOffset, kExact, kExactTight };

// x, w for a case: normal (weights ~ 1 / sqrt(fan-in)), normal around 30 (large BN mean), or exact: every
// product and partial sum is exactly representable in fp32 (x in k/8, w in j/8, each group's input channel 0
// = 1 with weight `ratio`), so the fp32 conv values are exact and the statistics can be held to 1e-6 at
// mean/std = ratio; the last output channel is constant (variance exactly 0). kExactTight: weights 16x
// smaller (j/128), so std ~ 0.1 and the epilogue's correction for float(mean) (n (mean - float(mean))^2)
// is ~1e-4 of M2 at mean 10^4, well above the tolerance.
template <typename T>
void make_inputs(const cb::ConvShape& s, Data kind, double ratio, Rng& rng, Tensor<T>& x, Tensor<T>& w) {
  const int64_t cg = s.C / s.groups, fan = s.R * s.S * cg;
  const size_t nx = static_cast<size_t>(s.N * s.H * s.W * s.C), nw = static_cast<size_t>(s.K * fan);
  if (kind == Data::kExact || kind == Data::kExactTight) {
    const double scale = kind == Data::kExactTight ? 1.0 / 16 : 1.0;
    x = Tensor<T>::make(nx, [&](size_t i) { return i % s.C % cg == 0 ? 1.0 : (rng.below(33) - 16) / 8.0; });
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

// |statistic of perturbed values - statistic of exact ones| when each value may be off by e: the mean by e,
// M2 by 2 sqrt(n M2) e + n e^2 (Cauchy-Schwarz), plus the merge's own rounding.
double m2_tol(double n, double m2, double e) { return 2 * std::sqrt(n * m2) * e + n * e * e + 2e-6 * m2 + 1e-30; }

// Whether the forward GEMM takes pixel pairs (4 output channels a group, an even output width): then a
// statistics part holds 2 * 128 output pixels (conv_fwd_fast_stat_layout), else 128.
bool pixel_pairs(const cb::ConvShape& s) { return s.K / s.groups == 4 && s.Q % 2 == 0; }

// A known deviation of pixel pairs from the stock convolution (reported, not accepted silently): a GEMM row
// multiplies the pair's whole input window, so an input the other pixel of the pair reads through a
// structurally zero weight still enters as 0 * x, and a NaN or inf there makes that output NaN (and 0 after
// the eval epilogue's fmaxf ReLU) where conv2d leaves it finite. Returns `got` with exactly those outputs
// (finite in the reference, whose pair partner, the same channel at column q ^ 1, the reference makes NaN, and
// NaN here, or 0 in eval) set to `want`, so that every other element is still compared; prints how many.
std::vector<double> accept_pair_leak(const std::string& tag, const cb::ConvShape& s, const std::vector<double>& zr,
                                     std::vector<double> got, const std::vector<double>& want, bool eval) {
  if (!pixel_pairs(s)) return got;
  int64_t leaked = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int64_t q = static_cast<int64_t>(i) / s.K % s.Q;
    const size_t partner = i + static_cast<size_t>(((q ^ 1) - q) * s.K);
    if (std::isnan(zr[partner]) && !std::isnan(zr[i]) && (std::isnan(got[i]) || (eval && got[i] == 0.0))) {
      got[i] = want[i];
      ++leaked;
    }
  }
  if (leaked) std::printf("  known deviation: %s: %ld outputs %s through the pixel pair's zero weights\n",
                          tag.c_str(), leaked, eval ? "NaN (0 after ReLU)" : "NaN");
  return got;
}

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
  expect(L.rows_per_part == (pixel_pairs(s) ? 256 : 128), "%s: %ld pixels a statistics part (pixel pairs: %d)",
         tag.c_str(), L.rows_per_part, pixel_pairs(s));
  Dev<T> dx(x.s), dw(w.s), z(static_cast<size_t>(M * K));
  Dev<double> parts(static_cast<size_t>(2 * L.nparts * K));
  fwd_fast(dtype_of<T>(), dx.p, dw.p, nullptr, false, z.p, parts.p, s);
  const std::vector<double> zg = as_double(z.get()), pg = parts.get();
  std::vector<double> tol(zr.size());
  for (size_t i = 0; i < zr.size(); ++i) tol[i] = unit_roundoff<T>() * std::fabs(zr[i]) + acc * zabs[i];
  compare(tag + " z", accept_pair_leak(tag + " z", s, zr, zg, zr, false), zr, tol);

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
  compare(tag + " finalize mean", mg, mw, mt);  // a NaN channel: NaN mean and variance (bn_forward_one keeps NaN)
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
  check_finalize_order(tag, pg.data(), L, gamma, beta, eps, mg, vg, sg);

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
  compare(tag + " eval z (bias + ReLU)", accept_pair_leak(tag + " eval z", s, zr, as_double(ze.get()), ew, true), ew, et);
}

// N, C, H, W, K, groups, R, S, stride, pad: 4- and 8-channel groups (4- and 8-wide loads), 16/32/64-column
// tiles, several row and column blocks, k tails, strides 1-3, a single output pixel; pixel pairs (4 output
// channels a group and an even output width: ResNeXt 32x4d's stage 1, a short last row block, stride 2, a 1x1
// stride-2 conv, 4 input channels with 8 output) and their odd-width fallback (one pixel a row).
const std::vector<Sh> kFastShapes = {
    {2, 128, 8, 8, 128, 32, 3, 3, 1, 1}, {2, 16, 7, 9, 24, 2, 3, 3, 2, 1},   {3, 16, 11, 11, 16, 2, 3, 3, 1, 1},
    {1, 8, 9, 10, 80, 1, 2, 3, 3, 2},    {2, 128, 5, 5, 128, 32, 3, 3, 1, 1}, {1, 72, 6, 6, 40, 1, 3, 3, 1, 1},
    {2, 16, 5, 6, 32, 1, 1, 1, 2, 0},    {1, 8, 1, 1, 8, 1, 1, 1, 1, 0},      {2, 12, 6, 7, 20, 1, 3, 3, 2, 1},
    {4, 16, 9, 12, 16, 4, 3, 3, 1, 1},   {2, 16, 9, 12, 16, 4, 3, 3, 2, 1},   {2, 8, 7, 8, 8, 2, 1, 1, 2, 0},
    {3, 8, 5, 10, 8, 2, 3, 3, 1, 1},     {2, 8, 6, 6, 16, 2, 3, 3, 1, 1},     {2, 16, 6, 6, 8, 2, 3, 3, 1, 1},
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
  // pixel pairs: a part's statistics from both pixels of its rows (columns dq = 0, 1 of each channel), at a
  // large mean (group 0), with a NaN pixel, over several parts and a short last one
  fast_forward_case<__nv_bfloat16>({3, 16, 9, 12, 16, 4, 1, 1, 1, 0}, Data::kExact, 1000.0, rng);
  fast_forward_case<float>({3, 16, 9, 12, 16, 4, 1, 1, 1, 0}, Data::kExactTight, 10000.0, rng);
  fast_forward_case<__nv_bfloat16>({2, 16, 9, 12, 16, 4, 3, 3, 1, 1}, Data::kOffset, 0, rng, true);

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

}  // namespace
