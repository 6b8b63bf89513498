// The scheduler behind emu.h: every CUDA thread of a block is a cooperative fiber (emu_fibers.cpp); the
// block's fibers run until each has finished, a barrier or warp collective (emu_collectives.cpp) switching
// to the next ready one; blocks run one after another. Compiled without sanitizer instrumentation (its
// bookkeeping is shared by all fibers): the kernels' own code is what ASan/UBSan/TSan see. What it checks, as the hardware or the CUDA runtime would
// refuse or leave undefined:
//   launches  grid (x <= 2^31-1, y, z <= 65535, none 0), block (<= 1024 threads, z <= 64),
//             __launch_bounds__, 48 KiB of static __shared__ memory a block: an invalid configuration sets
//             the sticky error cudaGetLastError returns and runs nothing;
//   barriers  every live thread of the block at the same __syncthreads (file:line), else a report;
//             threads that exited count as arrived (sm_70+);
//   warps     the lanes a shuffle / vote / mma names all take part, at the same call, with one mask;
//             mma.sync needs all 32 lanes;
//   deadlock  no thread can run and the block has not finished: the waiting threads' sites, exit 3;
//   time      a launch running past EMU_LAUNCH_TIMEOUT seconds (default 300): exit 4.
// Under ThreadSanitizer (-DEMU_TSAN) every CUDA thread is a TSan fiber that synchronises only through
// barriers (a release/acquire pair per barrier phase) and __syncwarp, so an access pair no barrier orders
// (a missing __syncthreads, two blocks writing one element) is reported; shuffles and mma order nothing.
// The schedule changes from block to block and launch to launch, so that a value a missing barrier leaves
// stale (or overwrites too early) shows in the value checks too: threads in order 0..n-1, each running
// until it waits (lockstep); in order n-1..0; or depth first (the thread woken last runs first, so one warp
// runs ahead of the others through everything no barrier stops).
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "emu_state.h"

namespace emu {
namespace rt {
ThreadPos host_pos{{0, 0, 0}, 0};
Fiber* cur = nullptr;
Block blk;
std::vector<Fiber> fibers(kPool);
unsigned long pool_base = 0;
std::vector<Fiber*> ready;
size_t ready_head = 0;
bool depth_first = false;
unsigned long nthreads = 0;
const char* k_name = "";
const char* k_file = "";
int k_line = 0;
long n_launches = 0, n_blocks = 0;
bool bounds_reported = false;
char launch_token;
cudaError_t last_error = cudaSuccess;
int n_errors = 0;
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;
}  // namespace rt

ThreadPos* g_pos = &rt::host_pos;
uint3 g_bid{0, 0, 0}, g_bdim{1, 1, 1}, g_gdim{1, 1, 1};

namespace {
using namespace rt;

// ---- deadlock and time limit ----
[[noreturn]] void deadlock() {
  std::fprintf(stderr, "EMU: DEADLOCK in %s (launched at %s:%d) block (%u,%u,%u): no thread can run\n", k_name, k_file,
               k_line, g_bid.x, g_bid.y, g_bid.z);
  std::map<std::string, int> sites;
  for (unsigned long t = 0; t < nthreads; ++t) {
    const Fiber& f = fiber_of(t);
    if (f.done) continue;
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s at %s:%d", f.wait_what ? f.wait_what : "?", f.wait_file ? f.wait_file : "?",
                  f.wait_line);
    sites[buf]++;
  }
  for (const auto& kv : sites) std::fprintf(stderr, "EMU:   %d thread(s) wait in %s\n", kv.second, kv.first.c_str());
  std::fflush(stderr);
  std::_Exit(3);
}

void on_alarm(int) {
  char msg[512];
  const int n = std::snprintf(msg, sizeof msg,
                              "EMU: TIMEOUT: %s (launched at %s:%d) block (%u,%u,%u) ran past EMU_LAUNCH_TIMEOUT\n",
                              k_name, k_file, k_line, g_bid.x, g_bid.y, g_bid.z);
  if (n > 0) (void)!write(2, msg, static_cast<size_t>(n));
  std::_Exit(4);
}

void set_alarm(bool on) {
  static double seconds = [] {
    const char* e = std::getenv("EMU_LAUNCH_TIMEOUT");
    return e ? std::atof(e) : 300.0;
  }();
  static bool installed = false;
  if (!installed) {
    signal(SIGALRM, on_alarm);
    installed = true;
  }
  itimerval t{};
  if (on) t.it_value.tv_sec = static_cast<long>(seconds), t.it_value.tv_usec = 1000;
  setitimer(ITIMER_REAL, &t, nullptr);
}

void run_block(unsigned long block_linear) {
  const unsigned long n = nthreads;
  blk.expected = static_cast<int>(n);
  blk.arrived = 0;
  blk.phase = 0;
  blk.divergent_phase = -1;
  blk.waiters.clear();
  blk.shared.clear();
  blk.shared_bytes = 0;
  blk.dyn = nullptr;
  const int nwarps = static_cast<int>((n + 31) / 32);
  blk.warps.resize(static_cast<size_t>(nwarps));
  for (int w = 0; w < nwarps; ++w) {
    Warp& W = blk.warps[static_cast<size_t>(w)];
    const unsigned lanes = static_cast<unsigned>(n - 32ul * w < 32 ? n - 32ul * w : 32);
    W.exist = W.live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    W.present = 0;
    W.kind = -1;
    W.phase = 0;
    W.waiters.clear();
  }
  if (blk.dyn_bytes > 0) {
    blk.dyn = alloc_shared(blk.dyn_bytes, 16);
    std::memset(blk.dyn, 0xff, blk.dyn_bytes);
  }
  ready.clear();
  ready_head = 0;
  const unsigned long policy = (block_linear + static_cast<unsigned long>(n_launches)) % 3;
  const bool reverse = policy == 1;
  depth_first = policy == 2;
  for (unsigned long i = 0; i < n; ++i) {
    const unsigned long t = reverse ? n - 1 - i : i;
    Fiber& f = fiber_of(t);
    f.pos.lin = static_cast<int>(t);
    f.pos.tid = {static_cast<unsigned>(t % g_bdim.x), static_cast<unsigned>((t / g_bdim.x) % g_bdim.y),
                 static_cast<unsigned>(t / (static_cast<unsigned long>(g_bdim.x) * g_bdim.y))};
    start_fiber(f);
    ready.push_back(&f);
  }
  unsigned long finished = 0;
  while (finished < n) {
    if (ready_head >= ready.size()) deadlock();
    Fiber* f;
    if (depth_first) {
      f = ready.back();
      ready.pop_back();
    } else {
      f = ready[ready_head++];
    }
    if (ready_head > 4096 && 2 * ready_head > ready.size()) {
      ready.erase(ready.begin(), ready.begin() + static_cast<long>(ready_head));
      ready_head = 0;
    }
    run_fiber(*f);
    if (f->done) ++finished;
  }
#if defined(EMU_TSAN)
  pool_base = (pool_base + n) % kPool;
#endif
  for (auto& s : blk.shared) free_shared(s.ptr, s.bytes);
  blk.shared.clear();
  if (blk.dyn != nullptr) free_shared(blk.dyn, blk.dyn_bytes);
  blk.dyn = nullptr;
}

}  // namespace

