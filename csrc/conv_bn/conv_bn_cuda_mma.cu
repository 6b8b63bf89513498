// Tensor-core implicit-GEMM convolutions of the fused conv + BN + ReLU (bf16/fp16, fp32 accumulation,
// mma.sync m16n8k16, sm_80+). Per group g the forward is the GEMM
//   out[m, j] = sum_k A[m, k] * B[j, k],  m = (n, ho, wo), j = output channel in the group, k = (r, s, c)
// with A gathered from the NHWC input on the fly (implicit GEMM, 16-byte loads of 8 channels) and B the
// weight rows (KRSC: each output channel's (r, s, c) is contiguous). The same kernel does the data
// gradient: A gathered from the output gradient with the transposed-conv rule, B the transposed weights.
// The epilogue adds bias / ReLU (eval) or accumulates the per-channel sum and sum of squares (training).
// The weight gradient is a third GEMM, dw[j, (r, s, c)] = sum_m g[m, j] * patch[m, (r, s, c)], split
// over m with float atomics.
//
// Tile: 128 rows x BN columns x 32 k per block, 4 warps each owning 32 rows; global loads for the next
// k-tile go to registers while the tensor cores work on the current one.
#include <cstdint>
#include <type_traits>

#include "conv_bn_cuda_common.cuh"

namespace wslfast::conv_bn {
namespace {

constexpr int kBM = 128, kBK = 32, kLds = kBK + 8, kWarps = 4, kThreads = kWarps * 32;

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};

// One k-tile of the block GEMM: As [kBM][kLds] (rows x k), Bs [BN][kLds] (columns x k), both k-contiguous.
// Fragment layouts of mma.m16n8k16 (PTX ISA): lane = 4 * gid + tig; A regs hold (gid | gid+8, 2*tig | +8),
// B regs hold (k = 2*tig | +8, n = gid), D holds (row gid | gid+8, cols 2*tig, 2*tig+1).
template <typename T, int BN>
__device__ __forceinline__ void mma_k_tile(const T (*As)[kLds], const T (*Bs)[kLds], float (&acc)[2][BN / 8][4],
                                           int warp, int lane) {
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += 16) {
    uint32_t a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int row = warp * 32 + mt * 16 + gid;
      a[mt][0] = *reinterpret_cast<const uint32_t*>(&As[row][kk + 2 * tig]);
      a[mt][1] = *reinterpret_cast<const uint32_t*>(&As[row + 8][kk + 2 * tig]);
      a[mt][2] = *reinterpret_cast<const uint32_t*>(&As[row][kk + 2 * tig + 8]);
      a[mt][3] = *reinterpret_cast<const uint32_t*>(&As[row + 8][kk + 2 * tig + 8]);
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      uint32_t b[2];
      b[0] = *reinterpret_cast<const uint32_t*>(&Bs[nt * 8 + gid][kk + 2 * tig]);
      b[1] = *reinterpret_cast<const uint32_t*>(&Bs[nt * 8 + gid][kk + 2 * tig + 8]);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) Mma<T>::run(acc[mt][nt], a[mt], b);
    }
  }
}

// The convolution as the loaders see it. Forward: in = x, wt = w (KRSC), out = z. Data gradient:
// in = grad z, wt = the transposed weights [C, R, S, K/groups], out = grad x.
template <typename T>
struct ConvGemm {
  const T* in;
  const T* wt;
  T* out;
  int64_t N, Hin, Win, Cin, Hout, Wout, Cout, R, S, stride, pad, groups;
};

// Loads kVec storage elements (16 bytes for 8, 8 bytes for 4) into piece h of an 8-element chunk.
// 4-wide pieces serve groups of 4 channels (ResNeXt 32x4d's first stage), where 8 consecutive k
// indices span two filter taps and rows are only 8-byte aligned.
template <int kVec, typename T>
__device__ __forceinline__ void load_piece(uint4& dst, int h, const T* src) {
  if constexpr (kVec == 8) {
    dst = *reinterpret_cast<const uint4*>(src);
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(src);
    if (h == 0) dst.x = v.x, dst.y = v.y;
    else dst.z = v.x, dst.w = v.y;
  }
}

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

