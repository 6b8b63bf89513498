// The soft-CE kernels as the fused ops call them (csrc/soft_ce/soft_ce_cuda.cu) against float64 references:
//   softce_loss       loss_cuda (forward_kernel's partials, then finish_kernel): lse and the loss per row, their
//                     sum and their mean over the rows with targets (and the divisor, norm), over vocabularies
//                     1, 7, 1531, 17011, 131073, splits, row strides and offsets that start rows off the
//                     16-byte grid (the peeled scalar head and tail: the aligned middle must still go in 16-byte
//                     loads, counted), NaN / +-inf rows, rows without targets, broken CSR; the launches a call
//                     makes; bit-for-bit repeats; finish_cuda over vocabulary-chunk partials (the fused
//                     linear loss's [4][parts][rows] layout); the launchers' refusals;
//   softce_grad_rows  backward_cuda with GradRows: one broadcast upstream value divided by norm (the gradient
//                     of a sum or a mean), strided upstream values, gradient rows in and out of the logits'
//                     16-byte phase (vector and element paths, counted), broken CSR rows.
#include "soft_ce_common.h"

using namespace softce_drv;

namespace {

constexpr sc::Reduction kReductions[] = {sc::Reduction::kNone, sc::Reduction::kSum, sc::Reduction::kMean};
const char* reduction_name(sc::Reduction r) {
  return r == sc::Reduction::kNone ? "none" : (r == sc::Reduction::kSum ? "sum" : "mean");
}

// Elements from address p to the next 16-byte boundary, and the whole 16-byte vectors a row of `cols` elements
// holds past them: what the kernels must read as vectors (written out here, not taken from soft_ce_math.h).
template <typename T>
int64_t row_vectors(const T* p, int64_t cols) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  const int64_t head = std::min<int64_t>(static_cast<int64_t>((16 - addr % 16) % 16 / sizeof(T)), cols);
  return (cols - head) / static_cast<int64_t>(16 / sizeof(T));
}

// Relative error bound of the kernels' fp32 sum of exps: a thread adds ~cols / (splits * threads) values in
// order (each add and each rescale of the running sum by expf(old max - new max) a few units of rounding),
// then the block's tree (< 20 levels); the threads a block gets are soft_ce_cuda.cu's threads_for.
template <typename T>
double sum_exp_rel(int64_t cols, int64_t splits) {
  const int64_t vec = 16 / sizeof(T), per_split = (cols + splits - 1) / splits;
  const int64_t threads = std::clamp<int64_t>(((per_split + 2 * vec - 1) / (2 * vec) + 31) / 32 * 32, 32, 512);
  return kU32 * (3.0 * double((per_split + threads - 1) / threads) + 24.0);
}

// The float64 loss of each row: lse = max + log(sum of exp), loss = W lse - dot (0 without target weight).
struct LossRef {
  std::vector<double> lse, loss, lse_tol, loss_tol;
  double sum = 0, sum_tol = 0, with_targets = 0;
};
template <typename T>
LossRef loss_reference(const Logits<T>& z, const Csr& t, double se_rel) {
  LossRef L;
  for (int64_t r = 0; r < z.rows; ++r) {
    const RowRef ref = reference_row(z, r, 0, t);
    const double lse = ref.mx + std::log(ref.se);
    const double l = ref.wsum == 0.0 ? 0.0 : ref.wsum * lse - ref.dot;
    // lse: the sum of exps' relative error, through the log; the loss that times W, the float64 terms, one
    // rounding to float32
    const double lt = 1.01 * se_rel + 1e-15 * std::fabs(lse);
    const double t_l = ref.wsum == 0.0 ? 0.0 : ref.wsum * lt + 1e-12 * (std::fabs(ref.wsum * lse) + std::fabs(ref.dot));
    L.lse.push_back(lse), L.lse_tol.push_back(lt);
    L.loss.push_back(l), L.loss_tol.push_back(t_l + kU32 * std::fabs(l));
    L.sum += l, L.sum_tol += t_l;
    L.with_targets += t.off[r + 1] != t.off[r];
  }
  return L;
}

