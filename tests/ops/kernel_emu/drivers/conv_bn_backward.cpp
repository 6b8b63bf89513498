// The conv+BN backward kernels (csrc/conv_bn/conv_bn_cuda_mma.cu, conv_bn_cuda_mma_wgrad.cu,
// conv_bn_cuda.cu) against float64 references:
//   conv_fast_dgrad  conv_gemm_kernel<.., kDgrad = true>: the data gradient with the BN+ReLU backward in its
//                    loader (g = mask dy k + src p + q, as specified, rounded to storage), one GEMM per output
//                    phase of the stride (3x3 / 1x1 stride 2, stride 3, odd sizes, phases that no tap reaches:
//                    exact zeros), pixel pairs (4 channels a group), 8-channel groups, every flag combination;
//   conv_fast_wgrad  conv_wgrad_kernel + sum_splits_kernel: the weight gradient, m-splits summed in order,
//                    pixel pairs (and their refusal when D's rows pass one block); under workspace limits
//                    that force rounds of splits and one split a launch added in place: the same bits;
//   bn_elementwise   scale_shift_relu(_vec)_kernel (+ residual), channel_sums_kernel + reduce_parts_kernel
//                    (the backward's per-channel sums, bit for bit sum_parts_tree's order),
//                    backward_apply(_vec)_kernel (bit for bit the specified g, which the fused loaders also form).
#include "conv_bn_common.h"

using namespace convdrv;

