// Runs one self-test kernel a family (selftest/emu_selftest.cu); tests/ops/test_kernels_emulated.py knows
// which report each must give.
#include "selftest/emu_selftest.h"
#include "harness.h"

using namespace harness;

namespace {

// out[i] must be i ^ 1 (the neighbour's index): right after a barrier, wrong when a read comes first.
void check_swap(const char* what, const Dev<float>& out) {
  std::vector<double> want(out.n);
  for (size_t i = 0; i < out.n; ++i) want[i] = static_cast<double>(i ^ 1);
  compare_exact(what, as_double(out.get()), want);
}

HARNESS_FAMILY(clean, "clean", "synced_kernel (no fault; a refused launch)")
void clean() {
  Dev<float> out(64);
  emu_selftest::synced(out.p);
  check_swap("synced swap", out);
  expect(emu_selftest::too_many_threads(), "a 2048-thread block was not refused");
}

HARNESS_FAMILY(race, "race", "race_kernel (a missing __syncthreads)")
void race() {
  Dev<float> out(64);
  emu_selftest::race(out.p);
  check_swap("unsynced swap", out);
}

HARNESS_FAMILY(overrun, "overrun", "overrun_kernel (a read one past the end)")
void overrun() {
  Dev<float> in(32), out(32);
  in.fill(1.f);
  emu_selftest::overrun(in.p, out.p, 32);
}

HARNESS_FAMILY(divergent_barrier, "divergent_barrier", "divergent_barrier_kernel")
void divergent_barrier() {
  Dev<float> out(64);
  emu_selftest::divergent_barrier(out.p);
}

HARNESS_FAMILY(deadlock, "deadlock", "deadlock_kernel")
void deadlock() {
  Dev<float> out(32);
  emu_selftest::deadlock(out.p);
}

HARNESS_FAMILY(exited_lane_shuffle, "exited_lane_shuffle", "exited_lane_kernel")
void exited_lane_shuffle() {
  Dev<float> out(32);
  emu_selftest::exited_lane_shuffle(out.p);
}

HARNESS_FAMILY(launch_bounds, "launch_bounds", "bounded_kernel")
void launch_bounds() {
  Dev<float> out(128);
  emu_selftest::above_launch_bounds(out.p);
}

HARNESS_FAMILY(shared_limit, "shared_limit", "big_shared_kernel")
void shared_limit() {
  Dev<float> out(32);
  emu_selftest::shared_limit(out.p);
}

}  // namespace