struct LossCase {
  int64_t rows, cols, pad, skew, splits;
};

template <typename T>
void loss_case(const LossCase& cs, Rng& rng, bool wide) {
  const int64_t rows = cs.rows, cols = cs.cols, rs = cols + cs.pad;
  const Logits<T> z = random_logits<T>(rows, cols, rs, rng, wide);
  const Csr t = random_targets(rows, cols + 3, rng);  // a few ids past the logits: weight without a dot term
  const double se_rel = sum_exp_rel<T>(cols, cs.splits);
  const LossRef ref = loss_reference(z, t, se_rel);
  const DevCsr dt(t);
  Dev<T> dz(z.stored, static_cast<size_t>(cs.skew));
  int64_t vectors = 0;
  for (int64_t r = 0; r < rows; ++r) vectors += row_vectors(dz.p + r * rs, cols);
  const std::string tag = fmt("%s loss rows=%ld cols=%ld stride=%ld skew=%ld splits=%ld", name_of<T>(), rows, cols, rs,
                              cs.skew, cs.splits);
  Dev<double> work(static_cast<size_t>(4 * rows * cs.splits));
  for (sc::Reduction red : kReductions) {
    const bool none = red == sc::Reduction::kNone;
    const std::string st = tag + " " + reduction_name(red);
    Dev<double> lse(static_cast<size_t>(rows));
    Dev<float> out(none ? static_cast<size_t>(rows) : 1), norm(1);
    const long l0 = launches(), v0 = vector_loads();
    loss(dtype_of<T>(), dz.p, rows, cols, rs, dt, cs.splits, red, rows ? work.p : nullptr, lse.p, out.p, norm.p);
    if (emulated()) {
      const long want = rows > 0 ? 2 : 1;  // row kernel + finish; no rows: the finish alone writes loss / norm
      expect(launches() - l0 == want, "%s: %ld launches, want %ld", st.c_str(), launches() - l0, want);
      expect(vector_loads() - v0 == vectors, "%s: %ld 16-byte loads, want %ld (every whole vector of the rows)",
             st.c_str(), vector_loads() - v0, vectors);
    }
    compare(st + " lse", lse.get(), ref.lse, ref.lse_tol);
    const double d = red == sc::Reduction::kMean ? std::max(1.0, ref.with_targets) : 1.0;
    const std::vector<double> got = as_double(out.get()), nrm = as_double(norm.get());
    if (none) {
      compare(st + " loss", got, ref.loss, ref.loss_tol);
      compare_exact(st + " norm", nrm, {1.0});
    } else {
      compare(st + " loss", got, {ref.sum / d}, {ref.sum_tol / d + kU32 * std::fabs(ref.sum / d)});
      compare_exact(st + " norm (the mean's divisor)", nrm, {d});
      Dev<double> lse2(static_cast<size_t>(rows));
      Dev<float> out2(1), norm2(1);
      loss(dtype_of<T>(), dz.p, rows, cols, rs, dt, cs.splits, red, rows ? work.p : nullptr, lse2.p, out2.p,
           norm2.p);
      compare_exact(st + " repeat loss", as_double(out2.get()), got);
      compare_exact(st + " repeat lse", lse2.get(), lse.get());
    }
  }
  // without norm (kNone allows it): nothing written there, the same loss
  if (rows > 0) {
    Dev<double> lse(static_cast<size_t>(rows));
    Dev<float> out(static_cast<size_t>(rows));
    loss(dtype_of<T>(), dz.p, rows, cols, rs, dt, cs.splits, sc::Reduction::kNone, work.p, lse.p, out.p, nullptr);
    compare(tag + " none without norm", as_double(out.get()), ref.loss, ref.loss_tol);
  }
}