template <typename T, int BN, bool kDgrad, int kVec>
__global__ void __launch_bounds__(kThreads) conv_gemm_kernel(ConvGemm<T> cv, const float* __restrict__ bias, bool relu,
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
  uint4 ra[4], rb[kBPer];

  auto load_tile = [&](int64_t kb) {
#pragma unroll
    for (int j = 0; j < 4; ++j) ra[j] = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int j = 0; j < kBPer; ++j) rb[j] = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int h = 0; h < 8 / kVec; ++h) {
      const int64_t k0 = kb + kc * 8 + h * kVec;
      const int64_t tap = k0 / cin_g, c = k0 % cin_g, r = tap / cv.S, s = tap % cv.S;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int64_t hi, wi;
        if (arow[j] && k0 < Kg &&
            source_pixel<kDgrad>(aho[j], awo[j], r, s, cv.stride, cv.pad, cv.Hin, cv.Win, hi, wi))
          load_piece<kVec>(ra[j], h, cv.in + ((an[j] * cv.Hin + hi) * cv.Win + wi) * cv.Cin + g * cin_g + c);
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
    for (int j = 0; j < 4; ++j) *reinterpret_cast<uint4*>(&As[(tid >> 2) + 32 * j][kc * 8]) = ra[j];
#pragma unroll
    for (int j = 0; j < kBPer; ++j) {
      const int v = tid + j * kThreads;
      if (v < kBVec) *reinterpret_cast<uint4*>(&Bs[v / 4][(v & 3) * 8]) = rb[j];
    }
  };

  float acc[2][BN / 8][4] = {};
  load_tile(0);
  for (int64_t kb = 0; kb < Kg; kb += kBK) {
    store_tile();
    __syncthreads();
    if (kb + kBK < Kg) load_tile(kb + kBK);  // in flight while the tensor cores run
    mma_k_tile<T, BN>(As, Bs, acc, warp, lane);
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

// Weight gradient of one group as D[j, kk] = sum_m patch[m, j] * g[m, kk] (j = (r, s, c), kk = output
// channel in the group): A = patch^T, B = g^T, both transposed into k(=m)-contiguous shared tiles.
// Block z = group * splits + split; each split sums its own range of m and adds into dw (float, zeroed).
template <typename T, int BN, int kVec>
__global__ void __launch_bounds__(kThreads) conv_wgrad_kernel(const T* __restrict__ gz, const T* __restrict__ x,
                                                              float* __restrict__ dw, ConvShape s, int64_t splits,
                                                              int64_t m_per_split) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t g = blockIdx.z / splits, split = blockIdx.z % splits;
  const int64_t cg = s.C / s.groups, kg = s.K / s.groups, J = s.R * s.S * cg, M = s.N * s.P * s.Q;
  const int64_t j0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t m_begin = split * m_per_split, m_end = m_begin + m_per_split < M ? m_begin + m_per_split : M;

  float acc[2][BN / 8][4] = {};
  for (int64_t mb = m_begin; mb < m_end; mb += kBK) {
    // A: kBM x kBK values as kBM/kVec * kBK vectors of kVec channels; v -> m = v % kBK, j chunk v / kBK.
    for (int v = tid; v < kBM / kVec * kBK; v += kThreads) {
      const int ml = v % kBK, jl = (v / kBK) * kVec;
      const int64_t m = mb + ml, j = j0 + jl;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (m < m_end && j < J) {
        const int64_t tap = j / cg, c = j % cg, r = tap / s.S, t = tap % s.S;
        const int64_t q = m % s.Q, p = (m / s.Q) % s.P, n = m / (s.Q * s.P);
        const int64_t h = p * s.stride - s.pad + r, w = q * s.stride - s.pad + t;
        if (h >= 0 && h < s.H && w >= 0 && w < s.W)
          load_piece<kVec>(val, 0, x + ((n * s.H + h) * s.W + w) * s.C + g * cg + c);
      }
      const T* e = reinterpret_cast<const T*>(&val);
#pragma unroll
      for (int i = 0; i < kVec; ++i) As[jl + i][ml] = e[i];
    }
    for (int v = tid; v < BN / kVec * kBK; v += kThreads) {
      const int ml = v % kBK, kl = (v / kBK) * kVec;
      const int64_t m = mb + ml, kk = n0 + kl;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (m < m_end && kk < kg) load_piece<kVec>(val, 0, gz + m * s.K + g * kg + kk);
      const T* e = reinterpret_cast<const T*>(&val);
#pragma unroll
      for (int i = 0; i < kVec; ++i) Bs[kl + i][ml] = e[i];
    }
    __syncthreads();
    mma_k_tile<T, BN>(As, Bs, acc, warp, lane);
    __syncthreads();
  }
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t kk = n0 + nt * 8 + 2 * tig + e;
      if (kk >= kg) continue;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t j = j0 + warp * 32 + mt * 16 + gid + 8 * half;
          if (j < J) atomicAdd(dw + (g * kg + kk) * J + j, acc[mt][nt][2 * half + e]);
        }
    }
}

