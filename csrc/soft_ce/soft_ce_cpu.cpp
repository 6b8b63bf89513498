// CPU kernels of the sparse soft-target softmax cross-entropy: one pass per row over blocks of 256
// columns (block max, then an online rescale of the running sum), parallel over rows. exp is a
// polynomial in GCC vector types; on x86 the hot loops are also built for AVX2 and picked at run time
// (a feature check, so AMD and Intel alike; "arch=haswell" would test the CPU model).
#include "soft_ce_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace wslfast::soft_ce {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WSLFAST_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define WSLFAST_MULTIVERSION
#endif

constexpr int64_t kBlock = 256;

// Eight floats in a GCC/Clang vector: AVX in the haswell clone, two SSE halves in the default one.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline v8f splat8(float x) { return v8f{} + x; }

// exp(x) to ~2 ulp on [-87, 88] (Cody-Waite reduction + degree-6 polynomial, after Cephes expf).
// Inputs below -87.3 give ~1e-38 instead of 0, which no sum or gradient here can tell apart; NaN stays
// NaN (the clamps keep x when a comparison is false). Rounding by adding 1.5 * 2^23.
template <typename V, typename I>
__attribute__((always_inline)) inline V exp_poly(V x) {
  x = x < -87.33654f ? V{} - 87.33654f : x;
  x = x > 88.37626f ? V{} + 88.37626f : x;
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const V r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  I bits;
  if constexpr (std::is_same_v<V, float>) bits = (static_cast<int32_t>(n) + 127) << 23;
  else bits = (__builtin_convertvector(n, I) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float exp_approx(float x) { return exp_poly<float, int32_t>(x); }

WSLFAST_MULTIVERSION float block_max(const float* x, int64_t n) {
  v8f m8 = splat8(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f v = load8(x + i);
    m8 = v > m8 ? v : m8;
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < 8; ++l) m = m8[l] > m ? m8[l] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

WSLFAST_MULTIVERSION float block_sum_exp(const float* x, int64_t n, float shift) {
  v8f acc{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc += exp_poly<v8f, v8i>(load8(x + i) - shift);
  float s = 0.f;
  for (int l = 0; l < 8; ++l) s += acc[l];
  for (; i < n; ++i) s += exp_approx(x[i] - shift);
  return s;
}

// y = scale * exp(x - (hi + lo)): the shift in two parts keeps x - shift exact near the shift.
WSLFAST_MULTIVERSION void block_scaled_exp(const float* x, float* y, int64_t n, float hi, float lo, float scale) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f v = scale * exp_poly<v8f, v8i>((load8(x + i) - hi) - lo);
    std::memcpy(y + i, &v, sizeof(v));
  }
  for (; i < n; ++i) y[i] = scale * exp_approx((x[i] - hi) - lo);
}

// float64 (gradcheck and references): plain libm.
double block_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
double block_sum_exp(const double* x, int64_t n, double shift) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - shift);
  return s;
}
void block_scaled_exp(const double* x, double* y, int64_t n, double hi, double lo, double scale) {
  for (int64_t i = 0; i < n; ++i) y[i] = scale * std::exp((x[i] - hi) - lo);
}

template <typename acc_t> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// Pointer to the block as acc_t: the row itself for float/double, else converted into `buf`.
template <typename scalar_t, typename acc_t>
const acc_t* load_block(const scalar_t* src, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return buf;
  }
}

template <typename scalar_t>
void forward_rows(const at::Tensor& logits, const int64_t* ids, const int64_t* offs, const float* w,
                  int64_t col_begin, at::Tensor& row_max, at::Tensor& row_sumexp, at::Tensor& target_dot,
                  at::Tensor& weight_sum) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t rows = logits.size(0), cols = logits.size(1), stride = logits.stride(0);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  double *mx = row_max.data_ptr<double>(), *se = row_sumexp.data_ptr<double>();
  double *td = target_dot.data_ptr<double>(), *ws = weight_sum.data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    acc_t buf[kBlock];
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* zr = z + r * stride;
      acc_t m = -std::numeric_limits<acc_t>::infinity(), s = 0;
      for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
        const int64_t n = std::min(kBlock, cols - c0);
        const acc_t* x = load_block<scalar_t, acc_t>(zr + c0, n, buf);
        const acc_t bm = block_max(x, n);
        if (bm > m) {
          s = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : s * std::exp(m - bm);
          m = bm;
        }
        if (m != -std::numeric_limits<acc_t>::infinity()) s += block_sum_exp(x, n, m);
        else if (std::isnan(static_cast<double>(bm))) s = bm;
      }
      // float64: W * lse - dot cancels badly in fp32 for large logits (|z| ~ 1e4)
      double dot = 0, wsum = 0;
      for (int64_t j = offs[r]; j < offs[r + 1]; ++j) {
        wsum += w[j];
        const int64_t k = ids[j] - col_begin;
        if (k >= 0 && k < cols) dot += static_cast<double>(w[j]) * static_cast<double>(zr[k]);
      }
      mx[r] = m;
      se[r] = s;
      td[r] = dot;
      ws[r] = wsum;
    }
  });
}

