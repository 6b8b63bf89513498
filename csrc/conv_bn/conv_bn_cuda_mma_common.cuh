// Shared pieces of the tensor-core implicit-GEMM kernels (conv_bn_cuda_mma.cu: forward and data
// gradient; conv_bn_cuda_mma_wgrad.cu: weight gradient): tile constants, the mma.sync wrappers and k-tile
// loops (m16n8k16 for bf16/fp16; m16n8k8 TF32 for float32, as cuDNN runs float32 convs by default), the
// vector loads, the fused BN+ReLU backward of a loaded chunk, the launch switches.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "conv_bn_cuda_common.cuh"
#include "conv_bn_mma_index.h"
#include "conv_bn_mma_plan.h"

namespace wslfast::conv_bn::mma {

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

// float32 storage: TF32 operands (10-bit mantissa, rounded to nearest), float32 accumulation.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
#else
  r = __float_as_uint(x);
#endif
  return r;
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// One k-tile of the block GEMM: As [kBM][kLds] (rows x k), Bs [BN][kLds] (columns x k), both k-contiguous.
// Which elements each lane's registers hold: frag_a_* / frag_b_* (conv_bn_mma_index.h, the PTX ISA layouts,
// checked on the CPU). bf16/fp16: mma.m16n8k16, a uint32 read at (row, col) holds (row, col) and (row, col + 1);
// float32: TF32 mma.m16n8k8, one element a register. Work on padding is skipped: k steps at or past
// `kvalid` (the tile's k extent) and 16-row mma tiles at or past `rows` (the tile's valid rows) are never
// issued; both conditions are the same for the whole warp. (One template for all three types: a second,
// float-only overload was ambiguous to g++, which cannot deduce BN from float (&)[2][BN / 8][4].)
template <int BN, typename T>
__device__ __forceinline__ void mma_k_tile(const T (*As)[kLds], const T (*Bs)[kLds], float (&acc)[2][BN / 8][4],
                                           int warp, int lane, int kvalid, int64_t rows) {
  constexpr bool kTf32 = std::is_same_v<T, float>;
  constexpr int kStep = kTf32 ? 8 : 16;
  bool mt_on[2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) mt_on[mt] = warp * 32 + mt * 16 < rows;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += kStep) {
    if (kk >= kvalid) break;
    uint32_t a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (kTf32) {
          const RowCol rc = frag_a_tf32(warp, lane, mt, kk, i);
          a[mt][i] = to_tf32(As[rc.row][rc.col]);
        } else {
          const RowCol rc = frag_a_f16(warp, lane, mt, kk, i);
          a[mt][i] = *reinterpret_cast<const uint32_t*>(&As[rc.row][rc.col]);
        }
      }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      uint32_t b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if constexpr (kTf32) {
          const RowCol rc = frag_b_tf32(lane, nt, kk, i);
          b[i] = to_tf32(Bs[rc.row][rc.col]);
        } else {
          const RowCol rc = frag_b_f16(lane, nt, kk, i);
          b[i] = *reinterpret_cast<const uint32_t*>(&Bs[rc.row][rc.col]);
        }
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (!mt_on[mt]) continue;
        if constexpr (kTf32) mma_tf32(acc[mt][nt], a[mt], b);
        else Mma<T>::run(acc[mt][nt], a[mt], b);
      }
    }
  }
}

// 8 consecutive k elements of one row: the unit every loader moves through registers (16 bytes of
// bf16/fp16, 32 of float32).
template <typename T>
struct Chunk {
  static constexpr int kWords = 8 * sizeof(T) / 16;
  uint4 u[kWords];
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int i = 0; i < kWords; ++i) u[i] = make_uint4(0, 0, 0, 0);
  }
  // Writes the chunk to 16-byte aligned memory (a shared tile row).
  __device__ __forceinline__ void store(T* dst) const {
#pragma unroll
    for (int i = 0; i < kWords; ++i) reinterpret_cast<uint4*>(dst)[i] = u[i];
  }
  __device__ __forceinline__ T* elems() { return reinterpret_cast<T*>(u); }
  __device__ __forceinline__ const T* elems() const { return reinterpret_cast<const T*>(u); }
};