// Columns per block: the smallest of 16, 32, 64 covering the group's output channels (64 beyond).
template <typename Fn>
void bn_switch(int64_t cols, Fn&& fn) {
  if (cols <= 16) fn(std::integral_constant<int, 16>{});
  else if (cols <= 32) fn(std::integral_constant<int, 32>{});
  else fn(std::integral_constant<int, 64>{});
}

// 8-wide (16-byte) loads where channels per group (in and out) are multiples of 8, else 4-wide.
template <typename Fn>
void vec_switch(int64_t cg, int64_t kg, Fn&& fn) {
  if (cg % 8 == 0 && kg % 8 == 0) fn(std::integral_constant<int, 8>{});
  else fn(std::integral_constant<int, 4>{});
}

template <typename Fn>
void half_switch(DType dtype, Fn&& fn) {
  if (dtype == DType::kBFloat16) fn(__nv_bfloat16{});
  else if (dtype == DType::kFloat16) fn(__half{});
  else throw std::invalid_argument("wslfast conv_bn_relu: the tensor-core kernels take bfloat16 or float16");
}

template <bool kDgrad, typename T>
void launch_gemm(const ConvGemm<T>& cv, const float* bias, bool relu, double* sums, CUstream_st* stream) {
  const int64_t M = cv.N * cv.Hout * cv.Wout, cout_g = cv.Cout / cv.groups;
  bn_switch(cout_g, [&](auto bn) {
    vec_switch(cv.Cin / cv.groups, cout_g, [&](auto vec) {
      constexpr int BN = decltype(bn)::value, kVec = decltype(vec)::value;
      const dim3 grid(static_cast<unsigned>((M + kBM - 1) / kBM), static_cast<unsigned>((cout_g + BN - 1) / BN),
                      static_cast<unsigned>(cv.groups));
      conv_gemm_kernel<T, BN, kDgrad, kVec><<<grid, kThreads, 0, stream>>>(cv, bias, relu, sums);
    });
  });
  check_launch(kDgrad ? "tensor-core conv dgrad" : "tensor-core conv forward");
}

}  // namespace

bool conv_fwd_fast_supported(DType dtype, const ConvShape& s) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && (s.C / s.groups) % 4 == 0 &&
         (s.K / s.groups) % 4 == 0 && s.groups <= 65535;
}

void conv_fwd_fast_cuda(DType dtype, const void* x, const void* w, const float* bias, bool relu, void* z,
                        double* sums, const ConvShape& s, CUstream_st* stream) {
  half_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const ConvGemm<T> cv{static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(z), s.N, s.H, s.W,
                         s.C, s.P, s.Q, s.K, s.R, s.S, s.stride, s.pad, s.groups};
    launch_gemm<false>(cv, bias, relu, sums, stream);
  });
}

void conv_dgrad_fast_cuda(DType dtype, const void* g, const void* w_t, void* dx, const ConvShape& s,
                          CUstream_st* stream) {
  half_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    // The data gradient is a convolution from K to C channels gathered with the transposed rule.
    const ConvGemm<T> cv{static_cast<const T*>(g), static_cast<const T*>(w_t), static_cast<T*>(dx), s.N, s.P, s.Q,
                         s.K, s.H, s.W, s.C, s.R, s.S, s.stride, s.pad, s.groups};
    launch_gemm<true>(cv, nullptr, false, nullptr, stream);
  });
}

void conv_wgrad_fast_cuda(DType dtype, const void* g, const void* x, float* dw, const ConvShape& s,
                          CUstream_st* stream) {
  half_switch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t kg = s.K / s.groups, J = s.R * s.S * (s.C / s.groups), M = s.N * s.P * s.Q;
    // Split the m reduction so the grid fills the GPU: ~8k positions per block, at most 65535 blocks in z.
    int64_t splits = (M + 8191) / 8192;
    if (splits * s.groups > 65535) splits = 65535 / s.groups;
    if (splits < 1) splits = 1;
    const int64_t per = ((M + splits - 1) / splits + kBK - 1) / kBK * kBK;
    splits = (M + per - 1) / per;
    bn_switch(kg, [&](auto bn) {
      vec_switch(s.C / s.groups, kg, [&](auto vec) {
        constexpr int BN = decltype(bn)::value, kVec = decltype(vec)::value;
        const dim3 grid(static_cast<unsigned>((J + kBM - 1) / kBM), static_cast<unsigned>((kg + BN - 1) / BN),
                        static_cast<unsigned>(s.groups * splits));
        conv_wgrad_kernel<T, BN, kVec><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(g),
                                                                      static_cast<const T*>(x), dw, s, splits, per);
      });
    });
    check_launch("tensor-core conv wgrad");
  });
}

}  // namespace wslfast::conv_bn
