// The CUDA language as the project's kernels use it, for host builds of csrc/**/*.cu (force-included by
// the emulator's build: g++ -include emu.h). Keywords, vector and 16-bit float types, intrinsics, the
// built-in index variables, barriers, warp collectives and kernel launches; the scheduler behind them is
// emu_runtime.cpp (one cooperative fiber per CUDA thread, blocks one after another), the PTX instructions
// that inline asm names are emu_ptx.h. transform.py rewrites the three constructs a compiler cannot take
// as they are (launches, __shared__ declarations, asm statements) into calls declared here.
#pragma once
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- keywords ----
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- built-in vector types ----
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

// ---- runtime API (errors, synchronisation) ----
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
};

// ---- 16-bit floats: round to nearest even, as __float2*_rn ----
struct __nv_bfloat16 {
  uint16_t x;
};
struct __half {
  uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{uint16_t(u >> 16)};
}
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.x, 2);
  return static_cast<float>(v);
}
inline __half __float2half_rn(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  std::memcpy(&h.x, &v, 2);
  return h;
}

// ---- intrinsics (the _rn forms are never contracted: builds use -ffp-contract=off) ----
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __expf(float x) { return std::exp(x); }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
namespace emu {
// 16-byte __ldg loads so far (the soft-CE kernels' vector path), for the drivers to count; atomic, so that
// under TSan the fibers' increments are not themselves a race.
inline std::atomic<long> g_vector_loads{0};
}  // namespace emu
template <typename T>
inline T __ldg(const T* p) {
  if constexpr (sizeof(T) == 16) ::emu::g_vector_loads.fetch_add(1, std::memory_order_relaxed);
  return *p;
}

namespace emu {

// ---- the scheduler's state the inline accessors read (emu_runtime.cpp) ----
struct ThreadPos {
  uint3 tid;
  int lin;  // linear thread index in the block
};
extern ThreadPos* g_pos;  // the running CUDA thread
extern uint3 g_bid, g_bdim, g_gdim;

[[noreturn]] void trap(const char* file, int line);
void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
int error_count();

// Barriers and warp collectives; file/line name the call site in reports.
int block_barrier(int op, int pred, const char* file, int line);  // op: 0 plain, 1 and, 2 or, 3 count
void syncwarp(unsigned mask, const char* file, int line);
enum ShflKind { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3, kBallot = 4, kAny = 5, kAll = 6 };
void warp_exchange(int kind, unsigned mask, const void* in, void* out, size_t bytes, int arg, int width,
                   const char* file, int line);
// One warp-wide mma.sync: this lane's a, b, c fragments in, its d fragment out (emu_ptx.h).
enum MmaShape { kM16N8K16Bf16 = 0, kM16N8K16F16 = 1, kM16N8K8Tf32 = 2 };
void mma(int shape, const uint32_t* a, const uint32_t* b, const float* c, float* d, const char* file, int line);

// __shared__ storage of the running block: fresh per block, filled with 0xFF bytes (unwritten floats read
// as NaN), freed when the block ends.
void* shared_storage(const void* key, size_t bytes, size_t align, const char* name);
void* dynamic_shared_storage();
void launch_bounds(long max_threads, const char* file, int line);

// A kernel launch: checks the configuration as the driver would (an invalid one sets the sticky error and
// runs nothing), then runs every block, thread by thread, each on its own fiber.
void launch_erased(const char* name, dim3 grid, dim3 block, size_t dyn_smem, void (*body)(void*), void* ctx,
                   const char* file, int line);
template <typename F>
void launch(const char* name, dim3 grid, dim3 block, size_t dyn_smem, cudaStream_t, const char* file, int line,
            F&& body) {
  using B = std::remove_reference_t<F>;
  launch_erased(name, grid, block, dyn_smem, [](void* p) { (*static_cast<B*>(p))(); }, &body, file, line);
}
cudaError_t take_last_error(bool clear);

template <typename A>
A& shared(const void* key, size_t align, const char* name) {
  return *static_cast<A*>(shared_storage(key, sizeof(A), align < alignof(A) ? alignof(A) : align, name));
}
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_storage());
}

template <typename T>
T shfl(int kind, unsigned mask, T v, int arg, const char* file, int line, int width = 32) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "shuffled values are at most 16 bytes");
  T out;
  warp_exchange(kind, mask, &v, &out, sizeof(T), arg, width, file, line);
  return out;
}
inline unsigned vote(int kind, unsigned mask, int pred, const char* file, int line) {
  const int p = pred != 0;
  unsigned out;
  warp_exchange(kind, mask, &p, &out, sizeof(int), 0, 32, file, line);
  return out;
}

}  // namespace emu

#define threadIdx (::emu::g_pos->tid)
#define blockIdx (::emu::g_bid)
#define blockDim (::emu::g_bdim)
#define gridDim (::emu::g_gdim)
constexpr int warpSize = 32;

#define __trap() ::emu::trap(__FILE__, __LINE__)
#define __syncthreads() ((void)::emu::block_barrier(0, 1, __FILE__, __LINE__))
#define __syncthreads_and(p) ::emu::block_barrier(1, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::emu::block_barrier(2, (p), __FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::block_barrier(3, (p), __FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(::emu::syncwarp_mask(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_sync(m, v, l, ...) ::emu::shfl(::emu::kShflIdx, (m), (v), (l), __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(m, v, d, ...) ::emu::shfl(::emu::kShflUp, (m), (v), (d), __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(m, v, d, ...) \
  ::emu::shfl(::emu::kShflDown, (m), (v), (d), __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(m, v, o, ...) ::emu::shfl(::emu::kShflXor, (m), (v), (o), __FILE__, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(m, p) ::emu::vote(::emu::kBallot, (m), (p), __FILE__, __LINE__)
#define __any_sync(m, p) static_cast<int>(::emu::vote(::emu::kAny, (m), (p), __FILE__, __LINE__))
#define __all_sync(m, p) static_cast<int>(::emu::vote(::emu::kAll, (m), (p), __FILE__, __LINE__))

namespace emu {
inline unsigned syncwarp_mask() { return 0xffffffffu; }
inline unsigned syncwarp_mask(unsigned m) { return m; }
}  // namespace emu

inline cudaError_t cudaGetLastError() { return ::emu::take_last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return ::emu::take_last_error(false); }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
  }
  return "unknown error";
}

#include "emu_ptx.h"