// Loads kVec storage elements into piece h (elements h * kVec ..) of an 8-element chunk, in 16-byte
// loads (8-byte for 4 bf16/fp16). 4-wide pieces serve groups of 4 channels (ResNeXt 32x4d's first
// stage), where 8 consecutive k indices span two filter taps and rows are only 8- or 16-byte aligned.
template <int kVec, typename T>
__device__ __forceinline__ void load_piece(Chunk<T>& dst, int h, const T* src) {
  constexpr int kBytes = kVec * static_cast<int>(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) dst.u[h * (kBytes / 16) + i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    static_assert(kBytes == 8, "pieces are 8 bytes or whole 16-byte words");
    const uint2 v = *reinterpret_cast<const uint2*>(src);
    if (h == 0) dst.u[0].x = v.x, dst.u[0].y = v.y;
    else dst.u[0].z = v.x, dst.u[0].w = v.y;
  }
}

// g for one 8-element chunk loaded as pieces of kVec: d holds dy, s the same elements of src; piece h
// holds channels ch[h] .. ch[h] + kVec - 1 and is transformed only where its bit in `valid` is set
// (elements that are padding or out of range stay 0).
template <typename T, int kVec>
__device__ __forceinline__ void bn_grad_chunk(Chunk<T>& d, const Chunk<T>& s, unsigned valid,
                                              const int64_t (&ch)[8 / kVec], const BnReluGrad& bn) {
  T* dv = d.elems();
  const T* sv = s.elems();
#pragma unroll
  for (int h = 0; h < 8 / kVec; ++h) {
    if (!((valid >> h) & 1u)) continue;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int e = h * kVec + i;
      dv[e] = from_float<T>(bn_relu_grad(to_float(dv[e]), to_float(sv[e]), ch[h] + i, bn.ms, bn.mt, bn.k, bn.p, bn.q,
                                         bn.relu, bn.use_pq));
    }
  }
}

// A GemmTile (conv_bn_mma_plan.h) as compile-time constants: fn(BN, kVec, kPix) for the instances the plans
// choose (pixel pairs only at 8 columns and 4-channel loads; no 64-column float32 forward / data gradient).
template <int kMaxBn, typename Fn>
void tile_switch(const GemmTile& t, Fn&& fn) {
  using std::integral_constant;
  if (t.pix == 2) {
    if (t.bn != 8 || t.vec != 4) throw std::invalid_argument("wslfast conv_bn_relu: bad pixel-pair tile");
    return fn(integral_constant<int, 8>{}, integral_constant<int, 4>{}, integral_constant<int, 2>{});
  }
  auto with_vec = [&](auto bn) {
    if (t.vec == 8) fn(bn, integral_constant<int, 8>{}, integral_constant<int, 1>{});
    else fn(bn, integral_constant<int, 4>{}, integral_constant<int, 1>{});
  };
  if (t.bn == 8) with_vec(integral_constant<int, 8>{});
  else if (t.bn == 16) with_vec(integral_constant<int, 16>{});
  else if (t.bn == 32 || kMaxBn == 32) with_vec(integral_constant<int, 32>{});
  else if constexpr (kMaxBn == 64) with_vec(integral_constant<int, 64>{});
}

template <typename Fn>
void mma_switch(DType dtype, Fn&& fn) {
  if (dtype == DType::kBFloat16) fn(__nv_bfloat16{});
  else if (dtype == DType::kFloat16) fn(__half{});
  else if (dtype == DType::kFloat32) fn(float{});
  else throw std::invalid_argument("wslfast conv_bn_relu: the tensor-core kernels take bfloat16, float16 or float32");
}

inline void check_bn_grad(const BnReluGrad& bn) {
  if (bn.src == nullptr || bn.k == nullptr || (bn.relu && (bn.ms == nullptr || bn.mt == nullptr)) ||
      (bn.use_pq && (bn.p == nullptr || bn.q == nullptr)))
    throw std::invalid_argument("wslfast conv_bn_relu: the tensor-core gradient kernels need src and the BN "
                                "backward coefficients");
}

}  // namespace wslfast::conv_bn::mma