namespace {

template <typename T>
struct GradInputs {
  Tensor<T> x, w, dy, src;
  Coefs c;
  std::vector<float> g;  // g as the kernels form it, rounded to storage
};

template <typename T>
GradInputs<T> grad_inputs(const cb::ConvShape& s, bool relu, bool use_pq, Rng& rng) {
  GradInputs<T> in;
  const int64_t cg = s.C / s.groups, fan = s.R * s.S * cg, M = rows_of(s);
  in.x = Tensor<T>::make(static_cast<size_t>(s.N * s.H * s.W * s.C), [&](size_t) { return rng.normal(); });
  in.w = Tensor<T>::make(static_cast<size_t>(s.K * fan), [&](size_t) { return rng.normal() / std::sqrt(double(fan)); });
  in.dy = Tensor<T>::make(static_cast<size_t>(M * s.K), [&](size_t) { return rng.normal(); });
  in.src = Tensor<T>::make(static_cast<size_t>(M * s.K), [&](size_t) { return rng.normal(); });
  in.c = random_coefs(s.K, rng);
  in.g.resize(static_cast<size_t>(M * s.K));
  for (size_t i = 0; i < in.g.size(); ++i) {
    const int64_t k = static_cast<int64_t>(i) % s.K;
    in.g[i] = round_to<T>(bn_grad(in.dy.f[i], in.src.f[i], in.c.ms[k], in.c.mt[k], in.c.k[k], in.c.p[k], in.c.q[k],
                                  relu, use_pq));
  }
  return in;
}

// Device copies of the coefficients; the arrays a flag switches off are not passed (nullptr), as allowed.
struct DevCoefs {
  Dev<float> ms, mt, k, p, q;
  explicit DevCoefs(const Coefs& c) : ms(c.ms), mt(c.mt), k(c.k), p(c.p), q(c.q) {}
  cb::BnReluGrad bn(const void* src, bool relu, bool use_pq) const {
    return {src, relu ? ms.p : nullptr, relu ? mt.p : nullptr, k.p, use_pq ? p.p : nullptr, use_pq ? q.p : nullptr,
            relu, use_pq};
  }
};

template <typename T>
void dgrad_case(const Sh& sh, bool relu, bool use_pq, Rng& rng) {
  const cb::ConvShape s = shape_of(sh);
  const std::string tag = tag_of(name_of<T>(), sh) + fmt(" relu=%d pq=%d", relu, use_pq);
  const GradInputs<T> in = grad_inputs<T>(s, relu, use_pq, rng);
  std::vector<double> dxr, dxa, dwr, dwa;
  grads_ref(s, operand<T>(in.g, true), operand<T>(in.w.f, true), in.x.f, dxr, dxa, dwr, dwa);
  Dev<T> dy(in.dy.s), src(in.src.s), wt(transpose_weights(s, in.w.s)), dx(in.x.s.size());
  const DevCoefs dc(in.c);
  dgrad_fast(dtype_of<T>(), dy.p, dc.bn(src.p, relu, use_pq), wt.p, dx.p, s);
  const double acc = acc_rel(double(s.R * s.S * (s.K / s.groups)));
  std::vector<double> tol(dxr.size());
  for (size_t i = 0; i < dxr.size(); ++i) tol[i] = unit_roundoff<T>() * std::fabs(dxr[i]) + acc * dxa[i];
  compare(tag + " dgrad", as_double(dx.get()), dxr, tol);
}

HARNESS_FAMILY(conv_fast_dgrad, "conv_fast_dgrad", "conv_gemm_kernel (data gradient, fused BN+ReLU backward)")
void conv_fast_dgrad() {
  Rng rng(11);
  // the data gradient's GEMM runs K -> C: pixel pairs where C / groups = 4 (any width), phases where stride > 1;
  // the first two (the TSan subset): pairs with 3x3 stride-2 phases, 8-channel groups with stride-2 phases
  const std::vector<Sh> shapes = {
      {3, 16, 11, 13, 16, 4, 3, 3, 2, 1},  {2, 16, 7, 9, 24, 2, 3, 3, 2, 1},   {3, 16, 11, 11, 16, 2, 3, 3, 1, 1},
      {1, 8, 9, 10, 80, 1, 2, 3, 3, 2},    {2, 128, 5, 5, 128, 32, 3, 3, 1, 1}, {2, 12, 6, 7, 20, 1, 3, 3, 2, 1},
      {2, 16, 5, 6, 32, 1, 1, 1, 2, 0},    {1, 72, 6, 6, 40, 1, 3, 3, 1, 1},   {1, 8, 1, 1, 8, 1, 1, 1, 1, 0},
      {2, 8, 7, 9, 8, 2, 1, 1, 2, 0},      {2, 24, 7, 9, 16, 1, 1, 1, 2, 0},   {1, 12, 5, 4, 12, 3, 3, 3, 3, 1},
      {2, 32, 8, 8, 32, 4, 3, 3, 2, 1},    {2, 8, 6, 6, 16, 2, 3, 3, 1, 1},
  };
  const size_t n = options().quick ? 2 : shapes.size();
  for (size_t i = 0; i < n; ++i) {
    const bool relu = i % 3 != 1, use_pq = i % 3 != 2;  // (1, 1), (0, 1), (1, 0) in turn
    dgrad_case<__nv_bfloat16>(shapes[i], relu, use_pq, rng);
    dgrad_case<float>(shapes[i], relu, use_pq, rng);
    if (!options().quick) dgrad_case<__half>(shapes[i], relu, use_pq, rng);
  }
  if (options().quick) return;
  const cb::ConvShape s = shape_of(shapes[0]);
  Dev<__nv_bfloat16> a(4096);
  Dev<float> k(24);
  expect_throws("dgrad without src", [&] {
    dgrad_fast(DType::kBFloat16, a.p, cb::BnReluGrad{nullptr, nullptr, nullptr, k.p, nullptr, nullptr, false, false},
               a.p, a.p, s);
  });
  expect_throws("dgrad with ReLU but no mask coefficients", [&] {
    dgrad_fast(DType::kBFloat16, a.p, cb::BnReluGrad{a.p, nullptr, nullptr, k.p, nullptr, nullptr, true, false}, a.p,
               a.p, s);
  });
}

template <typename T>
void wgrad_case(const Sh& sh, bool relu, bool use_pq, Rng& rng) {
  const cb::ConvShape s = shape_of(sh);
  const int64_t ws = wgrad_fast_workspace(s);
  const std::string tag = tag_of(name_of<T>(), sh) + fmt(" relu=%d pq=%d workspace=%ld", relu, use_pq, ws);
  const GradInputs<T> in = grad_inputs<T>(s, relu, use_pq, rng);
  std::vector<double> dxr, dxa, dwr, dwa;
  grads_ref(s, operand<T>(in.g, true), in.w.f, operand<T>(in.x.f, true), dxr, dxa, dwr, dwa);
  Dev<T> dy(in.dy.s), src(in.src.s), x(in.x.s);
  Dev<float> dw(in.w.s.size()), work(static_cast<size_t>(ws > 0 ? ws : 0));
  const DevCoefs dc(in.c);
  const cb::BnReluGrad bn = dc.bn(src.p, relu, use_pq);
  wgrad_fast(dtype_of<T>(), dy.p, bn, x.p, dw.p, ws > 0 ? work.p : nullptr, s);
  const double acc = acc_rel(double(rows_of(s)));
  std::vector<double> tol(dwr.size());
  for (size_t i = 0; i < dwr.size(); ++i) tol[i] = acc * dwa[i];
  const std::vector<double> got = as_double(dw.get());
  compare(tag + " wgrad", got, dwr, tol);
  if (ws == 0) return;  // one m-split: no workspace, nothing a limit changes
  // Under smaller workspace limits: rounds of two splits' partials (2 slices + 7 bytes), one split a launch
  // added into dw in place (a slice - 1 byte, 1 byte): within the limit, and the same bits as all at once.
  const int64_t slice = static_cast<int64_t>(in.w.s.size()) * 4;
  for (int64_t limit : {2 * slice + 7, slice - 1, int64_t(1)}) {
    const int64_t wl = wgrad_fast_workspace(s, limit);
    expect(wl * 4 <= limit && (limit >= 2 * slice) == (wl > 0), "%s: workspace %ld floats under a %ld-byte limit",
           tag.c_str(), wl, limit);
    Dev<float> dwl(in.w.s.size()), workl(static_cast<size_t>(wl > 0 ? wl : 0));
    wgrad_fast(dtype_of<T>(), dy.p, bn, x.p, dwl.p, wl > 0 ? workl.p : nullptr, s, limit);
    compare_exact(tag + fmt(" wgrad under a %ld-byte workspace limit (the same bits)", limit), as_double(dwl.get()),
                  got);
  }
}

HARNESS_FAMILY(conv_fast_wgrad, "conv_fast_wgrad", "conv_wgrad_kernel, sum_splits_kernel")
void conv_fast_wgrad() {
  Rng rng(13);
  // the first: two m-splits of 4128 and 4096 rows (8224 > 8192 a split); the second: three (M = 20480), so
  // rounds of two under a small workspace limit; pixel pairs (4 output channels a group, D's rows within one
  // block) with two m-splits, with stride 2, and refused when D has more rows than a block (16 input channels
  // a group); groups of 8 channels
  const std::vector<Sh> shapes = {
      {1, 8, 1, 8224, 8, 1, 1, 1, 1, 0},  {5, 8, 64, 64, 8, 1, 1, 1, 1, 0},  {2, 16, 7, 9, 24, 2, 3, 3, 2, 1},
      {2, 128, 5, 5, 128, 32, 3, 3, 1, 1}, {1, 72, 6, 6, 40, 1, 3, 3, 1, 1},  {1, 8, 9, 10, 80, 1, 2, 3, 3, 2},
      {2, 12, 6, 7, 20, 1, 3, 3, 2, 1},   {5, 8, 64, 64, 8, 2, 3, 3, 1, 1},  {2, 16, 9, 12, 16, 4, 3, 3, 2, 1},
      {1, 32, 5, 6, 8, 2, 3, 3, 1, 1},    {3, 8, 64, 64, 8, 1, 1, 1, 1, 0},  {2, 16, 48, 96, 16, 4, 1, 1, 1, 0},
      {1, 8, 1, 1, 8, 1, 1, 1, 1, 0},
  };
  for (size_t i = 0; i < shapes.size(); ++i) {
    const bool relu = i % 3 != 1, use_pq = i % 3 != 2;
    if (options().quick && i != 1 && i != 8) continue;  // the TSan subset: rounds and in-place adds, pixel pairs
    wgrad_case<__nv_bfloat16>(shapes[i], relu, use_pq, rng);
    if (!options().quick || i == 8) wgrad_case<float>(shapes[i], relu, use_pq, rng);
    if (!options().quick && (i < 6 || i == 8)) wgrad_case<__half>(shapes[i], relu, use_pq, rng);
  }
  if (options().quick) return;
  // The GPU test's shape (test_kernels_robust_cuda.py, test_conv_bn_training_repeats_bit_for_bit: 32x4d stage 1,
  // 4 channels a group, so pixel pairs): two m-splits at N = 8, and at N = 4 only one (what that test once said).
  // Its plan only: a run takes ~10 s of emulation; the pixel-pair shape with two m-splits above runs the path.
  const Sh stage1{8, 128, 56, 56, 128, 32, 3, 3, 1, 1};
  const int64_t slice = 128 * 3 * 3 * 4;
  expect(wgrad_fast_workspace(shape_of(stage1)) == 2 * slice, "32x4d stage 1 at N=8: workspace %ld floats, want two "
         "m-splits' %ld", wgrad_fast_workspace(shape_of(stage1)), 2 * slice);
  expect(wgrad_fast_workspace(shape_of({4, 128, 56, 56, 128, 32, 3, 3, 1, 1})) == 0, "32x4d stage 1 at N=4: more "
         "than one m-split");
  const cb::ConvShape s = shape_of(shapes[0]);
  expect(wgrad_fast_workspace(s) > 0, "%ld rows: no m-split workspace", rows_of(s));
  Dev<__nv_bfloat16> a(8224 * 8);
  Dev<float> k(8), dw(64);
  expect_throws("wgrad with splits but no workspace", [&] {
    wgrad_fast(DType::kBFloat16, a.p, cb::BnReluGrad{a.p, nullptr, nullptr, k.p, nullptr, nullptr, false, false}, a.p,
               dw.p, nullptr, s);
  });
}

// ---- element-wise passes and the per-channel sums ----
template <typename T>
void scale_shift_relu_case(int64_t rows, int64_t K, size_t skew, bool use_res, bool relu, Rng& rng) {
  const std::string tag = fmt("%s scale_shift_relu rows=%ld K=%ld skew=%zu residual=%d relu=%d", name_of<T>(), rows, K,
                              skew, use_res, relu);
  const auto n = static_cast<size_t>(rows * K);
  const Tensor<T> z = Tensor<T>::make(n, [&](size_t) { return rng.normal(); });
  const Tensor<T> r = Tensor<T>::make(n, [&](size_t) { return rng.normal(); });
  std::vector<float> sc(K), sh(K);
  for (int64_t k = 0; k < K; ++k) sc[k] = float(rng.normal()), sh[k] = float(rng.normal());
  Dev<T> dz(z.s, skew), dr(r.s), y(n);
  Dev<float> dsc(sc), dsh(sh);
  scale_shift_relu(dtype_of<T>(), dz.p, dsc.p, dsh.p, use_res ? dr.p : nullptr, relu, y.p, rows, K);
  std::vector<double> w(n), t(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t k = i % static_cast<size_t>(K);
    const double a = double(z.f[i]) * sc[k] + sh[k] + (use_res ? r.f[i] : 0.0);
    w[i] = relu ? std::max(0.0, a) : a;
    t[i] = unit_roundoff<T>() * std::fabs(w[i]) +
           2 * kU32 * (std::fabs(z.f[i] * sc[k]) + std::fabs(sh[k]) + (use_res ? std::fabs(r.f[i]) : 0.0));
  }
  compare(tag, as_double(y.get()), w, t);
}

template <typename T>
void backward_sums_case(int64_t rows, int64_t K, bool relu, Rng& rng) {
  const std::string tag = fmt("%s backward sums rows=%ld K=%ld relu=%d", name_of<T>(), rows, K, relu);
  const auto n = static_cast<size_t>(rows * K);
  const Tensor<T> dy = Tensor<T>::make(n, [&](size_t) { return rng.normal(); });
  const Tensor<T> src = Tensor<T>::make(n, [&](size_t) { return 2.0 + rng.normal(); });
  const Coefs c = random_coefs(K, rng);
  std::vector<float> center(K);
  for (auto& v : center) v = float(2.0 + 0.1 * rng.normal());
  Dev<T> ddy(dy.s), dsrc(src.s);
  Dev<float> ms(c.ms), mt(c.mt), dcen(center);
  Dev<double> sums(static_cast<size_t>(2 * K)), ws(static_cast<size_t>(sums_workspace(rows, K)));
  backward_sums(dtype_of<T>(), ddy.p, dsrc.p, relu ? ms.p : nullptr, relu ? mt.p : nullptr, dcen.p, relu, sums.p,
                ws.p, rows, K);
  std::vector<double> w(2 * K, 0.0), mag0(K, 0.0), mag1(K, 0.0), t(2 * K);
  for (size_t i = 0; i < n; ++i) {
    const size_t k = i % static_cast<size_t>(K);
    const bool on = !relu || std::fmaf(src.f[i], c.ms[k], c.mt[k]) > 0.f;  // the forward's mask
    if (!on) continue;
    w[k] += dy.f[i];
    mag0[k] += std::fabs(dy.f[i]);
    const double t1 = double(dy.f[i]) * (double(src.f[i]) - center[k]);
    w[K + k] += t1;
    mag1[k] += std::fabs(t1);
  }
  for (int64_t k = 0; k < K; ++k) t[k] = 1e-13 * mag0[k], t[K + k] = 1.01 * kU32 * mag1[k] + 1e-13 * mag1[k];
  const std::vector<double> got = sums.get();
  compare(tag, got, w, t);
  // reduce_parts_kernel's order, bit for bit: merge_geometry's lane slices, then the halving tree (additions
  // only, so the GPU gives the same bits)
  const std::vector<double> parts = ws.get();
  const int64_t nparts = static_cast<int64_t>(parts.size()) / (2 * K);
  const int lanes = cb::mma::merge_geometry(K, nparts).lanes;
  std::vector<double> tree(2 * K);
  for (int64_t k = 0; k < K; ++k) cb::sum_parts_tree(parts.data(), nparts, K, k, lanes, tree[k], tree[K + k]);
  compare_exact(tag + fmt(" (sum_parts_tree's order over %ld parts, %d lanes)", nparts, lanes), got, tree);
}

template <typename T>
void backward_apply_case(int64_t rows, int64_t K, size_t skew, bool relu, bool use_pq, Rng& rng) {
  const std::string tag = fmt("%s backward apply rows=%ld K=%ld skew=%zu relu=%d pq=%d", name_of<T>(), rows, K, skew,
                              relu, use_pq);
  const auto n = static_cast<size_t>(rows * K);
  const Tensor<T> dy = Tensor<T>::make(n, [&](size_t) { return rng.normal(); });
  const Tensor<T> src = Tensor<T>::make(n, [&](size_t) { return rng.normal(); });
  const Coefs c = random_coefs(K, rng);
  Dev<T> ddy(dy.s, skew), dsrc(src.s), g(n);
  const DevCoefs dc(c);
  const cb::BnReluGrad bn = dc.bn(dsrc.p, relu, use_pq);
  backward_apply(dtype_of<T>(), ddy.p, dsrc.p, bn.ms, bn.mt, bn.k, bn.p, bn.q, relu, use_pq, g.p, rows, K);
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t k = i % static_cast<size_t>(K);
    w[i] = round_to<T>(bn_grad(dy.f[i], src.f[i], c.ms[k], c.mt[k], c.k[k], c.p[k], c.q[k], relu, use_pq));
  }
  compare_exact(tag + " (bit for bit as specified)", as_double(g.get()), w);
}