// NaN / -inf / +inf rows and rows without targets through the loss: NaN rows with targets give NaN, rows
// without targets exactly 0 (even a NaN row), the mean counts rows with targets; with every split count.
template <typename T>
void loss_special(int64_t splits) {
  const int64_t rows = 7, cols = 1531;
  Rng rng(11 + splits);
  Logits<T> z = random_logits<T>(rows, cols, cols, rng, false);
  z.set(0, 3, NAN);                                          // row 0: NaN in the head (skew 1), has targets
  for (int64_t c = 0; c < cols; ++c) z.set(1, c, -INFINITY);  // row 1: all -inf, no targets
  z.set(2, cols - 1, NAN);                                   // row 2: NaN in the tail, no targets
  z.set(3, 700, INFINITY);                                   // row 3: +inf in a vector, has targets
  for (int64_t c = 0; c < cols; ++c) z.set(4, c, c == 9 ? 2.f : -INFINITY);  // row 4: one finite value
  Csr t;
  t.off = {0, 1, 1, 1, 2, 3, 5, 6};
  t.idx = {5, 1530, 9, 0, 1530, 17};
  t.w = {1, 1, 1, 0.5f, 0.5f, 1};
  const LossRef ref = loss_reference(z, t, sum_exp_rel<T>(cols, splits));
  const DevCsr dt(t);
  Dev<T> dz(z.stored, 1);
  Dev<double> work(static_cast<size_t>(4 * rows * splits));
  const std::string tag = fmt("%s loss special rows splits=%ld", name_of<T>(), splits);
  for (sc::Reduction red : kReductions) {
    const bool none = red == sc::Reduction::kNone;
    Dev<double> lse(rows);
    Dev<float> out(none ? rows : 1), norm(1);
    loss(dtype_of<T>(), dz.p, rows, cols, cols, dt, splits, red, work.p, lse.p, out.p, norm.p);
    const std::string st = tag + " " + reduction_name(red);
    const std::vector<double> got = as_double(out.get()), l = lse.get();
    expect(std::isnan(l[0]) && l[1] == -INFINITY && std::isnan(l[2]) && std::isnan(l[3]) && l[4] == 2.0,
           "%s: lse of the special rows %g %g %g %g %g (want NaN, -inf, NaN, NaN, 2)", st.c_str(), l[0], l[1], l[2],
           l[3], l[4]);
    if (none) {
      compare(st + " loss", got, ref.loss, ref.loss_tol);
      expect(got[1] == 0.0 && got[2] == 0.0, "%s: rows without targets give %g, %g (want exactly 0)", st.c_str(),
             got[1], got[2]);
    } else {
      expect(std::isnan(got[0]), "%s: a NaN row with targets gives a %g %s", st.c_str(), got[0], reduction_name(red));
      compare_exact(st + " norm", as_double(norm.get()), {red == sc::Reduction::kMean ? 5.0 : 1.0});
    }
  }
}

// Broken CSR (what SparseTargets refuses): those rows' loss NaN (so the sum and mean), the others their values.
template <typename T>
void loss_broken_csr(int64_t splits) {
  struct Bad {
    std::vector<int64_t> off, idx;
    std::vector<int> rows;
    const char* what;
  };
  const std::vector<Bad> bads = {
      {{0, 2, 2, 3, 4, 5}, {9, 3, 1, 2, 3}, {0}, "unsorted"},
      {{0, 1, 2, 3, 4, 9}, {0, 1, 2, 3, 4}, {4}, "last offset past nnz"},
      {{0, 1, -5, 3, 4, 5}, {0, 1, 2, 3, 4}, {1, 2}, "negative offset"},
      {{0, 1, 2, 3, 4, 5}, {0, -1, 2, 3, 4}, {1}, "negative id"},
      {{2, 2, 3, 3, 4, 5}, {0, 1, 2, 3, 4}, {0}, "first offset not 0"},
  };
  const int64_t rows = 5, cols = 1531;
  Rng rng(23);
  const Logits<T> z = random_logits<T>(rows, cols, cols, rng, false);
  Dev<T> dz(z.stored, 1);
  Dev<double> work(static_cast<size_t>(4 * rows * splits));
  for (const Bad& b : bads) {
    Csr c;
    c.off = b.off, c.idx = b.idx;
    c.w.assign(b.idx.size(), 1.f);
    const DevCsr dc(c);
    const std::string tag = fmt("%s loss broken CSR (%s) splits=%ld", name_of<T>(), b.what, splits);
    Dev<double> lse(rows);
    Dev<float> out(rows), sum(1), norm(1);
    loss(dtype_of<T>(), dz.p, rows, cols, cols, dc, splits, sc::Reduction::kNone, work.p, lse.p, out.p, nullptr);
    const std::vector<double> got = as_double(out.get());
    for (int64_t r = 0; r < rows; ++r) {
      const bool bad = std::find(b.rows.begin(), b.rows.end(), r) != b.rows.end();
      expect(bad ? std::isnan(got[r]) : std::isfinite(got[r]), "%s: row %ld loss %g", tag.c_str(), r, got[r]);
    }
    loss(dtype_of<T>(), dz.p, rows, cols, cols, dc, splits, sc::Reduction::kSum, work.p, lse.p, sum.p, norm.p);
    expect(std::isnan(to_f<float>(sum.get()[0])), "%s: the sum is %g, want NaN", tag.c_str(), sum.get()[0]);
  }
}

