// Tensor-core implicit-GEMM convolutions of the fused conv + BN + ReLU (fp32 accumulation, sm_80+;
// mma.sync m16n8k16 for bf16/fp16, m16n8k8 TF32 for float32 storage). Per group g the forward is the GEMM
//   out[m, j] = sum_k A[m, k] * B[j, k],  m = (n, ho, wo), j = output channel in the group, k = (r, s, c)
// with A gathered from the NHWC input on the fly (implicit GEMM, 16-byte loads of 8 channels) and B the
// weight rows (KRSC: each output channel's (r, s, c) is contiguous). The same kernel does the data
// gradient: A gathered from the output gradient with the transposed-conv rule, B the transposed weights.
// The epilogue adds bias / ReLU (eval) or accumulates the per-channel sum and sum of squares (training).
// The weight gradient is a third GEMM, dw[j, (r, s, c)] = sum_m g[m, j] * patch[m, (r, s, c)], split
// over m with float atomics.
//
// Both gradient GEMMs take the BN+ReLU backward in their loaders (BnReluGrad): they read grad_y and the
// saved z and form the conv-output gradient g in registers, so g never goes to memory.
//
// Tile: 128 rows x BN columns x 32 k per block, 4 warps each owning 32 rows; global loads for the next
// k-tile go to registers while the tensor cores work on the current one.
#include <cstdint>
#include <type_traits>

#include "conv_bn_cuda_mma_common.cuh"

namespace wslfast::conv_bn {
namespace {

using namespace mma;

// The convolution as the loaders see it. Forward: in = x, wt = w (KRSC), out = z. Data gradient:
// in = grad z, wt = the transposed weights [C, R, S, K/groups], out = grad x.
template <typename T>
struct ConvGemm {
  const T* in;
  const T* wt;
  T* out;
  int64_t N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride, pad, groups;
};

// Input pixel (hi, wi) that output pixel (ho, wo) reads through tap (r, s); false where it is padding.
template <bool kDgrad>
__device__ __forceinline__ bool source_pixel(int64_t ho, int64_t wo, int64_t r, int64_t s, int64_t stride,
                                             int64_t pad, int64_t Hin, int64_t Win, int64_t& hi, int64_t& wi) {
  if (!kDgrad) {
    hi = ho * stride - pad + r;
    wi = wo * stride - pad + s;
  } else {  // transposed rule: ho = hi * stride - pad + r
    const int64_t th = ho + pad - r, tw = wo + pad - s;
    if (th < 0 || tw < 0 || th % stride != 0 || tw % stride != 0) return false;
    hi = th / stride;
    wi = tw / stride;
  }
  return hi >= 0 && hi < Hin && wi >= 0 && wi < Win;
}

// kDgrad: cv.in is grad_y and bn (src = z or y) turns it into the conv-output gradient on the way in.
template <typename T, int BN, bool kDgrad, int kVec>
__global__ void __launch_bounds__(kThreads) conv_gemm_kernel(ConvGemm<T> cv, BnReluGrad bn,
                                                             const float* __restrict__ bias, bool relu,
                                                             double* __restrict__ sums) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  __shared__ float col_sum[BN], col_sq[BN];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t g = blockIdx.z, cin_g = cv.Cin / cv.groups, cout_g = cv.Cout / cv.groups;
  const int64_t M = cv.N * cv.Hout * cv.Wout, Kg = cv.R * cv.S * cin_g;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * BN;

  // A: each thread loads the 8-element k-chunk `kc` (in 8/kVec pieces) of rows tid/4 + 32*j, j < 4.
  const int kc = tid & 3;
  int64_t an[4], aho[4], awo[4];
  bool arow[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t m = m0 + (tid >> 2) + 32 * j;
    arow[j] = m < M;
    awo[j] = m % cv.Wout;
    aho[j] = (m / cv.Wout) % cv.Hout;
    an[j] = m / (cv.Wout * cv.Hout);
  }
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
      for (int h = 0; h < 8 / kVec; ++h) a_ch[h] = g * cin_g + (kb + kc * 8 + h * kVec) % cin_g;
    }
#pragma unroll
    for (int j = 0; j < kBPer; ++j) rb[j].clear();
#pragma unroll
    for (int h = 0; h < 8 / kVec; ++h) {
      const int64_t k0 = kb + kc * 8 + h * kVec;
      const int64_t tap = k0 / cin_g, c = k0 % cin_g, r = tap / cv.S, s = tap % cv.S;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int64_t hi, wi;
        if (arow[j] && k0 < Kg &&
            source_pixel<kDgrad>(aho[j], awo[j], r, s, cv.stride, cv.pad, cv.Hin, cv.Win, hi, wi)) {
          const int64_t off = ((an[j] * cv.Hin + hi) * cv.Win + wi) * cv.Cin + g * cin_g + c;
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
        const int64_t col = n0 + v / 4, kw = kb + (v & 3) * 8 + h * kVec;
        if (v < kBVec && col < cout_g && kw < Kg) load_piece<kVec>(rb[j], h, cv.wt + (g * cout_g + col) * Kg + kw);
      }
    }
  };
  auto store_tile = [&]() {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // The BN+ReLU backward runs here, after the tensor cores had the loads' latency to hide.
      if constexpr (kDgrad) bn_grad_chunk<T, kVec>(ra[j], rs[j], (a_valid >> (2 * j)) & 3u, a_ch, bn);
      ra[j].store(&As[(tid >> 2) + 32 * j][kc * 8]);
    }