HARNESS_FAMILY(bn_elementwise, "bn_elementwise",
               "scale_shift_relu(_vec)_kernel, channel_sums_kernel, reduce_parts_kernel, backward_apply(_vec)_kernel")
void bn_elementwise() {
  Rng rng(17);
  const bool quick = options().quick;
  for (int64_t K : {16, 12, 3, 8}) {  // 16-byte vectors where K allows, else element by element
    for (size_t skew : {size_t(0), size_t(1)}) {
      for (int v = 0; v < 4; ++v) {
        const bool use_res = v & 1, relu = v < 3, use_pq = v != 1;
        scale_shift_relu_case<__nv_bfloat16>(37, K, skew, use_res, relu, rng);
        scale_shift_relu_case<float>(37, K, skew, use_res, relu, rng);
        backward_apply_case<__nv_bfloat16>(37, K, skew, relu, use_pq, rng);
        backward_apply_case<float>(37, K, skew, relu, use_pq, rng);
        if (!quick) {
          scale_shift_relu_case<__half>(37, K, skew, use_res, relu, rng);
          backward_apply_case<__half>(37, K, skew, relu, use_pq, rng);
        }
        if (quick) break;
      }
      if (quick) break;
    }
    if (quick && K == 12) break;
  }
  // rows, K (parts of 512 rows, merged by 4-channel blocks of lanes): 2 parts in 9 blocks; 1 part; 18 parts (32
  // lanes, a tree of 5 levels); 293 parts (past the 256 lanes: two a lane in some slices); one row
  backward_sums_case<__nv_bfloat16>(600, 33, true, rng);
  if (quick) return;
  backward_sums_case<float>(37, 3, true, rng);
  backward_sums_case<__nv_bfloat16>(37, 3, false, rng);
  backward_sums_case<float>(9000, 5, true, rng);
  backward_sums_case<__half>(9000, 5, false, rng);
  backward_sums_case<float>(150000, 2, true, rng);
  backward_sums_case<float>(1, 1, true, rng);
}

}  // namespace