// finish_cuda over partials that forward_cuda wrote for column chunks of the rows (part c = chunk c, each
// chunk's rows starting off the 16-byte grid): the loss of the whole rows.
template <typename T>
void finish_chunks(int64_t rows, int64_t cols, int64_t chunk, int64_t splits, Rng& rng) {
  Logits<T> z = random_logits<T>(rows, cols, cols, rng, true);
  if (rows > 2) z.set(2, cols / 2, NAN);
  const Csr t = random_targets(rows, cols, rng);
  // each chunk's sum of exps, then P - 1 merges (a rescale by expf and an add each)
  const LossRef ref = loss_reference(z, t, sum_exp_rel<T>(chunk, splits) + 4 * kU32 * double(cols / chunk + 1));
  const DevCsr dt(t);
  Dev<T> dz(z.stored);
  const int64_t P = (cols + chunk - 1) / chunk;
  Dev<double> parts(static_cast<size_t>(4 * P * rows)), work(static_cast<size_t>(4 * rows * splits));
  for (int64_t c = 0; c < P; ++c) {
    const int64_t c0 = c * chunk, n = std::min(chunk, cols - c0);
    double* o = parts.p + c * rows;
    forward(dtype_of<T>(), dz.p + c0, rows, n, cols, c0, dt, splits, splits > 1 ? work.p : nullptr, o, o + P * rows,
            o + 2 * P * rows, o + 3 * P * rows);
  }
  const std::string tag = fmt("%s finish rows=%ld cols=%ld chunks of %ld (%ld parts) splits=%ld", name_of<T>(), rows,
                              cols, chunk, P, splits);
  for (sc::Reduction red : kReductions) {
    const bool none = red == sc::Reduction::kNone;
    const std::string st = tag + " " + reduction_name(red);
    Dev<double> lse(rows);
    Dev<float> out(none ? rows : 1), norm(1);
    const long l0 = launches();
    finish(parts.p, rows, P, dt.off.p, red, lse.p, out.p, norm.p);
    if (emulated()) expect(launches() - l0 == 1, "%s: %ld launches, want 1", st.c_str(), launches() - l0);
    compare(st + " lse", lse.get(), ref.lse, ref.lse_tol);
    const double d = red == sc::Reduction::kMean ? std::max(1.0, ref.with_targets) : 1.0;
    if (none) compare(st + " loss", as_double(out.get()), ref.loss, ref.loss_tol);
    else compare(st + " loss", as_double(out.get()), {ref.sum / d}, {ref.sum_tol / d + kU32 * std::fabs(ref.sum / d)});
    compare_exact(st + " norm", as_double(norm.get()), {d});
  }
}

