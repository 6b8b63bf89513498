// The per-channel BatchNorm math of the fused conv + BN + ReLU, one channel at a time, in double: batch
// statistics -> scale/shift (forward) and the backward coefficients. Plain C++ that nvcc also compiles
// for the device, so the CPU loops (conv_bn.cpp) and the CUDA finalize kernels (conv_bn_cuda_finalize.cu)
// run the very same arithmetic, and the CPU tests cover the GPU's formulas.
#pragma once
#include <cmath>

#ifdef __CUDACC__
#define WSLFAST_HOST_DEVICE __host__ __device__
#else
#define WSLFAST_HOST_DEVICE
#endif

namespace wslfast::conv_bn {

// scale = gamma / sqrt(var + eps), shift = beta - mean * scale. Forward and backward both call this on
// the stored (rounded) mean and var, so the ReLU mask the backward recomputes is the forward's.
WSLFAST_HOST_DEVICE inline void bn_scale_shift_one(double mean, double var, double gamma, double beta, double eps,
                                                   double& scale, double& shift) {
  scale = gamma * (1.0 / sqrt(var + eps));
  shift = beta - mean * scale;
}

// Batch statistics from the sums about a pivot (s0 = sum(z - pivot), s1 = sum((z - pivot)^2)) over
// `count` values: mean = pivot + E[z - pivot], var = E[(z - pivot)^2] - E[z - pivot]^2 (biased, as BN
// normalizes; a negative rounding residue clamped at 0, NaN kept: a channel with NaN values gets NaN mean and
// variance, and so a NaN running variance, as torch's batch_norm gives). Coef is the stored statistics type
// (float, or double for float64 storage); scale and shift are computed from the rounded values.
template <typename Coef>
WSLFAST_HOST_DEVICE inline void bn_forward_one(double s0, double s1, double count, double pivot, double gamma,
                                               double beta, double eps, Coef& mean, Coef& var, double& scale,
                                               double& shift) {
  const double e0 = s0 / count, e1 = s1 / count, v = e1 - e0 * e0;
  mean = static_cast<Coef>(pivot + e0);
  var = static_cast<Coef>(v < 0.0 ? 0.0 : v);  // NaN < 0 is false: NaN stays
  bn_scale_shift_one(static_cast<double>(mean), static_cast<double>(var), gamma, beta, eps, scale, shift);
}

// Backward coefficients from the sums S0 = sum(mask * dy), S1 = sum(mask * dy * (z - mean)). With
// dz = mask * dy and xhat = (z - mean) * invstd the BN backward is
//   dx_bn = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)) = k * dz + p * z + q,
// dgamma = S1 * invstd, dbeta = S0.
struct BnBackwardCoef {
  double k, p, q, dgamma, dbeta;
};

WSLFAST_HOST_DEVICE inline BnBackwardCoef bn_backward_one(double S0, double S1, double count, double mean,
                                                          double var, double gamma, double eps) {
  const double invstd = 1.0 / sqrt(var + eps);
  BnBackwardCoef c;
  c.k = gamma * invstd;
  c.p = -c.k * invstd * invstd * S1 / count;
  c.q = -c.p * mean - c.k * S0 / count;
  c.dgamma = S1 * invstd;
  c.dbeta = S0;
  return c;
}

}  // namespace wslfast::conv_bn
