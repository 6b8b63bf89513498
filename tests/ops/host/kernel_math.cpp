// C entry points over the kernels' own __host__ __device__ functions (csrc/*/..._math.h, conv_bn_stats.h,
// conv_bn_mma_index.h), compiled for the host by tests/ops/host_math.py and called through ctypes, so the
// CPU tests run the very code the CUDA kernels run. Plain C++17, no torch, no CUDA: compiles in ~2 s.
#include <cstdint>

#include "../../../csrc/conv_bn/conv_bn_mma_index.h"
#include "../../../csrc/conv_bn/conv_bn_stats.h"
#include "../../../csrc/soft_ce/soft_ce_math.h"

using namespace wslfast;

extern "C" {

// ---- soft-CE ----
// The online state over a row fed in vectors of `vec` values (1, 4 or 8, as the kernels), per thread of
// `threads` threads (thread t takes vectors t, t + threads, ...), then merged in butterfly order as the
// block reduction does: out = (max, sumexp).
void softce_row_state(const float* x, int64_t n, int vec, int threads, float* out) {
  soft_ce::MaxSum st[1024];
  for (int t = 0; t < threads; ++t) st[t] = soft_ce::max_sum_empty();
  const int64_t nvec = vec > 1 ? n / vec : 0;
  for (int64_t v = 0; v < nvec; ++v) {
    float b8[8], b4[4];
    if (vec == 8) {
      for (int i = 0; i < 8; ++i) b8[i] = x[v * vec + i];
      soft_ce::add_values<8>(st[v % threads], b8);
    } else {
      for (int i = 0; i < 4; ++i) b4[i] = x[v * vec + i];
      soft_ce::add_values<4>(st[v % threads], b4);
    }
  }
  for (int64_t c = nvec * vec; c < n; ++c) soft_ce::add_value(st[(c - nvec * vec) % threads], x[c]);
  for (int o = 1; o < threads; o <<= 1)
    for (int t = 0; t + o < threads; t += 2 * o) soft_ce::merge(st[t], st[t + o]);
  out[0] = st[0].m;
  out[1] = st[0].s;
}

void softce_merge(float m1, float s1, float m2, float s2, float* out) {
  soft_ce::MaxSum a{m1, s1};
  soft_ce::merge(a, soft_ce::MaxSum{m2, s2});
  out[0] = a.m;
  out[1] = a.s;
}

// Per row: row_range's (ok, b, e) and whether every entry is ok: out[3 * r ...].
void softce_check_rows(const int64_t* indices, const int64_t* offsets, int64_t rows, int64_t nnz, int64_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t b, e;
    bool ok = soft_ce::row_range(offsets, r, rows, nnz, b, e);
    for (int64_t j = b; j < e; ++j) ok = ok && soft_ce::entry_ok(indices, b, j);
    out[3 * r] = ok;
    out[3 * r + 1] = b;
    out[3 * r + 2] = e;
  }
}

int64_t softce_choose_splits(int64_t rows, int64_t cols, int64_t sms) { return soft_ce::choose_splits(rows, cols, sms); }

void softce_split_range(int64_t cols, int64_t unit, int64_t splits, int64_t sp, int64_t* out) {
  soft_ce::split_range(cols, unit, splits, sp, out[0], out[1]);
}

// ---- BN statistics ----
void stats_chan_merge(const double* a, const double* b, double* out) {
  conv_bn::MeanM2 x{a[0], a[1], a[2]};
  conv_bn::chan_merge(x, conv_bn::MeanM2{b[0], b[1], b[2]});
  out[0] = x.n, out[1] = x.mean, out[2] = x.m2;
}

