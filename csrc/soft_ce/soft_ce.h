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
// `splits` blocks share each row (soft_ce_math.h choose_splits); above 1 forward_cuda needs a workspace of
// 4 * rows * splits doubles for the partials, merged in a fixed order (the results repeat bit for bit).
// Pointers must be aligned to their element size; rows may start anywhere (vectors peel a scalar head).
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

// The loss in two launches: the row kernel (partials into `workspace`, 4 * rows * splits doubles, needed for any
// rows > 0), then one that merges them and writes lse[rows] (float64, for the backward) and
//   kNone: loss[rows], each row's W_i * lse_i - dot_i (0 for rows without target weight);
//   kSum / kMean: loss[0], the rows' sum, or the sum over max(1, rows with targets) for the mean, reduced in
//   float64 by one block in a fixed order (bit for bit repeatable); norm[0] = that divisor (1 for kSum).
enum class Reduction : int { kNone = 0, kSum = 1, kMean = 2 };
void loss_cuda(DType dtype, const void* logits, int64_t rows, int64_t cols, int64_t row_stride, Targets targets,
               int64_t splits, Reduction reduction, double* workspace, double* lse, float* loss, float* norm,
               CUstream_st* stream);

// The loss from partials already computed: parts [4][num_parts][rows] float64 (max, sum of exp, target dot,
// weight; merged in part order, the weight taken from part 0), as the row kernel writes them, one part per
// split or per vocabulary chunk. Writes lse and loss as loss_cuda does (one launch); norm may be null for kNone
// (else it gets 1).
void finish_cuda(const double* parts, int64_t rows, int64_t num_parts, const int64_t* offsets, Reduction reduction,
                 double* lse, float* loss, float* norm, CUstream_st* stream);

// The upstream gradient of row i: values[i * stride] / (norm ? norm[0] : 1). stride 0 broadcasts one value
// (the gradient of a sum or mean, without materialising it per row).
struct GradRows {
  const float* values;
  int64_t stride;
  const float* norm;
};

// grad[i, c] = g_i * (W_i * exp(z_ic - lse_i) - target_ic), W_i the row's total weight. Rows whose logits and
// gradient rows share their 16-byte phase run 16-byte vectors over their aligned middle.
void backward_cuda(DType dtype, GradRows grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, int64_t splits,
                   void* grad, int64_t grad_row_stride, CUstream_st* stream);
// The same with g_i = grad_rows[i].
void backward_cuda(DType dtype, const float* grad_rows, const void* logits, int64_t rows, int64_t cols,
                   int64_t row_stride, const double* lse, int64_t col_begin, Targets targets, int64_t splits,
                   void* grad, int64_t grad_row_stride, CUstream_st* stream);

}  // namespace wslfast::soft_ce
