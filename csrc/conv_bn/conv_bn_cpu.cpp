// CPU passes of the fused conv + BatchNorm + ReLU: one parallel statistics pass over the conv output,
// one fused scale+shift+ReLU pass, and the two fused BN+ReLU backward passes. The convolution itself
// is ATen's (oneDNN), called from conv_bn.cpp. Storage may be float32/bfloat16/float16 (accumulated in
// float32 blocks, then double) or float64 (double throughout, for gradcheck).
#include "conv_bn.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace wslfast {
namespace conv_bn {
namespace {

// Rows summed in the block type before being folded into the double total: short float blocks keep
// the float rounding error at ~kBlock * 2^-24 while the inner loops stay float and vectorize.
constexpr int64_t kBlock = 64;

struct View3 {
  int64_t outer, channels, inner;
};

View3 view3(const at::Tensor& t) {
  const int64_t n = t.size(0), c = t.size(1), hw = t.size(2) * t.size(3);
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous()) return {n * hw, c, 1};
  TORCH_CHECK(t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv_bn_relu (internal): expected a contiguous or channels_last tensor");
  // A tensor contiguous in both formats (H = W = 1 or C = 1) reads the same either way.
  if (hw == 1) return {n, c, 1};
  return {n, c, hw};
}

int64_t row_grain(int64_t channels) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / channels); }

// Sums of f(row, c) over all positions of each channel, two accumulators per channel. `f` writes
// the two per-element terms; the result is sums[2][C] in double.
template <typename acc_t, typename Fn>
void two_channel_sums(const View3& v, double* out, const Fn& f) {
  const int64_t C = v.channels;
  if (v.inner == 1) {
    // channels_last: rows are positions, channels the fast axis; each thread sums its own rows.
    const int nthreads = at::get_num_threads();
    std::vector<double> partial(static_cast<size_t>(nthreads) * 2 * C, 0.0);
    at::parallel_for(0, v.outer, row_grain(C), [&](int64_t begin, int64_t end) {
      double* mine = partial.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
      std::vector<acc_t> a(2 * C);
      for (int64_t r0 = begin; r0 < end; r0 += kBlock) {
        std::fill(a.begin(), a.end(), acc_t(0));
        const int64_t r1 = std::min(end, r0 + kBlock);
        for (int64_t r = r0; r < r1; ++r) f.row(r, a.data(), a.data() + C);
        for (int64_t c = 0; c < 2 * C; ++c) mine[c] += static_cast<double>(a[c]);
      }
    });
    for (int t = 0; t < nthreads; ++t)
      for (int64_t c = 0; c < 2 * C; ++c) out[c] += partial[static_cast<size_t>(t) * 2 * C + c];
  } else {
    // NCHW: each channel is N contiguous planes; parallel over channels.
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double s0 = 0.0, s1 = 0.0;
        for (int64_t n = 0; n < v.outer; ++n) {
          const int64_t base = (n * C + c) * v.inner;
          for (int64_t i0 = 0; i0 < v.inner; i0 += kBlock * 16) {
            acc_t b0 = 0, b1 = 0;
            f.plane(c, base + i0, std::min(v.inner - i0, kBlock * 16), b0, b1);
            s0 += static_cast<double>(b0);
            s1 += static_cast<double>(b1);
          }
        }
        out[c] += s0;
        out[C + c] += s1;
      }
    });
  }
}

// Elementwise over [outer, C, inner] with per-channel coefficients: op(c, first, count) handles
// `count` consecutive elements of channel c (NCHW) or one row of all channels (channels_last).
template <typename Fn>
void channel_map(const View3& v, const Fn& f) {
  const int64_t C = v.channels;
  if (v.inner == 1) {
    at::parallel_for(0, v.outer, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) f.row(r);
    });
  } else {
    at::parallel_for(0, v.outer * C, std::max<int64_t>(1, at::internal::GRAIN_SIZE / v.inner),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t nc = begin; nc < end; ++nc) f.plane(nc % C, nc * v.inner, v.inner);
                     });
  }
}

