// The arithmetic of the CUDA soft-CE kernels that is worth testing on its own: the online (max, sum of
// exp) state with its NaN rule, the merge of two such states, and the per-row check of the CSR targets.
// Plain C++ that nvcc also compiles for the device, so CPU tests (tests/ops/test_kernel_math_softce_stats.py)
// run the very code the kernels run (and tests/ops/test_kernels_emulated.py the kernels themselves).
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define WSLFAST_HD __host__ __device__ __forceinline__
#define WSLFAST_UNROLL _Pragma("unroll")
#else
#define WSLFAST_HD inline
#define WSLFAST_UNROLL
#endif

namespace wslfast::soft_ce {

// max that keeps NaN (fmaxf drops it): NaN in either operand gives NaN.
WSLFAST_HD float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// Online softmax state: m = running max (or NaN once a NaN was seen), s = sum of exp(z - m).
// NaN in must give NaN out: once m is NaN, every later step keeps s NaN (exp(x - NaN) = NaN).
struct MaxSum {
  float m, s;
};

WSLFAST_HD MaxSum max_sum_empty() { return {-INFINITY, 0.f}; }

// Rescale the state to a new max mn >= m (or NaN). m = -inf: s is 0, so s * exp(-inf) = 0 keeps it.
WSLFAST_HD void rescale(MaxSum& st, float mn) {
  if (mn != st.m) {  // also true when mn is NaN
    st.s = st.m == -INFINITY ? 0.f : st.s * expf(st.m - mn);  // m = -inf only while s = 0
    st.m = mn;
  }
}

// Adds n values (a 16-byte vector of the row) to the state.
template <int n>
WSLFAST_HD void add_values(MaxSum& st, const float (&x)[n]) {
  float vm = -INFINITY;
WSLFAST_UNROLL
  for (int i = 0; i < n; ++i) vm = nan_max(vm, x[i]);
  rescale(st, nan_max(st.m, vm));
  if (st.m != -INFINITY) {  // NaN != -inf: a NaN max poisons the sum too
WSLFAST_UNROLL
    for (int i = 0; i < n; ++i) st.s += expf(x[i] - st.m);
  }
}

WSLFAST_HD void add_value(MaxSum& st, float x) {
  const float v[1] = {x};
  add_values<1>(st, v);
}

// Merges state b into a (order does not change NaN-ness; the kernels merge in a fixed order).
WSLFAST_HD void merge(MaxSum& a, MaxSum b) {
  const float mn = nan_max(a.m, b.m);
  if (mn == -INFINITY) return;  // both empty (or all -inf): nothing to add
  const float sa = a.m == -INFINITY ? 0.f : a.s * expf(a.m - mn);
  const float sb = b.m == -INFINITY ? 0.f : b.s * expf(b.m - mn);
  a.s = sa + sb;
  a.m = mn;
}

// Row r's target range [b, e) from the CSR offsets, clamped into [0, nnz] so that no caller reads outside
// indices/weights whatever the offsets hold. Returns false unless the offsets of the row are canonical:
// 0 <= offsets[r] <= offsets[r+1] <= nnz, offsets[0] = 0 for the first row, offsets[rows] = nnz for the last.
WSLFAST_HD bool row_range(const int64_t* offsets, int64_t r, int64_t rows, int64_t nnz, int64_t& b, int64_t& e) {
  const int64_t ob = offsets[r], oe = offsets[r + 1];
  b = ob < 0 ? 0 : (ob > nnz ? nnz : ob);
  e = oe < b ? b : (oe > nnz ? nnz : oe);
  return ob >= 0 && ob <= oe && oe <= nnz && (r != 0 || ob == 0) && (r != rows - 1 || oe == nnz);
}

// Entry j of a row starting at b is canonical: id >= 0 and larger than the previous id of the row.
WSLFAST_HD bool entry_ok(const int64_t* indices, int64_t b, int64_t j) {
  return indices[j] >= 0 && (j == b || indices[j] > indices[j - 1]);
}

// ---- split-vocabulary launch: several blocks per row when rows alone cannot fill the GPU ----

// Blocks per row: enough to give each SM about two blocks, each block at least kMinSplitCols columns,
// at most kMaxSplits. Depends on the shape and the SM count only, so a run is reproducible on a device.
inline constexpr int64_t kMinSplitCols = 8192, kMaxSplits = 256;
WSLFAST_HD int64_t choose_splits(int64_t rows, int64_t cols, int64_t sms) {
  if (rows <= 0 || cols <= 0) return 1;
  const int64_t want = (2 * sms + rows - 1) / rows, fit = cols / kMinSplitCols;
  int64_t s = want < fit ? want : fit;
  s = s > kMaxSplits ? kMaxSplits : s;
  return s < 1 ? 1 : s;
}

// ---- 16-byte vectors for any row stride: a scalar head up to the row's first 16-byte boundary, whole vectors,
// a scalar tail ----

// Elements of `elem_bytes` each from address `addr` up to the next 16-byte boundary (0 when aligned). `addr`
// must be a multiple of elem_bytes (any tensor element is).
WSLFAST_HD int64_t head_elems(uint64_t addr, int64_t elem_bytes) {
  return static_cast<int64_t>((16 - (addr & 15)) & 15) / elem_bytes;
}

// Columns [c0, c1) of split sp out of `splits` for a row whose first 16-byte boundary is `head` columns in:
// the columns past the head are shared out in whole units of `unit` (a 16-byte vector, or 1), split 0 also
// takes the head and the last split the tail. Together the splits cover [0, cols) once, and every split but
// the first starts on a vector boundary.
WSLFAST_HD void split_range_peeled(int64_t cols, int64_t head, int64_t unit, int64_t splits, int64_t sp, int64_t& c0,
                                   int64_t& c1) {
  const int64_t h = head < cols ? head : cols;
  const int64_t units = (cols - h) / unit, per = (units + splits - 1) / splits;
  const int64_t u0 = sp * per < units ? sp * per : units, u1 = (sp + 1) * per < units ? (sp + 1) * per : units;
  c0 = sp == 0 ? 0 : h + u0 * unit;
  c1 = sp == splits - 1 ? cols : h + u1 * unit;
}

// The same with the vectors starting at column 0 (rows whose first element is 16-byte aligned).
WSLFAST_HD void split_range(int64_t cols, int64_t unit, int64_t splits, int64_t sp, int64_t& c0, int64_t& c1) {
  split_range_peeled(cols, 0, unit, splits, sp, c0, c1);
}

// How split sp of a row walks its columns [c0, c1): scalars [c0, v0), vectors of `unit` columns [v0, v1)
// (v0 on the row's 16-byte grid, which starts `head` columns in), scalars [v1, c1). Head and tail pieces are
// each shorter than one vector.
WSLFAST_HD void vector_span(int64_t c0, int64_t c1, int64_t head, int64_t unit, int64_t& v0, int64_t& v1) {
  v0 = c0 > head ? c0 : head;
  v0 = v0 < c1 ? v0 : c1;
  v1 = v0 + (c1 - v0) / unit * unit;
}

}  // namespace wslfast::soft_ce