// The fast path's statistics of one channel of `rows` fp32 values, as the kernels compute them: per
// block of 128 rows the mean from a double sum and the fp32 sum of (v - float(mean))^2 (partial_from_sums),
// then the finalize's merge of the parts in 16 slices (merge_parts) and the slices in order.
void stats_fast_path(const float* v, int64_t rows, double* out) {
  const int64_t per = 128, nparts = (rows + per - 1) / per;
  double* part = new double[2 * nparts];
  for (int64_t p = 0; p < nparts; ++p) {
    const double nb = conv_bn::part_rows(p, per, rows);
    double sum = 0.0;
    for (int64_t r = p * per; r < p * per + static_cast<int64_t>(nb); ++r) sum += v[r];
    const float mf = static_cast<float>(sum / nb);
    float sq = 0.f;
    for (int64_t r = p * per; r < p * per + static_cast<int64_t>(nb); ++r) sq += (v[r] - mf) * (v[r] - mf);
    const conv_bn::MeanM2 pm = conv_bn::partial_from_sums(nb, sum, sq, mf);
    part[p] = pm.mean;
    part[nparts + p] = pm.m2;
  }
  conv_bn::MeanM2 acc{0, 0, 0};
  for (int j = 0; j < 16; ++j) conv_bn::chan_merge(acc, conv_bn::merge_parts(part, nparts, 1, 0, per, rows, j, 16));
  delete[] part;
  out[0] = acc.n, out[1] = acc.mean, out[2] = acc.m2;
}

// The simple path's: Welford per lane in double, lanes merged in order.
void stats_welford(const float* v, int64_t rows, int lanes, double* out) {
  conv_bn::MeanM2 acc{0, 0, 0};
  for (int l = 0; l < lanes; ++l) {
    conv_bn::MeanM2 st{0, 0, 0};
    for (int64_t r = l; r < rows; r += lanes) conv_bn::welford_add(st, v[r]);
    conv_bn::chan_merge(acc, st);
  }
  out[0] = acc.n, out[1] = acc.mean, out[2] = acc.m2;
}

// ---- tensor-core index math ----
void mma_frag(int kind, int warp, int lane, int mt, int nt, int kk, int i, int* out) {
  using namespace conv_bn::mma;
  RowCol rc{};
  switch (kind) {
    case 0: rc = frag_a_f16(warp, lane, mt, kk, i); break;
    case 1: rc = frag_b_f16(lane, nt, kk, i); break;
    case 2: rc = frag_a_tf32(warp, lane, mt, kk, i); break;
    case 3: rc = frag_b_tf32(lane, nt, kk, i); break;
    default: rc = frag_acc(warp, lane, mt, nt, i); break;
  }
  out[0] = rc.row;
  out[1] = rc.col;
}

void mma_slots(int kind, int a, int b, int* out) {
  using namespace conv_bn::mma;
  const RowCol rc = kind == 0 ? a_slot(a, b) : (kind == 1 ? b_slot(a) : wgrad_slot(a, b));
  out[0] = rc.row;
  out[1] = rc.col;
}

// dims: N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride, pad, groups. kind 0: A forward, 1: A dgrad,
// 2: B, 3: output, 4: the channel of A's column b (a ignored). For kinds 0/1 `a` is the GEMM row m; the result is the element offset or -1.
int64_t mma_gemm_offset(int kind, const int64_t* dims, int64_t g, int64_t a, int64_t b) {
  using namespace conv_bn::mma;
  const GemmDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8], dims[9],
                   dims[10], dims[11]};
  switch (kind) {
    case 0: return gemm_a_offset<false>(d, g, gemm_row(d, a), b);
    case 1: return gemm_a_offset<true>(d, g, gemm_row(d, a), b);
    case 2: return gemm_b_offset(d, g, a, b);
    case 4: return gemm_a_channel(d, g, b);
    default: return gemm_out_offset(d, g, a, b);
  }
}

// dims: N, H, W, C, K, R, S, P, Q, stride, pad, groups. kind 0: x (m, j), 1: gz (m, kk), 2: dw (kk, j),
// 3: the channel of gz's column b.
int64_t mma_wgrad_offset(int kind, const int64_t* dims, int64_t g, int64_t a, int64_t b) {
  using namespace conv_bn::mma;
  const WgradDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8], dims[9],
                    dims[10], dims[11]};
  switch (kind) {
    case 0: return wgrad_x_offset(d, g, a, b);
    case 1: return wgrad_g_offset(d, g, a, b);
    case 3: return wgrad_g_channel(d, g, b);
    default: return wgrad_dw_offset(d, g, a, b);
  }
}

void mma_wgrad_plan(int64_t M, int64_t groups, int64_t chunk, int64_t* out) {
  const conv_bn::mma::WgradPlan p = conv_bn::mma::wgrad_plan(M, groups, chunk);
  out[0] = p.splits;
  out[1] = p.per;
}

int mma_consts(int which) {
  using namespace conv_bn::mma;
  const int v[] = {kBM, kBK, kLds, kWarps, kThreads};
  return v[which];
}

}  // extern "C"
