// Tensor-core implicit-GEMM convolutions of the fused conv + BN + ReLU (fp32 accumulation, sm_80+;
// mma.sync m16n8k16 for bf16/fp16, m16n8k8 TF32 for float32 storage). Per group g the forward is the GEMM
//   out[m, j] = sum_k A[m, k] * B[j, k],  m = (n, ho, wo), j = output channel in the group, k = (r, s, c)
// with A gathered from the NHWC input on the fly (implicit GEMM, 16-byte loads of 8 channels) and B the
// weight rows (KRSC: each output channel's (r, s, c) is contiguous). The same kernel does the data
// gradient: A gathered from the output gradient with the transposed-conv rule, B the transposed weights.
// The epilogue adds bias / ReLU (eval) or writes the block's per-channel (mean, M2) partial (training).
// The weight gradient is a third GEMM, dw[j, (r, s, c)] = sum_m g[m, j] * patch[m, (r, s, c)], split
// over m, the splits summed in order (conv_bn_cuda_mma_wgrad.cu).
//
// Both gradient GEMMs take the BN+ReLU backward in their loaders (BnReluGrad): they read grad_y and the
// saved z and form the conv-output gradient g in registers, so g never goes to memory.
//
// Tile: 128 rows x BN columns x 32 k per block, 4 warps each owning 32 rows; global loads for the next
// k-tile go to registers while the tensor cores work on the current one.
#include <cstdint>
#include <type_traits>

#include "conv_bn_cuda_mma_common.cuh"
#include "conv_bn_stats.h"

namespace wslfast::conv_bn {
namespace {

using namespace mma;

// The convolution as the loaders see it. Forward: in = x, wt = w (KRSC), out = z. Data gradient:
// in = grad z, wt = the transposed weights [C, R, S, K/groups], out = grad x. The index math is
// conv_bn_mma_index.h's (gemm_row, gemm_a_offset, gemm_b_offset, gemm_out_offset), tested on the CPU.
template <typename T>
struct ConvGemm {
  const T* in;
  const T* wt;
  T* out;
  GemmDims d;
};

// kDgrad: cv.in is grad_y and bn (src = z or y) turns it into the conv-output gradient on the way in.
template <typename T, int BN, bool kDgrad, int kVec>
__global__ void __launch_bounds__(kThreads) conv_gemm_kernel(ConvGemm<T> cv, BnReluGrad bn,
                                                             const float* __restrict__ bias, bool relu,
                                                             double* __restrict__ parts) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  __shared__ double red[kWarps][BN], col_mean[BN];
  __shared__ float col_mf[BN];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const GemmDims& d = cv.d;
  const int64_t g = blockIdx.z, cin_g = d.Cin / d.groups, cout_g = d.Cout / d.groups;
  const int64_t M = d.N * d.Hout * d.Wout, Kg = d.R * d.S * cin_g;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * BN;

  // A: each thread loads the 8-element k-chunk a_slot(tid, j).col (in 8/kVec pieces) of its 4 tile rows.
  const int kc = a_slot(tid, 0).col / 8;
  GemmRow arow[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) arow[j] = gemm_row(d, m0 + a_slot(tid, j).row);
  constexpr int kBVec = BN * kBK / 8;
  constexpr int kBPer = (kBVec + kThreads - 1) / kThreads;
  Chunk<T> ra[4], rb[kBPer];
  // Data gradient only: src pieces, which pieces were loaded (bit 2 * j + h), their first channels.
  Chunk<T> rs[kDgrad ? 4 : 1];
  unsigned a_valid = 0;
  int64_t a_ch[8 / kVec];
  const T* src = static_cast<const T*>(bn.src);