void loss_bad_arguments() {
  Csr t;
  t.off = {0, 0};
  const DevCsr dt(t);
  Dev<float> z(16), out(1), norm(1);
  Dev<double> lse(1), work(4 * 300);
  const auto f32 = wslfast::DType::kFloat32;
  const auto sum = sc::Reduction::kSum;
  expect_throws("loss splits 0", [&] { loss(f32, z.p, 1, 16, 16, dt, 0, sum, work.p, lse.p, out.p, norm.p); });
  expect_throws("loss splits 257",
                [&] { loss(f32, z.p, 1, 16, 16, dt, sc::kMaxSplits + 1, sum, work.p, lse.p, out.p, norm.p); });
  expect_throws("loss without workspace", [&] { loss(f32, z.p, 1, 16, 16, dt, 1, sum, nullptr, lse.p, out.p, norm.p); });
  expect_throws("loss float64",
                [&] { loss(wslfast::DType::kFloat64, z.p, 1, 16, 16, dt, 1, sum, work.p, lse.p, out.p, norm.p); });
  expect_throws("finish with 0 parts", [&] { finish(work.p, 1, 0, dt.off.p, sum, lse.p, out.p, norm.p); });
  expect_throws("finish without parts", [&] { finish(nullptr, 1, 1, dt.off.p, sum, lse.p, out.p, norm.p); });
  // no rows, no norm: nothing to launch, nothing written
  const long l0 = launches();
  loss(f32, nullptr, 0, 16, 16, dt, 1, sc::Reduction::kNone, nullptr, nullptr, nullptr, nullptr);
  if (emulated()) expect(launches() == l0, "loss of no rows without norm launched %ld kernels", launches() - l0);
}

HARNESS_FAMILY(softce_loss, "softce_loss", "forward_kernel, finish_kernel<false|true> (loss_cuda, finish_cuda)")
void softce_loss() {
  // rows, cols, row-stride pad, skew (elements off the allocation's 16-byte grid), splits; the first two (the
  // TSan subset) have several warps a block and a peeled head
  const std::vector<LossCase> cases = {
      {3, 1531, 0, 3, 3},  {2, 1531, 5, 1, 2},  {0, 17, 0, 0, 1},    {3, 1, 0, 0, 1},    {2, 7, 0, 1, 1},
      {3, 7, 0, 0, 2},     {4, 1531, 0, 0, 1},  {5, 1500, 0, 0, 1},  {3, 1500, 1, 2, 1}, {2, 17011, 0, 0, 2},
      {2, 17000, 0, 5, 3}, {1, 40, 0, 3, 16},   {33, 9, 2, 1, 1},    {2, 27000, 0, 1, 4},
      {2, 131073, 0, 0, 16}, {1, 131073, 0, 7, 3},
  };
  Rng rng(4321);
  const size_t n = options().quick ? 2 : cases.size();
  for (size_t i = 0; i < n; ++i) {
    const bool wide = i % 3 == 2, big = cases[i].cols > 100000;
    loss_case<float>(cases[i], rng, wide);
    if (!big || cases[i].skew) loss_case<__nv_bfloat16>(cases[i], rng, wide);
    if (!options().quick && !big) loss_case<__half>(cases[i], rng, wide);
  }
  if (options().quick) {
    finish_chunks<__nv_bfloat16>(5, 1531, 512, 1, rng);
    return;
  }
  for (int64_t splits : {1, 2, 3}) {
    loss_special<float>(splits);
    loss_special<__nv_bfloat16>(splits);
    loss_special<__half>(splits);
    loss_broken_csr<float>(splits);
    loss_broken_csr<__nv_bfloat16>(splits);
  }
  finish_chunks<float>(5, 1531, 512, 1, rng);  // 3 chunks, the last short
  finish_chunks<__nv_bfloat16>(5, 1531, 512, 1, rng);
  finish_chunks<__half>(3, 17011, 4099, 2, rng);  // 5 chunks of 2 splits each (merged per chunk first)
  finish_chunks<float>(4, 33, 7, 1, rng);
  finish_chunks<float>(1, 300, 300, 1, rng);  // one part
  loss_bad_arguments();
}