template <typename scalar_t>
void backward_rows(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                   const int64_t* ids, const int64_t* offs, const float* w, int64_t col_begin, at::Tensor& grad) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t rows = logits.size(0), cols = logits.size(1), stride = logits.stride(0);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  scalar_t* out = grad.data_ptr<scalar_t>();
  const acc_t* g = grad_rows.const_data_ptr<acc_t>();
  const double* L = lse.const_data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    acc_t buf[kBlock], y[kBlock];
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* zr = z + r * stride;
      scalar_t* orow = out + r * cols;
      const int64_t b = offs[r], e = offs[r + 1];
      if (b == e) {  // no targets: exactly zero, whatever the logits hold
        std::fill(orow, orow + cols, scalar_t(0));
        continue;
      }
      acc_t wsum = 0;
      for (int64_t j = b; j < e; ++j) wsum += w[j];
      const acc_t scale = g[r] * wsum;
      const acc_t hi = static_cast<acc_t>(L[r]), lo = static_cast<acc_t>(L[r] - static_cast<double>(hi));
      int64_t p = std::lower_bound(ids + b, ids + e, col_begin) - ids;
      for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
        const int64_t n = std::min(kBlock, cols - c0);
        const acc_t* x = load_block<scalar_t, acc_t>(zr + c0, n, buf);
        block_scaled_exp(x, y, n, hi, lo, scale);
        const int64_t lo = col_begin + c0;
        for (; p < e && ids[p] < lo + n; ++p) y[ids[p] - lo] -= g[r] * w[p];
        for (int64_t i = 0; i < n; ++i) orow[c0 + i] = static_cast<scalar_t>(y[i]);
      }
    }
  });
}

}  // namespace

void check_targets_cpu(const at::Tensor& indices, const at::Tensor& offsets) {
  const int64_t* ids = indices.const_data_ptr<int64_t>();
  const int64_t* offs = offsets.const_data_ptr<int64_t>();
  const int64_t rows = offsets.numel() - 1, nnz = indices.numel();
  TORCH_CHECK(offs[0] == 0, "soft_ce: offsets must start at 0, got ", offs[0]);
  TORCH_CHECK(offs[rows] == nnz, "soft_ce: offsets must end at nnz = ", nnz, ", got ", offs[rows]);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(offs[r] <= offs[r + 1], "soft_ce: offsets must not decrease (row ", r, ")");
    for (int64_t j = offs[r]; j < offs[r + 1]; ++j) {
      TORCH_CHECK(ids[j] >= 0, "soft_ce: class ids must be >= 0, got ", ids[j], " in row ", r);
      TORCH_CHECK(j == offs[r] || ids[j] > ids[j - 1], "soft_ce: class ids must be sorted and unique "
                  "within a row (build targets with SparseTargets); row ", r, " is not");
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cpu_impl(
    const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
    int64_t col_begin) {
  check_targets_cpu(indices, offsets);
  const auto opts = logits.options().dtype(at::kDouble);
  const int64_t rows = logits.size(0);
  at::Tensor mx = at::empty({rows}, opts), se = at::empty({rows}, opts);
  at::Tensor td = at::empty({rows}, opts), ws = at::empty({rows}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "soft_ce_forward_cpu", [&] {
    forward_rows<scalar_t>(logits, indices.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
                           weights.const_data_ptr<float>(), col_begin, mx, se, td, ws);
  });
  return {mx, se, td, ws};
}

at::Tensor backward_cpu_impl(const at::Tensor& grad_rows, const at::Tensor& logits, const at::Tensor& lse,
                             const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& weights,
                             int64_t col_begin) {
  check_targets_cpu(indices, offsets);
  at::Tensor grad = at::empty({logits.size(0), logits.size(1)}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "soft_ce_backward_cpu", [&] {
    backward_rows<scalar_t>(grad_rows, logits, lse, indices.const_data_ptr<int64_t>(),
                            offsets.const_data_ptr<int64_t>(), weights.const_data_ptr<float>(), col_begin, grad);
  });
  return grad;
}

}  // namespace wslfast::soft_ce