template <typename scalar_t>
struct StatsFn {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t* z;
  const op_t* pivot;
  int64_t C;
  template <typename acc_t>
  void row(int64_t r, acc_t* a0, acc_t* a1) const {
    const scalar_t* p = z + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d = static_cast<acc_t>(static_cast<op_t>(p[c]) - pivot[c]);
      a0[c] += d;
      a1[c] += d * d;
    }
  }
  template <typename acc_t>
  void plane(int64_t c, int64_t first, int64_t count, acc_t& b0, acc_t& b1) const {
    const scalar_t* p = z + first;
    const op_t pv = pivot[c];
    for (int64_t i = 0; i < count; ++i) {
      const acc_t d = static_cast<acc_t>(static_cast<op_t>(p[i]) - pv);
      b0 += d;
      b1 += d * d;
    }
  }
};

template <typename scalar_t>
struct ApplyFn {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t* z;
  scalar_t* y;
  const op_t *scale, *shift;
  int64_t C;
  bool relu;
  void row(int64_t r) const {
    const scalar_t* p = z + r * C;
    scalar_t* q = y + r * C;
    if (relu) {
      for (int64_t c = 0; c < C; ++c) q[c] = std::max(static_cast<op_t>(p[c]) * scale[c] + shift[c], op_t(0));
    } else {
      for (int64_t c = 0; c < C; ++c) q[c] = static_cast<op_t>(p[c]) * scale[c] + shift[c];
    }
  }
  void plane(int64_t c, int64_t first, int64_t count) const {
    const scalar_t* p = z + first;
    scalar_t* q = y + first;
    const op_t s = scale[c], t = shift[c];
    if (relu) {
      for (int64_t i = 0; i < count; ++i) q[i] = std::max(static_cast<op_t>(p[i]) * s + t, op_t(0));
    } else {
      for (int64_t i = 0; i < count; ++i) q[i] = static_cast<op_t>(p[i]) * s + t;
    }
  }
};

// Backward sums: a0 += m * dy, a1 += m * dy * (src - center), m = relu ? (src*ms + mt > 0) : 1.
template <typename scalar_t>
struct BackwardSumsFn {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t *dy, *src;
  const op_t *ms, *mt, *center;
  int64_t C;
  bool relu;
  template <typename acc_t>
  void row(int64_t r, acc_t* a0, acc_t* a1) const {
    const scalar_t* g = dy + r * C;
    const scalar_t* s = src + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const op_t x = static_cast<op_t>(s[c]);
      op_t d = static_cast<op_t>(g[c]);
      if (relu) d = (x * ms[c] + mt[c] > op_t(0)) ? d : op_t(0);
      a0[c] += static_cast<acc_t>(d);
      a1[c] += static_cast<acc_t>(d * (x - center[c]));
    }
  }
  template <typename acc_t>
  void plane(int64_t c, int64_t first, int64_t count, acc_t& b0, acc_t& b1) const {
    const scalar_t* g = dy + first;
    const scalar_t* s = src + first;
    const op_t a = ms[c], b = mt[c], ctr = center[c];
    for (int64_t i = 0; i < count; ++i) {
      const op_t x = static_cast<op_t>(s[i]);
      op_t d = static_cast<op_t>(g[i]);
      if (relu) d = (x * a + b > op_t(0)) ? d : op_t(0);
      b0 += static_cast<acc_t>(d);
      b1 += static_cast<acc_t>(d * (x - ctr));
    }
  }
};

