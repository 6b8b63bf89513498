// The CPU passes of the fused conv + BN + ReLU, compiled twice by conv_bn_cpu.cpp: once for AVX2+FMA
// and once for the baseline ISA, each in its own namespace (WSLFAST_CPU_NS). No include guard on purpose.
// Storage may be float32/bfloat16/float16 (accumulated in float32 blocks, then double) or float64.
namespace wslfast {
namespace conv_bn {
namespace WSLFAST_CPU_NS {
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

// sum over i < count of term(i) -> (t0, t1), in 8 independent lanes so the loop vectorizes (a single
// running sum is a serial dependence the compiler may not reorder).
template <typename acc_t, typename Term>
void lanes_sum(int64_t count, acc_t& b0, acc_t& b1, const Term& term) {
  constexpr int kLanes = 8;
  acc_t l0[kLanes] = {}, l1[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      acc_t t0, t1;
      term(i + j, t0, t1);
      l0[j] += t0;
      l1[j] += t1;
    }
  }
  for (; i < count; ++i) {
    acc_t t0, t1;
    term(i, t0, t1);
    l0[0] += t0;
    l1[0] += t1;
  }
  for (int j = 0; j < kLanes; ++j) b0 += l0[j], b1 += l1[j];
}

template <typename scalar_t>
struct StatsFn {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t* z;
  const op_t* pivot;
  int64_t C;
  template <typename acc_t>
  void row(int64_t r, acc_t* __restrict__ a0, acc_t* __restrict__ a1) const {
    const scalar_t* __restrict__ p = z + r * C;
    const op_t* __restrict__ pv = pivot;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d = static_cast<acc_t>(static_cast<op_t>(p[c]) - pv[c]);
      a0[c] += d;
      a1[c] += d * d;
    }
  }
  template <typename acc_t>
  void plane(int64_t c, int64_t first, int64_t count, acc_t& b0, acc_t& b1) const {
    const scalar_t* __restrict__ p = z + first;
    const op_t pv = pivot[c];
    lanes_sum<acc_t>(count, b0, b1, [&](int64_t i, acc_t& t0, acc_t& t1) {
      const acc_t d = static_cast<acc_t>(static_cast<op_t>(p[i]) - pv);
      t0 = d;
      t1 = d * d;
    });
  }
};

template <typename scalar_t>
struct ApplyFn {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t* z;
  const scalar_t* res;  // nullable: y = relu?(z * scale + shift + res)
  scalar_t* y;
  const op_t *scale, *shift;
  int64_t C;
  bool relu;
  // One loop per (relu, residual, layout) case keeps each branch-free, so it vectorizes. kRow: per-element
  // coefficients (a channels_last row); else one channel's scalar coefficients (an NCHW plane).
  template <bool kRelu, bool kRes, bool kRow>
  static void run(const scalar_t* __restrict__ p, const scalar_t* __restrict__ r, scalar_t* __restrict__ q,
                  const op_t* __restrict__ s, const op_t* __restrict__ t, int64_t n) {
    const op_t s0 = s[0], t0 = t[0];
    for (int64_t i = 0; i < n; ++i) {
      op_t v = kRow ? static_cast<op_t>(p[i]) * s[i] + t[i] : static_cast<op_t>(p[i]) * s0 + t0;
      if constexpr (kRes) v += static_cast<op_t>(r[i]);
      q[i] = kRelu ? std::max(v, op_t(0)) : v;
    }
  }
  template <bool kRow>
  void dispatch(const scalar_t* p, const scalar_t* r, scalar_t* q, const op_t* s, const op_t* t, int64_t n) const {
    if (relu) {
      if (r) run<true, true, kRow>(p, r, q, s, t, n);
      else run<true, false, kRow>(p, r, q, s, t, n);
    } else {
      if (r) run<false, true, kRow>(p, r, q, s, t, n);
      else run<false, false, kRow>(p, r, q, s, t, n);
    }
  }
  void row(int64_t r) const { dispatch<true>(z + r * C, res ? res + r * C : nullptr, y + r * C, scale, shift, C); }
  void plane(int64_t c, int64_t first, int64_t count) const {
    dispatch<false>(z + first, res ? res + first : nullptr, y + first, scale + c, shift + c, count);
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
  void row(int64_t r, acc_t* __restrict__ a0, acc_t* __restrict__ a1) const {
    const scalar_t* __restrict__ g = dy + r * C;
    const scalar_t* __restrict__ s = src + r * C;
    const op_t* __restrict__ a = ms;
    const op_t* __restrict__ b = mt;
    const op_t* __restrict__ ctr = center;
    if (relu) {
      for (int64_t c = 0; c < C; ++c) {
        const op_t x = static_cast<op_t>(s[c]);
        const op_t d = (x * a[c] + b[c] > op_t(0)) ? static_cast<op_t>(g[c]) : op_t(0);
        a0[c] += static_cast<acc_t>(d);
        a1[c] += static_cast<acc_t>(d * (x - ctr[c]));
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const op_t x = static_cast<op_t>(s[c]);
        const op_t d = static_cast<op_t>(g[c]);
        a0[c] += static_cast<acc_t>(d);
        a1[c] += static_cast<acc_t>(d * (x - ctr[c]));
      }
    }
  }
  template <typename acc_t>
  void plane(int64_t c, int64_t first, int64_t count, acc_t& b0, acc_t& b1) const {
    const scalar_t* __restrict__ g = dy + first;
    const scalar_t* __restrict__ s = src + first;
    const op_t a = ms[c], b = mt[c], ctr = center[c];
    const bool use_mask = relu;
    lanes_sum<acc_t>(count, b0, b1, [&](int64_t i, acc_t& t0, acc_t& t1) {
      const op_t x = static_cast<op_t>(s[i]);
      const op_t d = (!use_mask || x * a + b > op_t(0)) ? static_cast<op_t>(g[i]) : op_t(0);
      t0 = static_cast<acc_t>(d);
      t1 = static_cast<acc_t>(d * (x - ctr));
    });
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
  void row_impl(const scalar_t* __restrict__ g, const scalar_t* __restrict__ s, scalar_t* __restrict__ o) const {
    const op_t* __restrict__ a = ms;
    const op_t* __restrict__ b = mt;
    const op_t* __restrict__ kk = k;
    const op_t* __restrict__ pp = p;
    const op_t* __restrict__ qq = q;
    for (int64_t c = 0; c < C; ++c) {
      const op_t x = static_cast<op_t>(s[c]);
      op_t d = static_cast<op_t>(g[c]);
      if (kRelu) d = (x * a[c] + b[c] > op_t(0)) ? d : op_t(0);
      op_t v = d * kk[c];
      if (kPq) v += x * pp[c] + qq[c];
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
    const scalar_t* __restrict__ g = dy + first;
    const scalar_t* __restrict__ s = src + first;
    scalar_t* __restrict__ o = out + first;
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

void channel_sums(const at::Tensor& z, const at::Tensor& pivot, at::Tensor& sums) {
  const View3 v = view3(z);
  sums.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "channel_sums_cpu", [&] {
    StatsFn<scalar_t> f{z.const_data_ptr<scalar_t>(), coef<scalar_t>(pivot), v.channels};
    two_channel_sums<block_t<scalar_t>>(v, sums.data_ptr<double>(), f);
  });
}

void scale_shift_relu(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift,
                          bool relu, const at::Tensor* residual, at::Tensor& y) {
  const View3 v = view3(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "scale_shift_relu_cpu", [&] {
    ApplyFn<scalar_t> f{z.const_data_ptr<scalar_t>(), residual ? residual->const_data_ptr<scalar_t>() : nullptr,
                        y.data_ptr<scalar_t>(), coef<scalar_t>(scale), coef<scalar_t>(shift), v.channels, relu};
    channel_map(v, f);
  });
}

void bn_relu_backward_sums(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
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

void bn_relu_backward_apply(const at::Tensor& dy, const at::Tensor& src, const at::Tensor& ms,
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

}  // namespace WSLFAST_CPU_NS
}  // namespace conv_bn
}  // namespace wslfast
