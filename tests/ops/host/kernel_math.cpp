// C entry points over the kernels' own __host__ __device__ functions (csrc/soft_ce/soft_ce_math.h,
// csrc/conv_bn/conv_bn_stats.h, csrc/conv_bn/conv_bn_mma_index.h), compiled for the host by
// tests/ops/host_math.py and called through ctypes by tests/ops/test_kernel_math_*.py: each entry calls
// those functions directly (softce_check_rows walks a row's entries, as the kernels' threads share them).
// The kernel bodies that use them (the forward's per-thread state and block merge, the statistics epilogue,
// the finalize) run, unchanged, in the emulated kernel tests (tests/ops/test_kernels_emulated.py): nothing
// here re-implements kernel code. Plain C++17, no torch, no CUDA.
#include <cstdint>

#include "../../../csrc/conv_bn/conv_bn_mma_index.h"
#include "../../../csrc/conv_bn/conv_bn_stats.h"
#include "../../../csrc/soft_ce/soft_ce_math.h"

using namespace wslfast;

extern "C" {

// ---- soft-CE ----
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
