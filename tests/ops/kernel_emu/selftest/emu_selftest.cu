// Kernels with one known fault each (and one without), built through the same transform and shim as
// csrc/: the tests check that the emulator reports every fault, so a check that stopped working shows.
#include <cuda_runtime.h>

#include "emu_selftest.h"

namespace emu_selftest {
namespace {

__global__ void synced_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x ^ 1];
}

__global__ void race_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = s[threadIdx.x ^ 1];  // no barrier between the write and the neighbour's read
}

__global__ void overrun_kernel(const float* in, float* out, int n) {
  const int i = threadIdx.x;
  if (i < n) out[i] = in[i + 1];  // in[n] for the last thread
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void deadlock_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x == 0) __syncthreads();
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 16);
}

__global__ void __launch_bounds__(64) bounded_kernel(float* out) { out[threadIdx.x] = 1.f; }

__global__ void big_shared_kernel(float* out) {
  __shared__ float big[13000];
  big[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = big[threadIdx.x];
}

}  // namespace

void synced(float* out) { synced_kernel<<<1, 64>>>(out); }
void race(float* out) { race_kernel<<<1, 64>>>(out); }
void overrun(const float* in, float* out, int n) { overrun_kernel<<<1, 32>>>(in, out, n); }
void divergent_barrier(float* out) { divergent_barrier_kernel<<<1, 64>>>(out); }
void deadlock(float* out) { deadlock_kernel<<<1, 32>>>(out); }
void exited_lane_shuffle(float* out) { exited_lane_kernel<<<1, 32>>>(out); }
bool too_many_threads() {
  float* none = nullptr;
  synced_kernel<<<1, 2048>>>(none);
  return cudaGetLastError() == cudaErrorInvalidConfiguration;
}
void above_launch_bounds(float* out) { bounded_kernel<<<1, 128>>>(out); }
void shared_limit(float* out) { big_shared_kernel<<<1, 32>>>(out); }

}  // namespace emu_selftest
