// Tensor-core implicit-GEMM convolutions of the fused conv + BN + ReLU (fp32 accumulation, sm_80+;
// mma.sync m16n8k16 for bf16/fp16, m16n8k8 TF32 for float32 storage). Per group g the forward is the GEMM
//   out[m, col] = sum_k A[m, k] * B[col, k]
// with A gathered from the NHWC input on the fly (implicit GEMM, 16-byte loads of 8 channels, 8-byte of 4) and
// B the weight rows (KRSC: each output channel's (r, s, c) is contiguous). The same kernel does the data
// gradient: A gathered from the output gradient, B the transposed weights. The GEMMs are
// conv_bn_mma_geometry.h's: with 4 channels a group a GEMM row holds two output pixels (pixel pairs: the
// columns (pixel, channel) fill the mma's n = 8), and the data gradient runs one GEMM per output phase of the
// stride, over only the taps that reach it. The tiles and the grid come from conv_bn_mma_plan.h.
// The epilogue adds bias / ReLU (eval) or writes the block's per-channel (mean, M2) partial (training).
// The weight gradient is a third GEMM, split over m, the splits summed in order (conv_bn_cuda_mma_wgrad.cu).
//
// Both gradient GEMMs take the BN+ReLU backward in their loaders (BnReluGrad): they read grad_y and the
// saved z and form the conv-output gradient g in registers, so g never goes to memory.
//
// Tile: 128 rows x BN columns x 32 k per block, 4 warps each owning 32 rows; global loads for the next
// k-tile go to registers while the tensor cores work on the current one; k steps and 16-row mma tiles that
// hold only padding are skipped.
#include <cstdint>
#include <type_traits>

#include "conv_bn_cuda_mma_common.cuh"
#include "conv_bn_stats.h"

namespace wslfast::conv_bn {
namespace {

using namespace mma;

// The convolution as the loaders see it. Forward: in = x, wt = w (KRSC), out = z. Data gradient:
// in = grad z, wt = the transposed weights [C, R, S, K/groups], out = grad x. The index math is
// conv_bn_mma_geometry.h's (gemm_geom, gemm_row, gemm_k, gemm_a_offset, gemm_b_offset, gemm_out_offset),
// tested on the CPU against conv2d (tests/ops/test_conv_bn_geometry.py).
template <typename T>
struct ConvGemm {
  const T* in;
  const T* wt;
  T* out;
  GemmDims d;
};

// kDgrad: cv.in is grad_y and bn (src = z or y) turns it into the conv-output gradient on the way in.
// Block x = (m-tile, phase, group, column tile), fastest last (gemm_grid); the GEMM of the block's phase is gemm_geom's
// (kPix output pixels a row; the data gradient's phases gather only the taps that reach them).
template <typename T, int BN, bool kDgrad, int kVec, int kPix>
__global__ void __launch_bounds__(kThreads) conv_gemm_kernel(ConvGemm<T> cv, BnReluGrad bn,
                                                             const float* __restrict__ bias, bool relu,
                                                             double* __restrict__ parts) {
  __shared__ __align__(16) T As[kBM][kLds];
  __shared__ __align__(16) T Bs[BN][kLds];
  __shared__ double red[kWarps][BN], col_mean[BN];
  __shared__ float col_mf[BN];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const GemmDims& d = cv.d;
  const int64_t ntiles = (d.Cout / d.groups * kPix + BN - 1) / BN, phases = gemm_phases(d, kDgrad);
  const int64_t nt = blockIdx.x % ntiles, g = (blockIdx.x / ntiles) % d.groups, rest = blockIdx.x / ntiles / d.groups;
  const int64_t mtile = rest / phases;
  const GemmGeom geo = gemm_geom<kDgrad>(d, kPix, rest % phases);
  const int64_t m0 = mtile * kBM, n0 = nt * BN;
  if (m0 >= geo.M) return;  // a phase with fewer rows than phase 0 (the whole block leaves)
  const int64_t Kg = geo.Kg;
  constexpr int kChans = BN / kPix;  // pixel pairs: columns dq * 4 + jo, statistics per channel jo

  // A: each thread loads the 8-element k-chunk a_slot(tid, j).col (in 8/kVec pieces) of its 4 tile rows.
  const int kc = a_slot(tid, 0).col / 8;
  GeomRow arow[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) arow[j] = gemm_row(geo, m0 + a_slot(tid, j).row);
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
    if constexpr (kDgrad) a_valid = 0;
#pragma unroll
    for (int j = 0; j < kBPer; ++j) rb[j].clear();
#pragma unroll
    for (int h = 0; h < 8 / kVec; ++h) {
      const GemmK ka = gemm_k(geo, kb + kc * 8 + h * kVec);  // shared by the thread's 4 rows
      if constexpr (kDgrad) a_ch[h] = gemm_a_channel(geo, g, ka);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t off = gemm_a_offset(d, geo, g, arow[j], ka);
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
        const int64_t off =
            v < kBVec ? gemm_b_offset(d, geo, g, n0 + slot.row, gemm_k(geo, kb + slot.col + h * kVec)) : -1;
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
    mma_k_tile<BN>(As, Bs, acc, warp, lane, static_cast<int>(Kg - kb < kBK ? Kg - kb : kBK), geo.M - m0);
    __syncthreads();
  }

  // Epilogue: bias, ReLU, store. Training also writes the block's per-channel (mean, M2) of the fp32 values
  // (conv_bn_stats.h): the mean from a double sum, then the squared deviations from it, each reduced in a
  // fixed order (xor butterfly over the 8 row lanes, then the 4 warps in order, then the pixel-pair
  // columns dq = 0, 1 of the channel), no atomics.
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
        const int64_t col = n0 + rc.col, off = gemm_out_offset(d, geo, g, m0 + rc.row, col);
        if (off >= 0) cv.out[off] = from_float<T>(value(mt, nt, i, g * geo.cout_g + col % geo.cout_g));
      }
  if constexpr (!kDgrad) {
    if (parts == nullptr) return;
    // pixels of the block: kPix per GEMM row (the forward takes pixel pairs only for an even width)
    const double nb = part_rows(mtile, int64_t(kBM) * kPix, d.N * d.Hout * d.Wout);
    // pass 0: column sums -> red -> mean (double, and its float mf); pass 1: sum (v - mf)^2 -> red -> M2.
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int cl = frag_acc(warp, lane, 0, nt, e).col;
          const float mf = pass == 0 ? 0.f : col_mf[cl % kChans];
          double t = 0.0;
          float tf = 0.f;
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const int64_t m = m0 + frag_acc(warp, lane, mt, nt, 2 * half + e).row;
              if (m >= geo.M) continue;
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
      if (tid < kChans) {
        double total = 0.0;
#pragma unroll
        for (int dq = 0; dq < kPix; ++dq) {
          const int c = dq * kChans + tid;
          const double col = ((red[0][c] + red[1][c]) + red[2][c]) + red[3][c];
          total = dq == 0 ? col : total + col;
        }
        if (pass == 0) {
          col_mean[tid] = nb > 0 ? total / nb : 0.0;
          col_mf[tid] = static_cast<float>(col_mean[tid]);
        } else if (n0 + tid < geo.cout_g) {
          const MeanM2 pm = partial_from_sums(nb, col_mean[tid] * nb, total, col_mf[tid]);
          const int64_t oc = g * geo.cout_g + n0 + tid, nparts = (geo.M + kBM - 1) / kBM;
          parts[mtile * d.Cout + oc] = pm.mean;
          parts[(nparts + mtile) * d.Cout + oc] = pm.m2;
        }
      }
      __syncthreads();
    }
  }
}

