// The per-channel BN kernels of csrc/conv_bn/conv_bn_cuda_finalize.cu against float64 references:
//   bn_finalize  forward_finalize_kernel (parts merged by lanes, each a strided slice, then a halving tree:
//                against float64 and bit for bit against merge_parts_tree's order; 1 to 1100 parts, so 1 to
//                256 lanes; short, empty and NaN parts, means to 10^4; a NaN channel's variance NaN),
//                scale_shift_kernel, backward_finalize_kernel, running_stats_kernel (every dtype, NaN batch
//                variance).
#include "conv_bn_common.h"

using namespace convdrv;

namespace {

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
  compare(tag + " mean", mg, mw, mt);
  compare(tag + " var", vg, vw, vt);  // channel 1's NaN: NaN mean and variance (not a variance of 0)
  std::vector<double> sw(2 * K), st(2 * K);
  for (int64_t k = 0; k < K; ++k) {
    const double sc = gamma[k] / std::sqrt(vg[k] + eps), sf = beta[k] - mg[k] * sc;
    sw[k] = sc, st[k] = 4 * kU32 * std::fabs(sc);
    sw[K + k] = sf, st[K + k] = 4 * kU32 * (std::fabs(beta[k]) + std::fabs(mg[k] * sc));
  }
  const std::vector<double> sg = as_double(ss.get());
  compare(tag + " scale/shift", sg, sw, st);
  check_finalize_order(tag, parts.data(), cb::StatLayout{nparts, rpp, rows}, gamma, beta, eps, mg, vg, sg);
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
  if (K > 2) v[1] = NAN;  // a NaN batch variance (a NaN channel) gives a NaN running variance, as in torch
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
  forward_finalize_case(6, 2, 256, 300, 2.0, rng);   // 2 lanes
  forward_finalize_case(5, 300, 128, 300 * 128 - 37, 30.0, rng);  // 256 lanes, some with two parts
  forward_finalize_case(2, 1100, 128, 1100 * 128 - 5, 1e3, rng);  // 256 lanes of 4-5 parts
  forward_finalize_case(9, 257, 1, 257, 0.0, rng);  // one row a part, 256 lanes + one
  backward_finalize_case(1, rng);
  backward_finalize_case(130, rng);
  running_stats_case<float>(130, rng);
  running_stats_case<__nv_bfloat16>(1, rng);
  running_stats_case<__nv_bfloat16>(130, rng);
  running_stats_case<__half>(7, rng);
}

}  // namespace
