// Launchers of the emulator's self-test kernels (emu_selftest.cu): one known fault each, and one without.
#pragma once

namespace emu_selftest {

void synced(float* out);                          // 64 threads swap through shared memory after a barrier
void race(float* out);                            // the same without the barrier
void overrun(const float* in, float* out, int n);  // reads in[n], one past the end
void divergent_barrier(float* out);               // two halves of the block at two different __syncthreads
void deadlock(float* out);                        // lane 0 at __syncthreads, lanes 1-31 at a shuffle
void exited_lane_shuffle(float* out);             // lanes 16-31 exit, 0-15 shuffle with them
bool too_many_threads();                          // a 2048-thread block: false unless the launch was refused
void above_launch_bounds(float* out);             // __launch_bounds__(64) launched with 128 threads
void shared_limit(float* out);                    // 52 KB of static __shared__ memory

}  // namespace emu_selftest