template <bool kDgrad, typename T>
void launch_gemm(const ConvGemm<T>& cv, const BnReluGrad& bn, const float* bias, bool relu, double* parts,
                 CUstream_st* stream) {
  const GemmDims& d = cv.d;
  const GemmTile tile = gemm_tile(d.Cin / d.groups, d.Cout / d.groups, d.Wout, kDgrad, std::is_same_v<T, float>);
  const GemmGrid grid = gemm_grid(d, tile, kDgrad);
  if (grid.x > 0x7fffffff)
    throw std::invalid_argument("wslfast conv_bn_relu: the tensor-core conv's grid is too large for one launch");
  tile_switch<std::is_same_v<T, float> ? kMaxBnF32 : 64>(tile, [&](auto cols, auto vec, auto pix) {
    constexpr int BN = decltype(cols)::value, kVec = decltype(vec)::value, kPix = decltype(pix)::value;
    conv_gemm_kernel<T, BN, kDgrad, kVec, kPix>
        <<<static_cast<unsigned>(grid.x), kThreads, 0, stream>>>(cv, bn, bias, relu, parts);
  });
  check_launch(kDgrad ? "tensor-core conv dgrad" : "tensor-core conv forward");
}

}  // namespace

bool conv_fwd_fast_supported(DType dtype, const ConvShape& s) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16 || dtype == DType::kFloat32) &&
         (s.C / s.groups) % 4 == 0 && (s.K / s.groups) % 4 == 0 && s.groups <= 65535;
}

StatLayout conv_fwd_fast_stat_layout(const ConvShape& s) {
  // one part per m-tile of the forward GEMM: kBM rows of pix output pixels each (conv_bn_mma_plan.h)
  const GemmDims d{s.N, s.H, s.W, s.C, s.P, s.Q, s.K, s.R, s.S, s.stride, s.pad, s.groups};
  const GemmTile tile = gemm_tile(s.C / s.groups, s.K / s.groups, s.Q, false, false);
  return {gemm_grid(d, tile, false).mtiles, kBM * tile.pix, s.N * s.P * s.Q};
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