#pragma unroll
    for (int j = 0; j < kBPer; ++j) {
      const int v = tid + j * kThreads;
      if (v < kBVec) rb[j].store(&Bs[v / 4][(v & 3) * 8]);
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

  // Epilogue: bias, ReLU, store; per-column sum and sum of squares of the fp32 values.
  const int gid = lane >> 2, tig = lane & 3;
  if (sums != nullptr && tid < BN) col_sum[tid] = 0.f, col_sq[tid] = 0.f;
  __syncthreads();
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
    float s1[2] = {0.f, 0.f}, s2[2] = {0.f, 0.f};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t col = n0 + nt * 8 + 2 * tig + e;
      if (col >= cout_g) continue;
      const int64_t oc = g * cout_g + col;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t m = m0 + warp * 32 + mt * 16 + gid + 8 * half;
          if (m >= M) continue;
          float v = acc[mt][nt][2 * half + e];
          if (bias != nullptr) v += bias[oc];
          if (relu) v = fmaxf(v, 0.f);
          cv.out[m * cv.Cout + oc] = from_float<T>(v);
          s1[e] += v;
          s2[e] += v * v;
        }
      }
    }
    if (sums != nullptr) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
          s1[e] += __shfl_xor_sync(0xffffffffu, s1[e], off);
          s2[e] += __shfl_xor_sync(0xffffffffu, s2[e], off);
        }
        if (gid == 0) {
          atomicAdd(&col_sum[nt * 8 + 2 * tig + e], s1[e]);
          atomicAdd(&col_sq[nt * 8 + 2 * tig + e], s2[e]);
        }
      }
    }
  }
  if (sums != nullptr) {
    __syncthreads();
    if (tid < BN && n0 + tid < cout_g) {
      const int64_t oc = g * cout_g + n0 + tid;
      atomicAdd(sums + oc, static_cast<double>(col_sum[tid]));
      atomicAdd(sums + cv.Cout + oc, static_cast<double>(col_sq[tid]));
    }
  }
}

template <bool kDgrad, typename T>
void launch_gemm(const ConvGemm<T>& cv, const BnReluGrad& bn, const float* bias, bool relu, double* sums,
                 CUstream_st* stream) {
  const int64_t M = cv.N * cv.Hout * cv.Wout, cout_g = cv.Cout / cv.groups;
  // float32 tiles are twice the registers of bf16 ones: at 64 columns the data gradient spills, so 32.
  bn_switch<std::is_same_v<T, float> ? 32 : 64>(cout_g, [&](auto cols) {
    vec_switch(cv.Cin / cv.groups, cout_g, [&](auto vec) {
      constexpr int BN = decltype(cols)::value, kVec = decltype(vec)::value;
      const dim3 grid(static_cast<unsigned>((M + kBM - 1) / kBM), static_cast<unsigned>((cout_g + BN - 1) / BN),
                      static_cast<unsigned>(cv.groups));
      conv_gemm_kernel<T, BN, kDgrad, kVec><<<grid, kThreads, 0, stream>>>(cv, bn, bias, relu, sums);
    });
  });
  check_launch(kDgrad ? "tensor-core conv dgrad" : "tensor-core conv forward");
}

}  // namespace

bool conv_fwd_fast_supported(DType dtype, const ConvShape& s) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16 || dtype == DType::kFloat32) &&
         (s.C / s.groups) % 4 == 0 && (s.K / s.groups) % 4 == 0 && s.groups <= 65535;
}

void conv_fwd_fast_cuda(DType dtype, const void* x, const void* w, const float* bias, bool relu, void* z,
                        double* sums, const ConvShape& s, CUstream_st* stream) {
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const ConvGemm<T> cv{static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(z), s.N, s.H, s.W,
                         s.C, s.P, s.Q, s.K, s.R, s.S, s.stride, s.pad, s.groups};
    launch_gemm<false>(cv, BnReluGrad{}, bias, relu, sums, stream);
  });
}

void conv_dgrad_fast_cuda(DType dtype, const void* dy, const BnReluGrad& bn, const void* w_t, void* dx,
                          const ConvShape& s, CUstream_st* stream) {
  check_bn_grad(bn);
  mma_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    // The data gradient is a convolution from K to C channels gathered with the transposed rule.
    const ConvGemm<T> cv{static_cast<const T*>(dy), static_cast<const T*>(w_t), static_cast<T*>(dx), s.N, s.P, s.Q,
                         s.K, s.H, s.W, s.C, s.R, s.S, s.stride, s.pad, s.groups};
    launch_gemm<true>(cv, bn, nullptr, false, nullptr, stream);
  });
}

}  // namespace wslfast::conv_bn
