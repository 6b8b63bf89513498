// What the soft-CE drivers share: the launchers of csrc/soft_ce/soft_ce.h (each called in one place, here),
// CSR targets, logits in every storage type, the float64 reference of a row and the forward's checks.
#pragma once
#include <algorithm>

#include "harness.h"
#include "soft_ce/soft_ce.h"
#include "soft_ce/soft_ce_math.h"

namespace softce_drv {

using namespace harness;
namespace sc = wslfast::soft_ce;

// ---- targets ----
struct Csr {
  std::vector<int64_t> idx, off;
  std::vector<float> w;
};

struct DevCsr {
  Dev<int64_t> idx, off;
  Dev<float> w;
  explicit DevCsr(const Csr& c) : idx(c.idx), off(c.off), w(c.w) {}
  sc::Targets targets() const {
    return {idx.n ? idx.p : nullptr, off.p, w.n ? w.p : nullptr, static_cast<int64_t>(idx.n)};
  }
};

// ---- the launchers (the one place each is called: a signature change is an edit here) ----
inline void forward(wslfast::DType dt, const void* z, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_begin,
             const DevCsr& t, int64_t splits, double* workspace, double* mx, double* se, double* dot, double* wsum) {
  sc::forward_cuda(dt, z, rows, cols, row_stride, col_begin, t.targets(), splits, workspace, mx, se, dot, wsum,
                   nullptr);
  device_sync("soft_ce forward");
}
inline void backward(wslfast::DType dt, const float* g, const void* z, int64_t rows, int64_t cols, int64_t row_stride,
              const double* lse, int64_t col_begin, const DevCsr& t, int64_t splits, void* grad, int64_t grad_stride) {
  sc::backward_cuda(dt, g, z, rows, cols, row_stride, lse, col_begin, t.targets(), splits, grad, grad_stride, nullptr);
  device_sync("soft_ce backward");
}
inline void backward_rows(wslfast::DType dt, sc::GradRows g, const void* z, int64_t rows, int64_t cols,
                          int64_t row_stride, const double* lse, int64_t col_begin, const DevCsr& t, int64_t splits,
                          void* grad, int64_t grad_stride) {
  sc::backward_cuda(dt, g, z, rows, cols, row_stride, lse, col_begin, t.targets(), splits, grad, grad_stride, nullptr);
  device_sync("soft_ce backward (GradRows)");
}
inline void loss(wslfast::DType dt, const void* z, int64_t rows, int64_t cols, int64_t row_stride, const DevCsr& t,
                 int64_t splits, sc::Reduction red, double* workspace, double* lse, float* out, float* norm) {
  sc::loss_cuda(dt, z, rows, cols, row_stride, t.targets(), splits, red, workspace, lse, out, norm, nullptr);
  device_sync("soft_ce loss");
}
inline void finish(const double* parts, int64_t rows, int64_t num_parts, const int64_t* offsets, sc::Reduction red,
                   double* lse, float* out, float* norm) {
  sc::finish_cuda(parts, rows, num_parts, offsets, red, lse, out, norm, nullptr);
  device_sync("soft_ce finish");
}

// Canonical random targets: ids in [0, vocab) sorted and unique, positive weights; every 4th row empty.
inline Csr random_targets(int64_t rows, int64_t vocab, Rng& rng, int max_k = 6) {
  Csr t;
  t.off.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> ids;
    const int k = r % 4 == 1 ? 0 : static_cast<int>(rng.below(max_k + 1));
    for (int i = 0; i < k; ++i) ids.push_back(rng.below(vocab));
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (int64_t id : ids) {
      t.idx.push_back(id);
      t.w.push_back(static_cast<float>((0.5 + rng.uniform()) / static_cast<double>(ids.size())));
    }
    t.off.push_back(static_cast<int64_t>(t.idx.size()));
  }
  return t;
}

// Logits of rows x cols at row stride rs (the gaps hold NaN: never read), as storage T and as floats.
template <typename T>
struct Logits {
  int64_t rows, cols, rs;
  std::vector<T> stored;
  std::vector<float> f;  // dense rows x cols, the values the kernel reads
  Logits(int64_t rows_, int64_t cols_, int64_t rs_) : rows(rows_), cols(cols_), rs(rs_) {
    stored.assign(rows > 0 ? static_cast<size_t>((rows - 1) * rs + cols) : 0, from_f<T>(NAN));
    f.assign(static_cast<size_t>(rows * cols), 0.f);
  }
  void set(int64_t r, int64_t c, float v) {
    stored[r * rs + c] = from_f<T>(v);
    f[r * cols + c] = to_f<T>(stored[r * rs + c]);
  }
  float at(int64_t r, int64_t c) const { return f[r * cols + c]; }
};