// ---- backward with GradRows ----
struct GradCase {
  int64_t rows, cols, pad, skew, grad_pad, grad_skew, splits;
};

// pass 0: one upstream value 1.5 for every row (stride 0) divided by norm, the gradient of a mean; pass 1:
// strided upstream values (every other float, the others NaN: never read), no norm.
template <typename T>
void grad_rows_case(const GradCase& cs, Rng& rng) {
  const int64_t rows = cs.rows, cols = cs.cols, rs = cols + cs.pad, grs = cols + cs.grad_pad;
  const Logits<T> z = random_logits<T>(rows, cols, rs, rng, false);
  const Csr t = random_targets(rows, cols + 5, rng);
  const LossRef ref = loss_reference(z, t, 0.0);
  const DevCsr dt(t);
  Dev<T> dz(z.stored, static_cast<size_t>(cs.skew));
  Dev<double> lse(ref.lse);
  const float norm_v = static_cast<float>(std::max(1.0, ref.with_targets));
  std::vector<float> strided(static_cast<size_t>(2 * rows));
  for (int64_t r = 0; r < 2 * rows; ++r) strided[r] = r % 2 ? NAN : 0.25f + 0.5f * float(r);
  Dev<float> one(std::vector<float>{1.5f}), norm(std::vector<float>{norm_v}), dstrided(strided);
  const size_t gn = rows > 0 ? static_cast<size_t>((rows - 1) * grs + cols) : 0;
  for (int pass = 0; pass < 2; ++pass) {
    const sc::GradRows gr = pass == 0 ? sc::GradRows{one.p, 0, norm.p} : sc::GradRows{dstrided.p, 2, nullptr};
    Dev<T> grad(gn, static_cast<size_t>(cs.grad_skew));
    int64_t vectors = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const auto a = reinterpret_cast<uintptr_t>(dz.p + r * rs), b = reinterpret_cast<uintptr_t>(grad.p + r * grs);
      if (a % 16 == b % 16) vectors += row_vectors(dz.p + r * rs, cols);  // the same phase: the vector path
    }
    const long l0 = launches(), v0 = vector_loads();
    backward_rows(dtype_of<T>(), gr, dz.p, rows, cols, rs, lse.p, 0, dt, cs.splits, grad.p, grs);
    const std::string tag = fmt("%s grad rows %s rows=%ld cols=%ld stride=%ld skew=%ld grad_stride=%ld grad_skew=%ld "
                                "splits=%ld", name_of<T>(), pass == 0 ? "broadcast/norm" : "strided", rows, cols, rs,
                                cs.skew, grs, cs.grad_skew, cs.splits);
    if (emulated()) {
      expect(launches() - l0 == 1, "%s: %ld launches, want 1", tag.c_str(), launches() - l0);
      expect(vector_loads() - v0 == vectors, "%s: %ld 16-byte loads, want %ld", tag.c_str(), vector_loads() - v0,
             vectors);
    }
    const std::vector<T> out = grad.get();
    std::vector<double> got, want, tol, gap;
    const double floor_abs = std::is_same_v<T, __half> ? 0x1p-24 : 1e-37;
    for (int64_t r = 0; r < rows; ++r) {
      const double g = pass == 0 ? double(1.5f / norm_v) : double(strided[2 * r]);  // the kernel's float g
      double W = 0.0;
      for (int64_t j = t.off[r]; j < t.off[r + 1]; ++j) W += t.w[j];
      for (int64_t c = 0; c < cols; ++c) {
        double soft = 0.0, tgt = 0.0, span = 0.0;
        if (t.off[r] != t.off[r + 1]) {
          span = std::fabs(z.at(r, c) - ref.lse[r]) + 2.0;
          soft = g * W * std::exp(z.at(r, c) - ref.lse[r]);
          for (int64_t j = t.off[r]; j < t.off[r + 1]; ++j)
            if (t.idx[j] == c) tgt = g * t.w[j];
        }
        got.push_back(to_f<T>(out[r * grs + c]));
        want.push_back(soft - tgt);
        tol.push_back(unit_roundoff<T>() * std::fabs(soft - tgt) + 8 * kU32 * (span * std::fabs(soft) + std::fabs(tgt)) +
                      floor_abs * (1.0 + std::fabs(g)));
      }
      if (r + 1 < rows)
        for (int64_t c = cols; c < grs; ++c) gap.push_back(to_f<T>(out[r * grs + c]));
    }
    compare(tag + " grad", got, want, tol);
    compare_exact(tag + " gaps between gradient rows (never written)", gap, std::vector<double>(gap.size(), NAN));
  }
}