  auto load_tile = [&](int64_t kb) {
#pragma unroll
    for (int j = 0; j < 4; ++j) ra[j].clear();
    if constexpr (kDgrad) {
      a_valid = 0;
#pragma unroll
      for (int h = 0; h < 8 / kVec; ++h) a_ch[h] = gemm_a_channel(d, g, kb + kc * 8 + h * kVec);
    }
#pragma unroll
    for (int j = 0; j < kBPer; ++j) rb[j].clear();
#pragma unroll
    for (int h = 0; h < 8 / kVec; ++h) {
      const int64_t k0 = kb + kc * 8 + h * kVec;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t off = gemm_a_offset<kDgrad>(d, g, arow[j], k0);
        if (off >= 0) {
          load_piece<kVec>(ra[j], h, cv.in + off);
          if constexpr (kDgrad) {
            load_piece<kVec>(rs[j], h, src + off);
            a_valid |= 1u << (2 * j + h);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kBPer; ++j) {
        const int v = tid + j * kThreads;
        const RowCol slot = b_slot(v);
        const int64_t off = v < kBVec ? gemm_b_offset(d, g, n0 + slot.row, kb + slot.col + h * kVec) : -1;
        if (off >= 0) load_piece<kVec>(rb[j], h, cv.wt + off);
      }
    }
  };
  auto store_tile = [&]() {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // The BN+ReLU backward runs here, after the tensor cores had the loads' latency to hide.
      if constexpr (kDgrad) bn_grad_chunk<T, kVec>(ra[j], rs[j], (a_valid >> (2 * j)) & 3u, a_ch, bn);
      const RowCol slot = a_slot(tid, j);
      ra[j].store(&As[slot.row][slot.col]);
    }
#pragma unroll
    for (int j = 0; j < kBPer; ++j) {
      const int v = tid + j * kThreads;
      const RowCol slot = b_slot(v);
      if (v < kBVec) rb[j].store(&Bs[slot.row][slot.col]);
    }
  };

  float acc[2][BN / 8][4] = {};
  load_tile(0);
  for (int64_t kb = 0; kb < Kg; kb += kBK) {
    store_tile();
    __syncthreads();
    if (kb + kBK < Kg) load_tile(kb + kBK);  // in flight while the tensor cores run
    mma_k_tile<BN>(As, Bs, acc, warp, lane);
    __syncthreads();
  }

  // Epilogue: bias, ReLU, store. Training also writes the block's per-column (mean, M2) of the fp32 values
  // (conv_bn_stats.h): the mean from a double sum, then the squared deviations from it, each reduced in a
  // fixed order (xor butterfly over the 8 row lanes, then the 4 warps in order), no atomics.
  const int gid = lane >> 2;
  auto value = [&](int mt, int nt, int i, int64_t oc) {
    float v = acc[mt][nt][i];
    if (bias != nullptr) v += bias[oc];
    if (relu) v = fmaxf(v, 0.f);
    return v;
  };
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const RowCol rc = frag_acc(warp, lane, mt, nt, i);
        const int64_t off = gemm_out_offset(d, g, m0 + rc.row, n0 + rc.col);
        if (off >= 0) cv.out[off] = from_float<T>(value(mt, nt, i, g * cout_g + n0 + rc.col));
      }
  if (parts == nullptr) return;
  const double nb = part_rows(blockIdx.x, kBM, M);
  // pass 0: column sums -> red -> mean (double, and its float mf); pass 1: sum (v - mf)^2 -> red -> M2.
#pragma unroll
  for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int cl = frag_acc(warp, lane, 0, nt, e).col;
        const float mf = pass == 0 ? 0.f : col_mf[cl];
        double t = 0.0;
        float tf = 0.f;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int64_t m = m0 + frag_acc(warp, lane, mt, nt, 2 * half + e).row;
            if (m >= M) continue;
            const float v = value(mt, nt, 2 * half + e, 0);  // no bias / ReLU in training
            if (pass == 0) t += v;
            else tf += (v - mf) * (v - mf);
          }
        }
        if (pass == 1) t = tf;
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
        if (gid == 0) red[warp][cl] = t;
      }
    }
    __syncthreads();
    if (tid < BN) {
      const double total = ((red[0][tid] + red[1][tid]) + red[2][tid]) + red[3][tid];
      if (pass == 0) {
        col_mean[tid] = nb > 0 ? total / nb : 0.0;
        col_mf[tid] = static_cast<float>(col_mean[tid]);
      } else if (n0 + tid < cout_g) {
        const MeanM2 pm = partial_from_sums(nb, col_mean[tid] * nb, total, col_mf[tid]);
        const int64_t oc = g * cout_g + n0 + tid, nparts = gridDim.x;
        parts[blockIdx.x * d.Cout + oc] = pm.mean;
        parts[(nparts + blockIdx.x) * d.Cout + oc] = pm.m2;
      }
    }
    __syncthreads();
  }
}

