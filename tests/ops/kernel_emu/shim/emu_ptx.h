// The PTX instructions the project's inline asm uses, one function each, named after the instruction with
// '.' -> '_'. transform.py turns `asm("mma.sync.aligned.m16n8k16... {%0,..}, ..." : "+f"(d[0]) .. : "r"(a[0])
// ..)` into `::emu::ptx::mma_sync_aligned_m16n8k16_...(__FILE__, __LINE__, {&d[0], ..}, {a[0], ..}, ..)`:
// the PTX operands in their order, a braced group as a std::array, outputs as pointers, inputs as values.
// An instruction missing here stops transform.py with its name; add it here (and to the tests).
#pragma once

namespace emu::ptx {

template <typename T, size_t N>
using Out = std::array<T*, N>;
template <typename T, size_t N>
using In = std::array<T, N>;

inline void store4(const Out<float, 4>& d, const float (&r)[4]) {
  for (int i = 0; i < 4; ++i) *d[i] = r[i];
}

// mma.sync m16n8k16, bf16 / f16 operands, f32 accumulators (row-major A, column-major B).
inline void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(const char* file, int line, Out<float, 4> d,
                                                                 In<uint32_t, 4> a, In<uint32_t, 2> b,
                                                                 In<float, 4> c) {
  float r[4];
  ::emu::mma(::emu::kM16N8K16Bf16, a.data(), b.data(), c.data(), r, file, line);
  store4(d, r);
}
inline void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(const char* file, int line, Out<float, 4> d,
                                                               In<uint32_t, 4> a, In<uint32_t, 2> b,
                                                               In<float, 4> c) {
  float r[4];
  ::emu::mma(::emu::kM16N8K16F16, a.data(), b.data(), c.data(), r, file, line);
  store4(d, r);
}
// mma.sync m16n8k8, tf32 operands (the tensor core reads the 19 high bits), f32 accumulators.
inline void mma_sync_aligned_m16n8k8_row_col_f32_tf32_tf32_f32(const char* file, int line, Out<float, 4> d,
                                                               In<uint32_t, 4> a, In<uint32_t, 2> b,
                                                               In<float, 4> c) {
  float r[4];
  ::emu::mma(::emu::kM16N8K8Tf32, a.data(), b.data(), c.data(), r, file, line);
  store4(d, r);
}

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest, ties away from zero; NaN and inf pass.
inline uint32_t tf32_rna_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;
  return (u + 0x1000u) & 0xffffe000u;
}
inline void cvt_rna_tf32_f32(const char*, int, uint32_t* d, float a) { *d = tf32_rna_bits(a); }

}  // namespace emu::ptx