// Broken CSR rows under a broadcast gradient: NaN gradient rows, the others finite.
template <typename T>
void grad_rows_broken_csr(int64_t splits) {
  const int64_t rows = 4, cols = 700;
  Rng rng(31);
  const Logits<T> z = random_logits<T>(rows, cols, cols, rng, false);
  Csr c;
  c.off = {0, 2, 2, 3, 4};
  c.idx = {9, 3, 1, 2};  // row 0 unsorted
  c.w.assign(4, 1.f);
  const DevCsr dc(c);
  Dev<T> dz(z.stored, 1), grad(static_cast<size_t>(rows * cols));
  Dev<double> lse(std::vector<double>(rows, 8.0));
  Dev<float> one(std::vector<float>{1.f}), norm(std::vector<float>{3.f});
  backward_rows(dtype_of<T>(), sc::GradRows{one.p, 0, norm.p}, dz.p, rows, cols, cols, lse.p, 0, dc, splits, grad.p,
                cols);
  const std::vector<T> g = grad.get();
  for (int64_t r = 0; r < rows; ++r) {
    int64_t nan = 0;
    for (int64_t col = 0; col < cols; ++col) nan += std::isnan(to_f<T>(g[r * cols + col]));
    expect(r == 0 ? nan == cols : nan == 0, "%s grad rows broken CSR splits=%ld: row %ld has %ld NaN of %ld",
           name_of<T>(), splits, r, nan, cols);
  }
}

HARNESS_FAMILY(softce_grad_rows, "softce_grad_rows", "backward_kernel (GradRows: broadcast, strided, norm)")
void softce_grad_rows() {
  // rows, cols, pad, skew, grad pad, grad skew, splits: the same phase (vectors between a peeled head and
  // tail), different phases (element by element), strides, splits
  const std::vector<GradCase> cases = {
      {3, 1531, 0, 3, 0, 3, 3},  {3, 1531, 5, 1, 0, 0, 2}, {2, 7, 0, 1, 0, 1, 1},     {3, 1, 0, 0, 0, 0, 1},
      {4, 1500, 1, 2, 1, 2, 1},  {2, 17011, 0, 0, 0, 0, 2}, {2, 17000, 0, 5, 3, 1, 3}, {1, 40, 0, 3, 0, 3, 16},
      {33, 9, 2, 1, 2, 1, 1},    {1, 131073, 0, 7, 0, 7, 3},
  };
  Rng rng(777);
  const size_t n = options().quick ? 2 : cases.size();
  for (size_t i = 0; i < n; ++i) {
    grad_rows_case<float>(cases[i], rng);
    grad_rows_case<__nv_bfloat16>(cases[i], rng);
    if (!options().quick && cases[i].cols < 100000) grad_rows_case<__half>(cases[i], rng);
  }
  if (options().quick) return;
  for (int64_t splits : {1, 3}) {
    grad_rows_broken_csr<float>(splits);
    grad_rows_broken_csr<__half>(splits);
  }
  Csr t;
  t.off = {0, 0};
  const DevCsr dt(t);
  Dev<float> z(16), g(1);
  Dev<double> lse(1);
  expect_throws("backward (GradRows) splits 0", [&] {
    backward_rows(wslfast::DType::kFloat32, sc::GradRows{g.p, 0, nullptr}, z.p, 1, 16, 16, lse.p, 0, dt, 0, z.p, 16);
  });
}

}  // namespace