template <typename T>
Logits<T> random_logits(int64_t rows, int64_t cols, int64_t rs, Rng& rng, bool wide) {
  Logits<T> z(rows, cols, rs);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      z.set(r, c, static_cast<float>(wide ? 6.0 * rng.normal() : rng.uniform(-2.0, 2.0) + 1e-4 * c));
  return z;
}

struct RowRef {
  double mx, se, dot, wsum;
};

// float64 reference of one row: max, sum of exp(z - max), sum of w z[t - col_begin] over targets inside the
// block, sum of all weights. NaN anywhere: NaN max and sum.
template <typename T>
RowRef reference_row(const Logits<T>& z, int64_t r, int64_t col_begin, const Csr& t) {
  double mx = -INFINITY;
  bool nan = false;
  for (int64_t c = 0; c < z.cols; ++c) {
    const double v = z.at(r, c);
    nan = nan || std::isnan(v);
    mx = std::max(mx, v);
  }
  double se = 0.0;
  if (mx != -INFINITY)
    for (int64_t c = 0; c < z.cols; ++c) se += std::exp(z.at(r, c) - mx);
  if (nan) mx = se = NAN;
  double dot = 0.0, wsum = 0.0;
  for (int64_t j = t.off[r]; j < t.off[r + 1]; ++j) {
    wsum += t.w[j];
    const int64_t k = t.idx[j] - col_begin;
    if (k >= 0 && k < z.cols) dot += static_cast<double>(t.w[j]) * z.at(r, k);
  }
  return {mx, se, dot, wsum};
}

struct FwdOut {
  std::vector<double> mx, se, dot, wsum;
};

template <typename T>
FwdOut run_forward(const Logits<T>& z, const DevCsr& t, int64_t col_begin, int64_t splits, size_t skew) {
  const int64_t rows = z.rows;
  Dev<T> dz(z.stored, skew);
  Dev<double> mx(rows), se(rows), dot(rows), wsum(rows);
  Dev<double> part(splits > 1 ? static_cast<size_t>(4 * rows * splits) : 0);
  forward(dtype_of<T>(), dz.p, rows, z.cols, z.rs, col_begin, t, splits, splits > 1 ? part.p : nullptr, mx.p, se.p,
          dot.p, wsum.p);
  return {mx.get(), se.get(), dot.get(), wsum.get()};
}

// Checks the forward's four outputs against the reference, rows in `skip` excepted.
inline void check_forward(const std::string& tag, const FwdOut& o, const std::vector<RowRef>& ref, double se_rel,
                   const std::vector<int>& skip = {}) {
  std::vector<double> got[4], want[4], tol[4];
  for (size_t r = 0; r < ref.size(); ++r) {
    if (std::find(skip.begin(), skip.end(), static_cast<int>(r)) != skip.end()) continue;
    const RowRef& w = ref[r];
    got[0].push_back(o.mx[r]), want[0].push_back(w.mx), tol[0].push_back(0.0);  // an element of the row: exact
    got[1].push_back(o.se[r]), want[1].push_back(w.se), tol[1].push_back(se_rel * std::fabs(w.se));
    // float64 products of float values are exact; only the order of the adds differs
    got[2].push_back(o.dot[r]), want[2].push_back(w.dot), tol[2].push_back(1e-12 * (std::fabs(w.dot) + w.wsum * 10));
    got[3].push_back(o.wsum[r]), want[3].push_back(w.wsum), tol[3].push_back(1e-12 * w.wsum);
  }
  compare(tag + " row_max", got[0], want[0], tol[0]);
  compare(tag + " row_sumexp", got[1], want[1], tol[1]);
  compare(tag + " target_dot", got[2], want[2], tol[2]);
  compare(tag + " weight_sum", got[3], want[3], tol[3]);
}

// Relative tolerance of the sum of exps: fp32 adds of values <= 1 and expf, in the kernel's order.
constexpr double kSumExpRel = 2e-6;


}  // namespace softce_drv
