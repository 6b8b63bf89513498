// Per-channel batch statistics of the CUDA conv+BN as (count, mean, M2) partials merged with Chan et al.'s
// rule, and fixed-order merges (a parallel tree: merge_parts_tree), so the statistics neither cancel
// (E[z^2] - E[z]^2 loses every digit once |mean| >> std) nor change from run to run (no atomics: each block
// writes its own partial, the finalize merges them in one order). Plain C++ that nvcc also compiles for the
// device; CPU tests (tests/ops/test_kernel_math_softce_stats.py, test_kernels_emulated.py) run this very
// code against float64 statistics.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define WSLFAST_STATS_HD __host__ __device__ __forceinline__
#else
#define WSLFAST_STATS_HD inline
#endif

namespace wslfast::conv_bn {

// n values with mean `mean` and sum of squared deviations from it `m2`.
struct MeanM2 {
  double n, mean, m2;
};

// Chan, Golub, LeVeque (1979): (a, b) -> the statistics of their union, into a. Empty parts are no-ops.
WSLFAST_STATS_HD void chan_merge(MeanM2& a, const MeanM2& b) {
  if (b.n <= 0) return;
  if (a.n <= 0) {
    a = b;
    return;
  }
  const double n = a.n + b.n, d = b.mean - a.mean;
  a.mean += d * (b.n / n);
  a.m2 += b.m2 + d * d * (a.n * (b.n / n));
  a.n = n;
}

// Welford's update with one value.
WSLFAST_STATS_HD void welford_add(MeanM2& a, double x) {
  a.n += 1.0;
  const double d = x - a.mean;
  a.mean += d / a.n;
  a.m2 += d * (x - a.mean);
}

// A block's partial from its values' sum (double) and the fp32 sum of squared deviations from
// mf = float(sum / n): sum (v - mf)^2 = M2 + n (mean - mf)^2, so the exact correction is subtracted.
WSLFAST_STATS_HD MeanM2 partial_from_sums(double n, double sum, double sq_dev_from_mf, float mf) {
  if (n <= 0) return {0.0, 0.0, 0.0};
  const double mean = sum / n, c = mean - static_cast<double>(mf);
  const double m2 = sq_dev_from_mf - n * c * c;
  return {n, mean, m2 < 0.0 ? 0.0 : m2};  // rounding can take it below 0; NaN stays NaN
}

// Rows of part p when `rows` rows are cut into parts of rows_per_part (the last may be short or empty).
WSLFAST_STATS_HD double part_rows(int64_t p, int64_t rows_per_part, int64_t rows) {
  const int64_t left = rows - p * rows_per_part;
  return static_cast<double>(left < 0 ? 0 : (left < rows_per_part ? left : rows_per_part));
}

// The partial layout the CUDA kernels write: for part p and channel k, mean at [p * K + k] and M2 at
// [(nparts + p) * K + k]. Merges parts first, first + stride, ... in order (one slice of a parallel merge).
WSLFAST_STATS_HD MeanM2 merge_parts(const double* part, int64_t nparts, int64_t K, int64_t k, int64_t rows_per_part,
                                    int64_t rows, int64_t first, int64_t stride) {
  MeanM2 acc{0.0, 0.0, 0.0};
  for (int64_t p = first; p < nparts; p += stride) {
    const MeanM2 b{part_rows(p, rows_per_part, rows), part[p * K + k], part[(nparts + p) * K + k]};
    chan_merge(acc, b);
  }
  return acc;
}

// Plain sums in the same layout (the backward's S0, S1 per part): sum of slice first, first + stride, ...
WSLFAST_STATS_HD void sum_parts(const double* part, int64_t nparts, int64_t K, int64_t k, int64_t first,
                                int64_t stride, double& s0, double& s1) {
  s0 = 0.0;
  s1 = 0.0;
  for (int64_t p = first; p < nparts; p += stride) {
    s0 += part[p * K + k];
    s1 += part[(nparts + p) * K + k];
  }
}

// Host references of the CUDA merges' exact order (conv_bn_mma_plan.h, merge_geometry): `lanes` strided
// slices (lane l: parts l, l + lanes, ...), then a halving tree (lane l takes lane l + half, half = lanes / 2,
// ..., 1). The kernels run the same steps on their threads; tests compare the two bit for bit.
inline MeanM2 merge_parts_tree(const double* part, int64_t nparts, int64_t K, int64_t k, int64_t rows_per_part,
                               int64_t rows, int lanes) {
  MeanM2 lane[1024];
  for (int l = 0; l < lanes; ++l) lane[l] = merge_parts(part, nparts, K, k, rows_per_part, rows, l, lanes);
  for (int half = lanes / 2; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) chan_merge(lane[l], lane[l + half]);
  return lane[0];
}
inline void sum_parts_tree(const double* part, int64_t nparts, int64_t K, int64_t k, int lanes, double& s0,
                           double& s1) {
  double a[1024], b[1024];
  for (int l = 0; l < lanes; ++l) sum_parts(part, nparts, K, k, l, lanes, a[l], b[l]);
  for (int half = lanes / 2; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) a[l] += a[l + half], b[l] += b[l + half];
  s0 = a[0];
  s1 = b[0];
}

}  // namespace wslfast::conv_bn
