// The soft-target CE kernels (csrc/soft_ce/soft_ce_cuda.cu) against float64 references:
//   softce_forward         forward_kernel (+ merge_kernel above one split): row max, sum of exp, target dot,
//                          weight sum over odd shapes, vocabulary splits, offsets, row strides, misaligned
//                          rows (the scalar path), NaN / -inf rows, broken CSR rows, bit-for-bit repeats;
//   softce_backward        backward_kernel: W softmax - target per element, row strides, misaligned rows,
//                          rows without targets (exact zeros), broken rows (NaN rows), untouched gaps;
//   softce_split_gradient  the GPU test's split-count comparison (tests/ops/test_kernels_robust_cuda.py):
//                          the gradient on one fixed lse is bit for bit the same for every split count,
//                          and end to end it differs only as far as the split's lse (an fp32 sum of exps
//                          in another order) explains; also counts what a bitwise end-to-end check sees.
#include <algorithm>

#include "harness.h"
#include "soft_ce/soft_ce.h"
#include "soft_ce/soft_ce_math.h"

using namespace harness;
namespace sc = wslfast::soft_ce;

namespace {

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
void forward(wslfast::DType dt, const void* z, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_begin,
             const DevCsr& t, int64_t splits, double* workspace, double* mx, double* se, double* dot, double* wsum) {
  sc::forward_cuda(dt, z, rows, cols, row_stride, col_begin, t.targets(), splits, workspace, mx, se, dot, wsum,
                   nullptr);
  device_sync("soft_ce forward");
}
void backward(wslfast::DType dt, const float* g, const void* z, int64_t rows, int64_t cols, int64_t row_stride,
              const double* lse, int64_t col_begin, const DevCsr& t, int64_t splits, void* grad, int64_t grad_stride) {
  sc::backward_cuda(dt, g, z, rows, cols, row_stride, lse, col_begin, t.targets(), splits, grad, grad_stride, nullptr);
  device_sync("soft_ce backward");
}

// Canonical random targets: ids in [0, vocab) sorted and unique, positive weights; every 4th row empty.
Csr random_targets(int64_t rows, int64_t vocab, Rng& rng, int max_k = 6) {
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
void check_forward(const std::string& tag, const FwdOut& o, const std::vector<RowRef>& ref, double se_rel,
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

struct FwdCase {
  int64_t rows, cols, col_begin, pad, skew, splits;
};

template <typename T>
void forward_case(const FwdCase& cs, Rng& rng, bool wide) {
  const int64_t rs = cs.cols + cs.pad;
  const Logits<T> z = random_logits<T>(cs.rows, cs.cols, rs, rng, wide);
  const Csr t = random_targets(cs.rows, cs.col_begin + cs.cols + 40, rng);
  std::vector<RowRef> ref;
  for (int64_t r = 0; r < cs.rows; ++r) ref.push_back(reference_row(z, r, cs.col_begin, t));
  const DevCsr dt(t);
  const std::string tag = fmt("%s rows=%ld cols=%ld col_begin=%ld stride=%ld skew=%ld splits=%ld", name_of<T>(),
                              cs.rows, cs.cols, cs.col_begin, rs, cs.skew, cs.splits);
  const FwdOut o = run_forward(z, dt, cs.col_begin, cs.splits, static_cast<size_t>(cs.skew));
  check_forward(tag, o, ref, kSumExpRel);
  const FwdOut again = run_forward(z, dt, cs.col_begin, cs.splits, static_cast<size_t>(cs.skew));
  compare_exact(tag + " repeat row_sumexp", again.se, o.se);
  compare_exact(tag + " repeat target_dot", again.dot, o.dot);
}

// NaN / -inf rows (through one block and through the split path) and broken CSR rows.
template <typename T>
void special_rows(int64_t splits) {
  const int64_t rows = 10, cols = 3000;
  Rng rng(7 + splits);
  Logits<T> z = random_logits<T>(rows, cols, cols, rng, true);
  z.set(0, cols - 5, NAN);                                  // NaN in the last split
  for (int64_t c = 0; c < cols; ++c) z.set(1, c, -INFINITY);  // all -inf: (-inf, 0)
  for (int64_t c = 0; c < cols / 2; ++c) z.set(2, c, -INFINITY);
  z.set(3, 2, NAN);  // NaN in the first vector
  for (int64_t c = 0; c < cols; ++c) {
    z.set(6, c, c < 8 ? NAN : -INFINITY);       // NaN while the running max is still -inf
    z.set(7, c, c == 9 ? 2.f : -INFINITY);      // one finite value: exactly (2, 1)
    z.set(8, c, NAN);                           // all NaN
  }
  z.set(9, cols - 1, NAN);  // NaN in the last column (the scalar tail when misaligned)
  Csr t;
  t.off = {0, 1, 1, 2, 3, 4, 5, 5, 6, 6, 7};
  t.idx = {5, 2999, 7, 8, 100, 9, 0};
  t.w = {1, 1, 1, 1, 1, 1, 1};
  const std::string tag = fmt("%s special rows splits=%ld", name_of<T>(), splits);
  std::vector<RowRef> ref;
  for (int64_t r = 0; r < rows; ++r) ref.push_back(reference_row(z, r, 0, t));
  const std::vector<int> nan_rows = {0, 3, 6, 8, 9};
  for (size_t skew : {size_t(0), size_t(1)}) {  // the vector path and the element path
    const std::string st = tag + fmt(" skew=%zu", skew);
    const FwdOut o = run_forward(z, DevCsr(t), 0, splits, skew);
    std::vector<int> skip = nan_rows;
    skip.push_back(1);
    check_forward(st, o, ref, kSumExpRel, skip);
    for (int r : nan_rows)
      expect(std::isnan(o.mx[r] + std::log(o.se[r])), "%s: the NaN in row %d is lost (max %g, sum %g)", st.c_str(), r,
             o.mx[r], o.se[r]);
    expect(o.mx[1] == -INFINITY && o.se[1] == 0.0, "%s: all -inf row gives max %g, sum %g (want -inf, 0)", st.c_str(),
           o.mx[1], o.se[1]);
    expect(o.mx[7] == 2.0 && o.se[7] == 1.0, "%s: row of -inf and one 2 gives (%g, %g), want (2, 1)", st.c_str(),
           o.mx[7], o.se[7]);
  }

  // Broken CSR (what SparseTargets refuses): the bad rows get NaN in all four outputs and a NaN gradient row,
  // the others their values; nothing is read outside the exact-size targets (ASan).
  struct Bad {
    std::vector<int64_t> off, idx;
    std::vector<int> rows;
    const char* what;
  };
  const std::vector<Bad> bads = {
      {{0, 2, 2, 3, 4, 5, 6}, {9, 3, 1, 2, 3, 4}, {0}, "unsorted"},
      {{0, 2, 2, 3, 4, 5, 6}, {3, 3, 1, 2, 3, 4}, {0}, "duplicate id"},
      {{0, 1, 2, 3, 4, 5, 9}, {0, 1, 2, 3, 4, 5}, {5}, "last offset past nnz"},
      {{0, 1, -5, 3, 4, 5, 6}, {0, 1, 2, 3, 4, 5}, {1, 2}, "negative offset"},
      {{0, 1, 2, 3, 4, 5, 6}, {0, -1, 2, 3, 4, int64_t(1) << 62}, {1}, "negative id (a huge id is canonical)"},
      {{3, 3, 3, 3, 4, 5, 6}, {0, 1, 2, 3, 4, 5}, {0}, "first offset not 0"},
      {{0, 1, 2, 3, 4, 5, 5}, {0, 1, 2, 3, 4, 5}, {5}, "ends before nnz"},
      {{0, 4, 2, 3, 4, 5, 6}, {0, 1, 2, 3, 4, 5}, {1}, "offsets decrease"},
  };
  const int64_t brows = 6;
  Logits<T> zf = random_logits<T>(brows, cols, cols, rng, false);
  for (const Bad& b : bads) {
    Csr c;
    c.off = b.off;
    c.idx = b.idx;
    c.w.assign(b.idx.size(), 1.f);
    const DevCsr dc(c);
    const FwdOut ob = run_forward(zf, dc, 0, splits, 0);
    std::vector<RowRef> rb;
    for (int64_t r = 0; r < brows; ++r)
      rb.push_back(std::find(b.rows.begin(), b.rows.end(), r) == b.rows.end() ? reference_row(zf, r, 0, c)
                                                                               : RowRef{NAN, NAN, NAN, NAN});
    check_forward(tag + " broken CSR (" + b.what + ")", ob, rb, kSumExpRel);
    Dev<T> dz(zf.stored);
    Dev<float> g(std::vector<float>(brows, 1.f));
    Dev<double> lse(std::vector<double>(brows, 5.0));
    Dev<T> grad(static_cast<size_t>(brows * cols));
    backward(dtype_of<T>(), g.p, dz.p, brows, cols, cols, lse.p, 0, dc, splits, grad.p, cols);
    const std::vector<T> gv = grad.get();
    for (int r = 0; r < brows; ++r) {
      const bool bad = std::find(b.rows.begin(), b.rows.end(), r) != b.rows.end();
      int64_t nan = 0;
      for (int64_t col = 0; col < cols; ++col) nan += std::isnan(to_f<T>(gv[r * cols + col]));
      expect(bad ? nan == cols : nan == 0, "%s broken CSR (%s): gradient row %d has %ld NaN of %ld", tag.c_str(),
             b.what, r, nan, cols);
    }
  }
}

// The launchers refuse what they cannot run, with an exception (the torch glue turns it into an error).
void bad_arguments() {
  Csr t;
  t.off = {0, 0};
  const DevCsr dt(t);
  Dev<float> z(16);
  Dev<double> mx(1), se(1), dot(1), ws(1), part(4 * 300);
  const auto f32 = wslfast::DType::kFloat32;
  expect_throws("forward splits 0", [&] { forward(f32, z.p, 1, 16, 16, 0, dt, 0, part.p, mx.p, se.p, dot.p, ws.p); });
  expect_throws("forward splits 257",
                [&] { forward(f32, z.p, 1, 16, 16, 0, dt, sc::kMaxSplits + 1, part.p, mx.p, se.p, dot.p, ws.p); });
  expect_throws("forward without workspace",
                [&] { forward(f32, z.p, 1, 16, 16, 0, dt, 2, nullptr, mx.p, se.p, dot.p, ws.p); });
  expect_throws("forward float64",
                [&] { forward(wslfast::DType::kFloat64, z.p, 1, 16, 16, 0, dt, 1, nullptr, mx.p, se.p, dot.p, ws.p); });
  Dev<float> g(1);
  Dev<double> lse(1);
  expect_throws("backward splits 0", [&] { backward(f32, g.p, z.p, 1, 16, 16, lse.p, 0, dt, 0, z.p, 16); });
  expect_throws("backward float64",
                [&] { backward(wslfast::DType::kFloat64, g.p, z.p, 1, 16, 16, lse.p, 0, dt, 1, z.p, 16); });
  // no rows (or no columns in the backward): nothing to launch, nothing written
  forward(f32, nullptr, 0, 16, 16, 0, dt, 1, nullptr, nullptr, nullptr, nullptr, nullptr);
  backward(f32, g.p, z.p, 1, 0, 16, lse.p, 0, dt, 1, nullptr, 16);
}

HARNESS_FAMILY(softce_forward, "softce_forward", "forward_kernel, merge_kernel")
void softce_forward() {
  // rows, cols, col_begin, row-stride pad, misalignment (elements), splits
  // the first two (the TSan subset) have blocks of several warps: the block reductions' barriers matter
  const std::vector<FwdCase> cases = {
      {2, 2000, 0, 0, 0, 2},   {2, 1001, 0, 3, 1, 1},   {2, 40, 0, 0, 0, 2},     {2, 33, 0, 0, 1, 1},
      {3, 1, 0, 0, 0, 1},      {2, 7, 0, 0, 0, 1},
      {2, 8, 0, 0, 0, 2},      {5, 33, 3, 0, 0, 3},     {1, 1531, 0, 0, 0, 1},   {4, 1000, 37, 0, 0, 4},
      {3, 1001, 5, 3, 0, 2},   {3, 1000, 0, 8, 0, 5},   {3, 1000, 0, 0, 1, 2},   {2, 4099, 100, 5, 1, 7},
      {1, 4096, 0, 0, 0, 256}, {2, 24, 0, 0, 0, 16},    {9, 64, 0, 0, 0, 1},     {1, 20000, 0, 0, 0, 3},
      {2, 17011, 11, 0, 0, 2},
  };
  Rng rng(1234);
  const size_t n = options().quick ? 2 : cases.size();
  for (size_t i = 0; i < n; ++i) {
    const bool wide = i % 3 == 2;
    forward_case<float>(cases[i], rng, wide);
    forward_case<__nv_bfloat16>(cases[i], rng, wide);
    if (!options().quick) forward_case<__half>(cases[i], rng, wide);
  }
  if (options().quick) return;
  for (int64_t splits : {1, 2, 5}) {
    special_rows<float>(splits);
    special_rows<__nv_bfloat16>(splits);
    special_rows<__half>(splits);
  }
  bad_arguments();
}

// ---- backward ----
struct BwdCase {
  int64_t rows, cols, col_begin, pad, skew, grad_pad, grad_skew, splits;
};

// grad[r, c] = g_r (W_r exp(z - lse_r) - w_rc), within what fp32 (expf of z - lse, the scale, the target's
// subtraction) and the rounding to storage allow.
template <typename T>
void backward_case(const BwdCase& cs, Rng& rng, bool wide) {
  const int64_t rows = cs.rows, cols = cs.cols, rs = cols + cs.pad, grs = cols + cs.grad_pad;
  Logits<T> z = random_logits<T>(rows, cols, rs, rng, wide);
  const Csr t = random_targets(rows, cs.col_begin + cols + 40, rng);
  if (rows > 1)  // row 1 has no targets: its gradient is exactly 0 whatever its logits hold
    for (int64_t c = 0; c < cols; c += 7) z.set(1, c, c % 2 ? NAN : INFINITY);
  std::vector<float> g(rows);
  std::vector<double> lse(rows);
  for (int64_t r = 0; r < rows; ++r) {
    g[r] = r == 2 ? 0.f : static_cast<float>(0.5 + r);
    const RowRef ref = reference_row(z, r, cs.col_begin, t);
    lse[r] = ref.mx + std::log(ref.se);
  }
  const DevCsr dt(t);
  Dev<T> dz(z.stored, static_cast<size_t>(cs.skew));
  Dev<float> dg(g);
  Dev<double> dl(lse);
  Dev<T> grad(static_cast<size_t>((rows - 1) * grs + cols), static_cast<size_t>(cs.grad_skew));
  backward(dtype_of<T>(), dg.p, dz.p, rows, cols, rs, dl.p, cs.col_begin, dt, cs.splits, grad.p, grs);
  const std::vector<T> out = grad.get();
  std::vector<double> got, want, tol, gap;
  const double floor_abs = std::is_same_v<T, __half> ? 0x1p-24 : 1e-37;  // f16 subnormal spacing
  for (int64_t r = 0; r < rows; ++r) {
    double W = 0.0;
    for (int64_t j = t.off[r]; j < t.off[r + 1]; ++j) W += t.w[j];
    for (int64_t c = 0; c < cols; ++c) {
      double soft = 0.0, tgt = 0.0, span = 0.0;
      if (t.off[r] != t.off[r + 1]) {
        span = std::fabs(z.at(r, c) - lse[r]) + 2.0;
        soft = g[r] * W * std::exp(z.at(r, c) - lse[r]);
        for (int64_t j = t.off[r]; j < t.off[r + 1]; ++j)
          if (t.idx[j] == cs.col_begin + c) tgt = static_cast<double>(g[r]) * t.w[j];
      }
      const double w = soft - tgt;
      got.push_back(to_f<T>(out[r * grs + c]));
      want.push_back(w);
      tol.push_back(unit_roundoff<T>() * std::fabs(w) + 8 * kU32 * (span * std::fabs(soft) + std::fabs(tgt)) +
                    floor_abs * (1.0 + std::fabs(g[r])));
    }
    if (r + 1 < rows)
      for (int64_t c = cols; c < grs; ++c) gap.push_back(to_f<T>(out[r * grs + c]));
  }
  const std::string tag = fmt("%s rows=%ld cols=%ld col_begin=%ld stride=%ld skew=%ld grad_stride=%ld grad_skew=%ld "
                              "splits=%ld", name_of<T>(), rows, cols, cs.col_begin, rs, cs.skew, grs, cs.grad_skew,
                              cs.splits);
  compare(tag + " grad", got, want, tol);
  compare_exact(tag + " gaps between gradient rows (never written)", gap, std::vector<double>(gap.size(), NAN));
}

HARNESS_FAMILY(softce_backward, "softce_backward", "backward_kernel")
void softce_backward() {
  // rows, cols, col_begin, pad, skew, grad pad, grad skew, splits
  const std::vector<BwdCase> cases = {
      {3, 2000, 0, 0, 0, 0, 0, 2},    {3, 1001, 0, 0, 1, 3, 1, 1},   {3, 40, 0, 0, 0, 0, 0, 2},
      {3, 33, 0, 0, 1, 0, 0, 1},      {3, 1, 0, 0, 0, 0, 0, 1},
      {4, 7, 2, 0, 0, 3, 0, 1},       {3, 8, 0, 0, 0, 8, 0, 2},      {5, 33, 3, 0, 0, 0, 0, 3},
      {3, 1531, 0, 0, 0, 0, 0, 1},    {4, 1000, 37, 0, 0, 8, 0, 4},  {3, 1001, 5, 3, 0, 3, 0, 2},
      {3, 1000, 0, 0, 0, 0, 1, 2},    {3, 1000, 0, 0, 1, 0, 0, 3},   {3, 4099, 100, 5, 1, 5, 1, 7},
      {3, 4096, 0, 0, 0, 0, 0, 256},  {3, 24, 0, 0, 0, 0, 0, 16},    {9, 64, 0, 0, 0, 0, 0, 1},
      {3, 20000, 0, 0, 0, 0, 0, 3},
  };
  Rng rng(99);
  const size_t n = options().quick ? 2 : cases.size();
  for (size_t i = 0; i < n; ++i) {
    const bool wide = i % 3 == 2;
    backward_case<float>(cases[i], rng, wide);
    backward_case<__nv_bfloat16>(cases[i], rng, wide);
    if (!options().quick) backward_case<__half>(cases[i], rng, wide);
  }
}

// ---- the split-count comparison of the GPU test ----
template <typename T>
void split_gradient(int64_t rows, int64_t cols) {
  Rng rng(static_cast<uint64_t>(cols));
  Logits<T> z(rows, cols, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) z.set(r, c, static_cast<float>(4.0 * rng.normal()));
  Csr t = random_targets(rows, cols, rng, 8);
  const DevCsr dt(t);
  Dev<T> dz(z.stored);
  Dev<float> ones(std::vector<float>(rows, 1.f));
  // auto = the split count the GPU test's "auto" gives on an H200 (132 SMs)
  const std::vector<int64_t> split_list = {1, 7, sc::choose_splits(rows, cols, 132)};
  std::vector<std::vector<double>> lses, grads, fixed;
  for (int64_t splits : split_list) {
    const FwdOut o = run_forward(z, dt, 0, splits, 0);
    std::vector<double> lse(rows);
    for (int64_t r = 0; r < rows; ++r) lse[r] = o.mx[r] + std::log(o.se[r]);  // as soft_ce_composite.cpp
    Dev<double> dl(lse), dl1(lses.empty() ? lse : lses[0]);
    Dev<T> grad(static_cast<size_t>(rows * cols)), grad_fixed(static_cast<size_t>(rows * cols));
    backward(dtype_of<T>(), ones.p, dz.p, rows, cols, cols, dl.p, 0, dt, splits, grad.p, cols);
    backward(dtype_of<T>(), ones.p, dz.p, rows, cols, cols, dl1.p, 0, dt, splits, grad_fixed.p, cols);
    lses.push_back(lse);
    grads.push_back(as_double(grad.get()));
    fixed.push_back(as_double(grad_fixed.get()));
  }
  const std::string tag = fmt("%s B=%ld V=%ld", name_of<T>(), rows, cols);
  for (size_t i = 1; i < split_list.size(); ++i) {
    const std::string st = tag + fmt(" splits %ld vs 1", split_list[i]);
    // The new assertion, part 1: backward on one fixed lse is the same bit for bit for every split count.
    compare_exact(st + " gradient on one fixed lse", fixed[i], fixed[0]);
    // Part 2: end to end, lse differs by fp32 rounding of the sum of exps only, and each gradient element by
    // what that difference explains (d grad / d lse = -its softmax part), by the fp32 rounding of z - lse in
    // the exponent (a few ulps of |z - lse|), and by one rounding to storage each.
    std::vector<double> dl_got, dl_want, dl_tol, g_tol;
    int64_t lse_differ = 0, elems_differ = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const double dlse = lses[i][r] - lses[0][r];
      lse_differ += dlse != 0.0;
      dl_got.push_back(dlse), dl_want.push_back(0.0), dl_tol.push_back(2 * kSumExpRel);
      for (int64_t c = 0; c < cols; ++c) {
        double tgt = 0.0;
        for (int64_t j = t.off[r]; j < t.off[r + 1]; ++j)
          if (t.idx[j] == c) tgt = t.w[j];
        const double g1 = grads[0][r * cols + c], soft = g1 + tgt;
        const double span = std::fabs(z.at(r, c) - lses[0][r]) + 2.0;
        g_tol.push_back(std::fabs(soft) * (std::fabs(dlse) * 1.01 + 4 * kU32 * span) +
                        2 * unit_roundoff<T>() * std::fabs(g1) + 1e-37);
        elems_differ += grads[i][r * cols + c] != g1;
      }
    }
    compare(st + " lse difference", dl_got, dl_want, dl_tol);
    compare(st + " end-to-end gradient", grads[i], grads[0], g_tol);
    // What the old assertion (torch.equal of the end-to-end gradients) sees:
    std::printf("  %s: lse differs in %ld of %ld rows; old bitwise check: %ld of %ld gradient elements differ%s\n",
                st.c_str(), lse_differ, rows, elems_differ, rows * cols, elems_differ ? " (it fails)" : "");
  }
}

HARNESS_FAMILY(softce_split_gradient, "softce_split_gradient", "forward_kernel, merge_kernel, backward_kernel")
void softce_split_gradient() {
  // the GPU test's shapes that an emulator runs in seconds
  split_gradient<float>(2, 40000);
  if (!options().quick) {
    split_gradient<__nv_bfloat16>(2, 40000);
    split_gradient<float>(24, 17011);
  }
}

}  // namespace