using namespace rt;

// ---- API (emu.h) ----

void report(const char* fmt, ...) {
  Quiet quiet;
  if (++n_errors > 30) return;
  if (n_errors == 30) {
    std::fprintf(stderr, "EMU ERROR: ... (further reports suppressed)\n");
    return;
  }
  if (cur != nullptr)
    std::fprintf(stderr, "EMU ERROR [%s block (%u,%u,%u) thread (%u,%u,%u)]: ", k_name, g_bid.x, g_bid.y, g_bid.z,
                 cur->pos.tid.x, cur->pos.tid.y, cur->pos.tid.z);
  else
    std::fprintf(stderr, "EMU ERROR [%s]: ", k_name);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

int error_count() { return n_errors; }

void trap(const char* file, int line) {
  report("__trap() at %s:%d", file, line);
  std::fflush(stderr);
  std::abort();
}

void* shared_storage(const void* key, size_t bytes, size_t align, const char* name) {
  Quiet quiet;
  for (const auto& s : blk.shared)
    if (s.key == key) return s.ptr;
  void* p = alloc_shared(bytes, align);
  std::memset(p, 0xff, bytes);
  blk.shared.push_back({key, p, bytes, name});
  blk.shared_bytes += bytes;
  if (blk.shared_bytes > 48 * 1024)
    report("static __shared__ memory of %s exceeds 48 KiB: %zu bytes with %s", k_name, blk.shared_bytes, name);
  return p;
}

void* dynamic_shared_storage() {
  if (blk.dyn == nullptr) report("extern __shared__ memory used but the launch gave 0 bytes");
  return blk.dyn;
}

void launch_bounds(long max_threads, const char* file, int line) {
  if (static_cast<long>(nthreads) > max_threads && !bounds_reported) {
    bounds_reported = true;
    report("launched with %lu threads a block, above its __launch_bounds__(%ld) (%s:%d)", nthreads, max_threads, file,
           line);
  }
}

cudaError_t take_last_error(bool clear) {
  const cudaError_t e = last_error;
  if (clear) last_error = cudaSuccess;
  return e;
}

void launch_erased(const char* name, dim3 grid, dim3 block, size_t dyn_smem, void (*body)(void*), void* ctx,
                   const char* file, int line) {
  Quiet quiet;
  if (cur != nullptr) {
    report("kernel %s launched from inside a kernel (%s:%d)", name, file, line);
    return;
  }
  ++n_launches;
  const unsigned long nt = static_cast<unsigned long>(block.x) * block.y * block.z;
  if (nt == 0 || nt > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || dyn_smem > 48 * 1024) {
    std::fprintf(stderr, "EMU: invalid launch of %s at %s:%d: grid (%u,%u,%u) block (%u,%u,%u) dynamic smem %zu\n",
                 name, file, line, grid.x, grid.y, grid.z, block.x, block.y, block.z, dyn_smem);
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  k_name = name;
  k_file = file;
  k_line = line;
  bounds_reported = false;
  nthreads = nt;
  g_gdim = {grid.x, grid.y, grid.z};
  g_bdim = {block.x, block.y, block.z};
  g_body = body;
  g_ctx = ctx;
  blk.dyn_bytes = dyn_smem;
  set_alarm(true);
  unsigned long linear = 0;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx, ++linear) {
        g_bid = {bx, by, bz};
        ++n_blocks;
        run_block(linear);
      }
  set_alarm(false);
  sync_acquire(&launch_token);
  g_bid = {0, 0, 0};
}

}  // namespace emu

// Statistics for the drivers' summary lines.
extern "C" long emu_launch_count() { return emu::rt::n_launches; }
extern "C" long emu_block_count() { return emu::rt::n_blocks; }