template <bool kDgrad, typename T>
void launch_gemm(const ConvGemm<T>& cv, const BnReluGrad& bn, const float* bias, bool relu, double* parts,
                 CUstream_st* stream) {
  const int64_t M = cv.d.N * cv.d.Hout * cv.d.Wout, cout_g = cv.d.Cout / cv.d.groups;
  // float32 tiles are twice the registers of bf16 ones: at 64 columns the data gradient spills, so 32.
  bn_switch<std::is_same_v<T, float> ? 32 : 64>(cout_g, [&](auto cols) {
    vec_switch(cv.d.Cin / cv.d.groups, cout_g, [&](auto vec) {
      constexpr int BN = decltype(cols)::value, kVec = decltype(vec)::value;
      const dim3 grid(static_cast<unsigned>((M + kBM - 1) / kBM), static_cast<unsigned>((cout_g + BN - 1) / BN),
                      static_cast<unsigned>(cv.d.groups));
      conv_gemm_kernel<T, BN, kDgrad, kVec><<<grid, kThreads, 0, stream>>>(cv, bn, bias, relu, parts);
    });
  });
  check_launch(kDgrad ? "tensor-core conv dgrad" : "tensor-core conv forward");
}

}  // namespace

bool conv_fwd_fast_supported(DType dtype, const ConvShape& s) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16 || dtype == DType::kFloat32) &&
         (s.C / s.groups) % 4 == 0 && (s.K / s.groups) % 4 == 0 && s.groups <= 65535;
}

StatLayout conv_fwd_fast_stat_layout(const ConvShape& s) {
  const int64_t rows = s.N * s.P * s.Q;
  return {(rows + kBM - 1) / kBM, kBM, rows};
}

void conv_fwd_fast_cuda(DType dtype, const void* x, const void* w, const float* bias, bool relu, void* z,
                        double* parts, const ConvShape& s, CUstream_st* stream) {
  if (parts != nullptr && (bias != nullptr || relu))
    throw std::invalid_argument("wslfast conv_bn_relu: the fast forward gives statistics without bias or ReLU only");
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const ConvGemm<T> cv{static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(z),
                         GemmDims{s.N, s.H, s.W, s.C, s.P, s.Q, s.K, s.R, s.S, s.stride, s.pad, s.groups}};
    launch_gemm<false>(cv, BnReluGrad{}, bias, relu, parts, stream);
  });
}

void conv_dgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* w_t, void* dx,
                          const ConvShape& s, CUstream_st* stream) {
  check_bn_grad(bn);
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    // The data gradient is a convolution from K to C channels gathered with the transposed rule.
    const ConvGemm<T> cv{static_cast<const T*>(dy), static_cast<const T*>(w_t), static_cast<T*>(dx),
                         GemmDims{s.N, s.P, s.Q, s.K, s.H, s.W, s.C, s.R, s.S, s.stride, s.pad, s.groups}};
    launch_gemm<true>(cv, bn, nullptr, false, nullptr, stream);
  });
}

}  // namespace wslfast::conv_bn