template <typename scalar_t>
struct BackwardApplyFn {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t *dy, *src;
  scalar_t* out;
  const op_t *ms, *mt, *k, *p, *q;
  int64_t C;
  bool relu, use_pq;
  // Branch-free inner loop per (relu, use_pq) so it vectorizes.
  template <bool kRelu, bool kPq>
  void row_impl(const scalar_t* g, const scalar_t* s, scalar_t* o) const {
    for (int64_t c = 0; c < C; ++c) {
      const op_t x = static_cast<op_t>(s[c]);
      op_t d = static_cast<op_t>(g[c]);
      if (kRelu) d = (x * ms[c] + mt[c] > op_t(0)) ? d : op_t(0);
      op_t v = d * k[c];
      if (kPq) v += x * p[c] + q[c];
      o[c] = v;
    }
  }
  void row(int64_t r) const {
    const scalar_t* g = dy + r * C;
    const scalar_t* s = src + r * C;
    scalar_t* o = out + r * C;
    if (relu) {
      use_pq ? row_impl<true, true>(g, s, o) : row_impl<true, false>(g, s, o);
    } else {
      use_pq ? row_impl<false, true>(g, s, o) : row_impl<false, false>(g, s, o);
    }
  }
  void plane(int64_t c, int64_t first, int64_t count) const {
    const scalar_t* g = dy + first;
    const scalar_t* s = src + first;
    scalar_t* o = out + first;
    const op_t a = ms[c], b = mt[c], kk = k[c], pp = p[c], qq = q[c];
    for (int64_t i = 0; i < count; ++i) {
      const op_t x = static_cast<op_t>(s[i]);
      op_t d = static_cast<op_t>(g[i]);
      if (relu) d = (x * a + b > op_t(0)) ? d : op_t(0);
      o[i] = use_pq ? d * kk + (x * pp + qq) : d * kk;
    }
  }
};

// Block accumulator: float for the 16/32-bit storage types, double for float64.
template <typename scalar_t>
using block_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
const at::opmath_type<scalar_t>* coef(const at::Tensor& t) {
  return t.data_ptr<at::opmath_type<scalar_t>>();
}

}  // namespace

void channel_sums_cpu(const at::Tensor& z, const at::Tensor& pivot, at::Tensor& sums) {
  const View3 v = view3(z);
  sums.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "channel_sums_cpu", [&] {
    StatsFn<scalar_t> f{z.const_data_ptr<scalar_t>(), coef<scalar_t>(pivot), v.channels};
    two_channel_sums<block_t<scalar_t>>(v, sums.data_ptr<double>(), f);
  });
}

void scale_shift_relu_cpu(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift,
                          bool relu, at::Tensor& y) {
  const View3 v = view3(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "scale_shift_relu_cpu", [&] {
    ApplyFn<scalar_t> f{z.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), coef<scalar_t>(scale),
                        coef<scalar_t>(shift), v.channels, relu};
    channel_map(v, f);
  });
}

void bn_relu_backward_sums_cpu(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                               const at::Tensor& mt, const at::Tensor& center, bool relu,
                               at::Tensor& sums) {
  const View3 v = view3(src);
  sums.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "bn_relu_backward_sums_cpu", [&] {
    BackwardSumsFn<scalar_t> f{dy.const_data_ptr<scalar_t>(), src.const_data_ptr<scalar_t>(),
                               coef<scalar_t>(ms), coef<scalar_t>(mt), coef<scalar_t>(center),
                               v.channels, relu};
    two_channel_sums<block_t<scalar_t>>(v, sums.data_ptr<double>(), f);
  });
}

void bn_relu_backward_apply_cpu(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
                                const at::Tensor& mt, const at::Tensor& k, const at::Tensor& p,
                                const at::Tensor& q, bool relu, bool use_pq, at::Tensor& g) {
  const View3 v = view3(src);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "bn_relu_backward_apply_cpu", [&] {
    BackwardApplyFn<scalar_t> f{dy.const_data_ptr<scalar_t>(), src.const_data_ptr<scalar_t>(),
                                g.data_ptr<scalar_t>(), coef<scalar_t>(ms), coef<scalar_t>(mt),
                                coef<scalar_t>(k), coef<scalar_t>(p), coef<scalar_t>(q),
                                v.channels, relu, use_pq};
    channel_map(v, f);
  });
}

}  // namespace conv_bn
}  // namespace wslfast
