// What the kernel drivers share: device buffers, storage types, seeded data, checks against float64
// references, and the case families a driver binary runs (`emu_<op> FAMILY [--quick] [--dump DIR]`).
// The same drivers build two ways: against the emulated kernels (-DWSLFAST_EMU: buffers are exact-size heap
// blocks, so ASan sees any access past them) and with nvcc against the real ones on a GPU (buffers are
// cudaMalloc'd; scripts/gpu_session.sh compares the two runs).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"

namespace harness {

// ---- storage types ----
template <typename T> float to_f(T v);
template <> inline float to_f<float>(float v) { return v; }
template <> inline float to_f<__half>(__half v) { return __half2float(v); }
template <> inline float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> T from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
template <> inline __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> wslfast::DType dtype_of();
template <> inline wslfast::DType dtype_of<float>() { return wslfast::DType::kFloat32; }
template <> inline wslfast::DType dtype_of<__half>() { return wslfast::DType::kFloat16; }
template <> inline wslfast::DType dtype_of<__nv_bfloat16>() { return wslfast::DType::kBFloat16; }
template <typename T> const char* name_of();
template <> inline const char* name_of<float>() { return "f32"; }
template <> inline const char* name_of<__half>() { return "f16"; }
template <> inline const char* name_of<__nv_bfloat16>() { return "bf16"; }
// Unit roundoff of the storage format (half an ulp at 1): the error of one rounding to it.
template <typename T> constexpr double unit_roundoff() {
  return std::is_same_v<T, float> ? 0x1p-24 : (std::is_same_v<T, __half> ? 0x1p-11 : 0x1p-8);
}
constexpr double kU32 = 0x1p-24;  // float32's
// Values this format stores exactly up to |x| < 2^bits of integer part are multiples of 2^-frac_bits.
template <typename T> float round_to(float v) { return to_f<T>(from_f<T>(v)); }
// TF32 as cvt.rna.tf32.f32 rounds (ties away): the tensor-core operand of float32 storage.
float tf32(float x);

// ---- seeded data (splitmix64: the same values on every compiler and library) ----
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * 0x1p-53; }              // [0, 1)
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  int64_t below(int64_t n) { return n > 0 ? static_cast<int64_t>(next() % static_cast<uint64_t>(n)) : 0; }
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

// ---- device buffers ----
void* device_alloc(size_t bytes);
void device_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
// Waits for the kernels and turns an asynchronous CUDA error into an exception (no-op when emulated).
void device_sync(const char* what);

// n elements that start `skew` elements past an aligned address; emulated, the allocation ends right after
// them. Fresh buffers hold NaN (a missing write shows) unless filled.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  void* base = nullptr;
  explicit Dev(size_t n_, size_t skew = 0) : n(n_) {
    base = device_alloc((n + skew) * sizeof(T));
    p = static_cast<T*>(base) + skew;
    fill(from_nan());
  }
  Dev(const std::vector<T>& h, size_t skew = 0) : Dev(h.size(), skew) { upload(h); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { device_free(base); }
  static T from_nan() {
    if constexpr (std::is_floating_point_v<T>)
      return std::numeric_limits<T>::quiet_NaN();
    else if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>)
      return from_f<T>(std::numeric_limits<float>::quiet_NaN());
    else
      return T(-7777777);  // integers: a value no kernel writes
  }
  void upload(const std::vector<T>& h) {
    if (h.size() != n) throw std::logic_error("Dev::upload: size mismatch");
    if (n) copy_to_device(p, h.data(), n * sizeof(T));
  }
  void fill(T v) { upload(std::vector<T>(n, v)); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    if (n) copy_to_host(h.data(), p, n * sizeof(T));
    return h;
  }
};
template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> d(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, double>) d[i] = v[i];
    else d[i] = to_f<T>(v[i]);
  }
  return d;
}

// ---- checks ----
struct Options {
  bool quick = false;       // the TSan subset: the first case of each kernel
  std::string dump;         // folder for every compared output (the GPU-vs-emulator comparison)
  std::string family;
};
const Options& options();

// A failed expectation: counted, the first ones printed with their context.
void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void expect(bool ok, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int failures();
// Runs fn, which must throw std::invalid_argument or std::runtime_error (a launcher refusing bad input).
template <typename F>
void expect_throws(const char* what, F&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return;
  } catch (const std::runtime_error&) {
    return;
  }
  fail("%s: no exception for bad input", what);
}

// Compares got[i] with want[i] within tol[i]; NaN wants NaN, +-inf the same inf. Prints the first three
// misses and the count; writes `got` to the dump folder when asked. Returns the number of misses.
int compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
            const std::vector<double>& tol);
// The same, for elements that must be bit for bit equal (stored as doubles: equal values, or both NaN).
int compare_exact(const std::string& what, const std::vector<double>& got, const std::vector<double>& want);
void dump(const std::string& what, const std::vector<double>& values);
double worst_ratio();  // the largest |got - want| / tol over every compare

// ---- families ----
using FamilyFn = void (*)();
struct FamilyReg {
  FamilyReg(const char* name, const char* kernels, FamilyFn fn);
};
#define HARNESS_FAMILY(ident, name, kernels) \
  static void ident();                       \
  static ::harness::FamilyReg ident##_reg(name, kernels, ident);
// Emulator statistics (zeros on a GPU): launches, blocks, emulator-detected errors, 16-byte __ldg loads.
// Checks of counts (launches a call makes, loads that take the vector path) and of bits that only the
// emulator's host arithmetic shares with a host reference (no FMA contraction) run where emulated() is true.
bool emulated();
long launches();
long blocks();
int emulator_errors();
long vector_loads();

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));

}  // namespace harness
