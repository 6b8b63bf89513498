// The soft-CE forward kernels (csrc/soft_ce/soft_ce_cuda.cu) against float64 references:
//   softce_forward  forward_kernel (+ merge_kernel above one split): row max, sum of exp, target dot, weight
//                   sum over odd shapes, vocabulary splits, offsets, row strides, misaligned rows (the
//                   element path), NaN / -inf rows, broken CSR rows (and their gradient rows), bit-for-bit
//                   repeats, the launchers' refusals.
#include "soft_ce_common.h"

using namespace softce_drv;

namespace {

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

}  // namespace
