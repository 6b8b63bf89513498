// Sparse soft-target softmax cross-entropy: the plain C++ launchers of the CUDA kernels.
// No torch headers: raw pointers, sizes and a stream. Torch glue is in soft_ce.cpp.
//
// `logits` is a [rows, cols] block (row stride in elements) holding classes
// [col_begin, col_begin + cols) of the vocabulary. Targets are canonical CSR rows: `offsets[rows+1]`,
// `indices` sorted and unique within a row, `weights` fp32, `nnz` entries. Targets outside the block are
// skipped by the per-chunk terms but still count in `weight_sum`. The kernels check each row's targets as
// they read them: a row that is not canonical gets NaN results (forward) and a NaN gradient row
// (backward), and nothing outside [0, nnz) of the targets or the row of logits is ever read.
//
// `splits` blocks share each row (soft_ce_math.h choose_splits); above 1 the forward needs a workspace of
// 4 * rows * splits doubles for the partials, merged in a fixed order (the results repeat bit for bit).
#pragma once
#include <cstdint>

#include "../common/dtype.h"

namespace wslfast::soft_ce {

struct Targets {
  const int64_t* indices;
  const int64_t* offsets;
  const float* weights;
  int64_t nnz;
};

// Per row (all float64, so that W * lse - dot keeps its digits for logits of any size): row_max = max_c z_c, row_sumexp = sum_c exp(z_c - row_max),
// target_dot = sum_{j in block} w_j z[t_j], weight_sum = sum_j w_j (all of the row's targets).
void forward_cuda(DType dtype, const void* logits, int64_t rows, int64_t cols, int64_t row_stride,
                  int64_t col_begin, Targets targets, int64_t splits, double* workspace, double* row_max,
                  double* row_sumexp, double* target_dot, double* weight_sum, CUstream_st* stream);

// grad[i, c] = grad_rows[i] * (W_i * exp(z_ic - lse_i) - target_ic), W_i the row's total weight.
void backward_cuda(DType dtype, const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, int64_t splits,
                   void* grad, int64_t grad_row_stride, CUstream_st* stream);

}  // namespace wslfast::soft_ce
