// The scheduler behind emu.h: every CUDA thread of a block is a cooperative fiber; the block's fibers run
// until each has finished, a barrier or warp collective switching to the next ready one; blocks run one
// after another. Compiled without sanitizer instrumentation (its bookkeeping is shared by all fibers): the
// kernels' own code is what ASan/UBSan/TSan see. What it checks, as the hardware or the CUDA runtime would
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
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "emu.h"

#if defined(EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

namespace {
ThreadPos host_pos{{0, 0, 0}, 0};
}
ThreadPos* g_pos = &host_pos;
uint3 g_bid{0, 0, 0}, g_bdim{1, 1, 1}, g_gdim{1, 1, 1};

namespace {

// ---- context switch: 6 callee-saved registers and the stack pointer (x86-64 SysV), else ucontext ----
#if defined(__x86_64__)
extern "C" void emu_ctx_switch(void** save_sp, void* new_sp);
extern "C" void emu_ctx_start();
asm(R"(
  .text
  .globl emu_ctx_switch
  .type emu_ctx_switch, @function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch, .-emu_ctx_switch
  .globl emu_ctx_start
  .type emu_ctx_start, @function
emu_ctx_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size emu_ctx_start, .-emu_ctx_start
)");
#endif

struct Fiber {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  char* stack = nullptr;
  size_t stack_size = 0;
  ThreadPos pos{};
  bool done = false;
  const char* wait_what = nullptr;
  const char* wait_file = nullptr;
  int wait_line = 0;
  void* asan_fake = nullptr;
  void* tsan = nullptr;
  bool started = false;
};

struct Warp {
  unsigned exist = 0, live = 0, present = 0, mask = 0;
  int kind = -1, width = 32, shape = 0;
  size_t bytes = 0;
  const char* file = nullptr;
  int line = 0;
  int phase = 0;
  char tsan_token[2];
  std::vector<Fiber*> waiters;
  int arg[32];
  alignas(16) unsigned char in[32][16], out[32][16];
  uint32_t a[32][4], b[32][2];
  float c[32][4], d[32][4];
};

struct SharedAlloc {
  const void* key;
  void* ptr;
  size_t bytes;
  const char* name;
};

struct Block {
  int expected = 0, arrived = 0, op = 0, acc = 0, result = 0, phase = 0, divergent_phase = -1;
  const char* file = nullptr;
  int line = 0;
  char tsan_token[2];
  std::vector<Fiber*> waiters;
  std::vector<Warp> warps;
  std::vector<SharedAlloc> shared;
  size_t shared_bytes = 0;
  void* dyn = nullptr;
  size_t dyn_bytes = 0;
};

// ---- the state of the launch in flight ----
Fiber* cur = nullptr;  // null: the scheduler (host) runs
Block blk;
#if defined(EMU_TSAN)
constexpr unsigned long kPool = 2048;
#else
constexpr unsigned long kPool = 1024;
#endif
std::vector<Fiber> fibers(kPool);
unsigned long pool_base = 0;  // the pool slot of thread 0 of the running block
Fiber& fiber_of(unsigned long t) { return fibers[(pool_base + t) % kPool]; }
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

#if defined(__x86_64__)
void* sched_sp = nullptr;
#else
ucontext_t sched_uc;
#endif
#if defined(EMU_ASAN)
void* sched_fake = nullptr;
const void* sched_stack_bottom = nullptr;
size_t sched_stack_size = 0;
#endif
#if defined(EMU_TSAN)
void* sched_tsan = nullptr;
#endif

// The runtime's own bookkeeping is shared by every fiber without synchronisation: TSan must not see it.
// Only intercepted calls need hiding (this file is not instrumented): operator new, memcpy, memset.
#if defined(EMU_TSAN)
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
struct Quiet {
  Quiet() { __tsan_ignore_thread_begin(); }
  ~Quiet() { __tsan_ignore_thread_end(); }
};
#else
struct Quiet {};
#endif

void sync_release(void* addr) {
#if defined(EMU_TSAN)
  __tsan_release(addr);
#else
  (void)addr;
#endif
}
void sync_acquire(void* addr) {
#if defined(EMU_TSAN)
  __tsan_acquire(addr);
#else
  (void)addr;
#endif
}

size_t stack_bytes() {
#if defined(EMU_ASAN)
  return 256 * 1024;
#else
  return 128 * 1024;
#endif
}

// Stacks are mmap'd once with a guard page below them (an overflow faults instead of corrupting) and kept.
// Under TSan each pool slot is also one TSan fiber for good; blocks take their threads' slots in turn from
// a pool twice the largest block (kPool), so the threads of two consecutive blocks are always different
// TSan threads (a race between them is seen), and a slot's stack only ever belongs to its own fiber.
void map_region(size_t bytes, char*& base, char*& usable) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("emu: mmap");
    std::_Exit(2);
  }
  mprotect(p, page, PROT_NONE);
  base = static_cast<char*>(p);
  usable = base + page;
}
void unmap_region(char* base, size_t bytes) {
  munmap(base, bytes + static_cast<size_t>(sysconf(_SC_PAGESIZE)));
}

void give_stack(Fiber& f) {
  if (f.stack != nullptr) return;
  f.stack_size = stack_bytes();
  char* base;
  map_region(f.stack_size, base, f.stack);
#if defined(EMU_TSAN)
  f.tsan = __tsan_create_fiber(0);
#endif
}

// __shared__ storage: exact-size heap blocks (ASan red zones at both ends); under TSan mappings, unmapped
// at the block's end for the reason above.
void* alloc_shared(size_t bytes, size_t align) {
#if defined(EMU_TSAN)
  (void)align;
  char *base, *p;
  map_region(bytes, base, p);
  return p;
#else
  void* p = nullptr;
  if (posix_memalign(&p, align < 16 ? 16 : align, bytes) != 0) std::abort();
  return p;
#endif
}
void free_shared(void* p, size_t bytes) {
#if defined(EMU_TSAN)
  unmap_region(static_cast<char*>(p) - sysconf(_SC_PAGESIZE), bytes);
#else
  (void)bytes;
  std::free(p);
#endif
}

void fiber_entry(void* arg);

void start_fiber(Fiber& f) {
  give_stack(f);
#if defined(__x86_64__)
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack + f.stack_size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;
  *--sp = 0;
  *--sp = reinterpret_cast<uint64_t>(&emu_ctx_start);  // emu_ctx_switch's `ret` lands here, 16-aligned
  *--sp = 0;                                           // rbp
  *--sp = 0;                                           // rbx
  *--sp = reinterpret_cast<uint64_t>(&f);              // r12: the argument
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);    // r13: the function
  *--sp = 0;                                           // r14
  *--sp = 0;                                           // r15
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack;
  f.uc.uc_stack.ss_size = f.stack_size;
  f.uc.uc_link = nullptr;
  const uintptr_t a = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.uc, reinterpret_cast<void (*)()>(+[](unsigned lo, unsigned hi) {
                fiber_entry(reinterpret_cast<void*>((uintptr_t(hi) << 32) | lo));
              }),
              2, unsigned(a & 0xffffffffu), unsigned(a >> 32));
#endif
  f.started = false;
  f.done = false;
  f.wait_what = nullptr;
  f.asan_fake = nullptr;
}

// scheduler -> fiber f, back when f waits or ends.
void run_fiber(Fiber& f) {
  cur = &f;
  g_pos = &f.pos;
#if defined(EMU_ASAN)
  __sanitizer_start_switch_fiber(&sched_fake, f.stack, f.stack_size);
#endif
#if defined(EMU_TSAN)
  // The first entry synchronises with the host (the launch's inputs); later ones with nothing.
  __tsan_switch_to_fiber(f.tsan, f.started ? __tsan_switch_to_fiber_no_sync : 0);
  f.started = true;
#endif
#if defined(__x86_64__)
  emu_ctx_switch(&sched_sp, f.sp);
#else
  swapcontext(&sched_uc, &f.uc);
#endif
#if defined(EMU_ASAN)
  __sanitizer_finish_switch_fiber(sched_fake, nullptr, nullptr);
#endif
  cur = nullptr;
  g_pos = &host_pos;
}

// fiber -> scheduler; returns when the scheduler runs this fiber again (never once it is done).
void yield_fiber(bool dying) {
  Fiber& f = *cur;
#if defined(EMU_ASAN)
  __sanitizer_start_switch_fiber(dying ? nullptr : &f.asan_fake, sched_stack_bottom, sched_stack_size);
#endif
#if defined(EMU_TSAN)
  __tsan_switch_to_fiber(sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
  (void)dying;
#if defined(__x86_64__)
  emu_ctx_switch(&f.sp, sched_sp);
#else
  swapcontext(&f.uc, &sched_uc);
#endif
#if defined(EMU_ASAN)
  __sanitizer_finish_switch_fiber(f.asan_fake, nullptr, nullptr);
#endif
}

void wait_here(const char* what, const char* file, int line) {
  cur->wait_what = what;
  cur->wait_file = file;
  cur->wait_line = line;
  yield_fiber(false);
  cur->wait_what = nullptr;
}

void wake(std::vector<Fiber*>& ws) {
  for (Fiber* f : ws) ready.push_back(f);
  ws.clear();
}

// ---- block barrier ----
void complete_block_barrier() {
  blk.result = blk.acc;
  blk.arrived = 0;
  ++blk.phase;
  wake(blk.waiters);
}

// ---- warp collectives ----
const char* kind_name(int kind) {
  static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp", "mma.sync"};
  return kind >= 0 && kind < 9 ? names[kind] : "?";
}
constexpr int kSyncwarp = 7, kMma = 8;

// The PTX ISA fragment layouts (lane = 4 * groupID + threadID_in_group), as element -> (lane, register,
// half) maps: m16n8k16 A a0..a7 at (groupID + 8 [a2 a3 a6 a7], 2 tig + (i & 1) + 8 [a4..a7]), B b0..b3 at
// (k = 2 tig + (i & 1) + 8 [b2 b3], n = groupID); m16n8k8 tf32 A a0..a3 at (groupID + 8 [a1 a3], tig + 4
// [a2 a3]), B b0, b1 at (k = tig + 4 [b1], n = groupID); C/D c0..c3 at (groupID + 8 [c2 c3], 2 tig + (i & 1)).
struct Loc {
  int lane, reg, half;
};
struct Layouts {
  Loc a16[16][16], b16[16][8], a8[16][8], b8[8][8];
  Layouts() {
    for (int lane = 0; lane < 32; ++lane) {
      const int gid = lane >> 2, tig = lane & 3;
      for (int i = 0; i < 8; ++i)
        a16[gid + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0)][2 * tig + (i & 1) + (i >= 4 ? 8 : 0)] = {
            lane, i / 2, i & 1};
      for (int i = 0; i < 4; ++i) b16[2 * tig + (i & 1) + (i >= 2 ? 8 : 0)][gid] = {lane, i / 2, i & 1};
      for (int i = 0; i < 4; ++i) a8[gid + ((i & 1) ? 8 : 0)][tig + (i >= 2 ? 4 : 0)] = {lane, i, 0};
      for (int i = 0; i < 2; ++i) b8[tig + 4 * i][gid] = {lane, i, 0};
    }
  }
};
const Layouts& layouts() {
  static const Layouts l;
  return l;
}

double half_value(uint32_t reg, int half, int shape) {
  const uint16_t bits = static_cast<uint16_t>(reg >> (16 * half));
  if (shape == kM16N8K16Bf16) return __bfloat162float(__nv_bfloat16{bits});
  return __half2float(__half{bits});
}
double tf32_value(uint32_t reg) { return __uint_as_float(reg & 0xffffe000u); }  // the 13 low bits are ignored

void compute_mma(Warp& W, int shape) {
  const Layouts& L = layouts();
  const int K = shape == kM16N8K8Tf32 ? 8 : 16;
  for (int lane = 0; lane < 32; ++lane) {
    const int gid = lane >> 2, tig = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = gid + (i >= 2 ? 8 : 0), col = 2 * tig + (i & 1);
      double s = W.c[lane][i];
      for (int k = 0; k < K; ++k) {
        if (shape == kM16N8K8Tf32) {
          const Loc la = L.a8[row][k], lb = L.b8[k][col];
          s += tf32_value(W.a[la.lane][la.reg]) * tf32_value(W.b[lb.lane][lb.reg]);
        } else {
          const Loc la = L.a16[row][k], lb = L.b16[k][col];
          s += half_value(W.a[la.lane][la.reg], la.half, shape) * half_value(W.b[lb.lane][lb.reg], lb.half, shape);
        }
      }
      W.d[lane][i] = static_cast<float>(s);  // exact products, one rounding (the hardware's order differs)
    }
  }
}

void complete_warp(Warp& W) {
  const unsigned want = W.mask & W.live;
  if (W.present != want) {
    for (int l = 0; l < 32; ++l)
      if (((want >> l) & 1u) && !((W.present >> l) & 1u))
        report("%s at %s:%d: lane %d named in the mask did not take part", kind_name(W.kind), W.file, W.line, l);
  }
  if ((W.mask & ~W.live) != 0)
    report("%s at %s:%d: mask %08x names lanes that exited or do not exist (live %08x)", kind_name(W.kind), W.file,
           W.line, W.mask, W.live);
  if (W.kind == kMma) {
    compute_mma(W, W.shape);
  } else if (W.kind == kBallot || W.kind == kAny || W.kind == kAll) {
    unsigned bal = 0;
    for (int l = 0; l < 32; ++l)
      if ((W.present >> l) & 1u) {
        int p;
        std::memcpy(&p, W.in[l], sizeof(int));
        if (p) bal |= 1u << l;
      }
    const unsigned r = W.kind == kBallot ? bal : (W.kind == kAny ? unsigned(bal != 0) : unsigned(bal == W.present));
    for (int l = 0; l < 32; ++l) std::memcpy(W.out[l], &r, sizeof(unsigned));
  } else if (W.kind != kSyncwarp) {
    const int w = W.width;
    for (int l = 0; l < 32; ++l) {
      if (!((W.present >> l) & 1u)) continue;
      const int base = l & ~(w - 1), pos = l & (w - 1), a = W.arg[l];
      int src = l;
      if (W.kind == kShflIdx) src = base + (a & (w - 1));
      else if (W.kind == kShflUp) src = pos >= a ? l - a : l;
      else if (W.kind == kShflDown) src = pos + a < w ? l + a : l;
      else if (W.kind == kShflXor) src = ((l ^ a) & ~(w - 1)) == base ? (l ^ a) : l;
      if (!((W.present >> src) & 1u)) {
        report("%s at %s:%d: lane %d reads lane %d, which is not in the collective", kind_name(W.kind), W.file,
               W.line, l, src);
        std::memset(W.out[l], 0, 16);
      } else {
        std::memcpy(W.out[l], W.in[src], W.bytes);
      }
    }
  }
  W.present = 0;
  W.kind = -1;
  ++W.phase;
  wake(W.waiters);
}

// Lane `cur` arrives at a warp collective of `kind`; returns its phase (the results are in W.out / W.d).
Warp& warp_arrive(int kind, unsigned mask, int width, const char* file, int line, int& lane_out) {
  const int lin = cur->pos.lin, lane = lin % 32;
  Warp& W = blk.warps[lin / 32];
  if (W.present == 0) {
    W.kind = kind;
    W.mask = mask;
    W.width = width;
    W.file = file;
    W.line = line;
  } else if (W.kind != kind || W.file != file || W.line != line) {
    report("lane %d is at %s (%s:%d) while other lanes of its warp are at %s (%s:%d): divergent warp collectives",
           lane, kind_name(kind), file, line, kind_name(W.kind), W.file, W.line);
  } else if (W.mask != mask) {
    report("%s at %s:%d: lanes pass different masks (%08x, %08x)", kind_name(kind), file, line, W.mask, mask);
  }
  if (!((mask >> lane) & 1u))
    report("%s at %s:%d: lane %d calls it with mask %08x, which does not name it", kind_name(kind), file, line, lane,
           mask);
  W.present |= 1u << lane;
  lane_out = lane;
  return W;
}

void warp_wait_or_complete(Warp& W, const char* what, const char* file, int line) {
  if (W.present == (W.mask & W.live) || (W.present & W.live) == W.live) {
    complete_warp(W);
  } else {
    W.waiters.push_back(cur);
    wait_here(what, file, line);
  }
}

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

void fiber_body(Fiber& f) __attribute__((noinline));
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;
void fiber_body(Fiber&) { g_body(g_ctx); }

void thread_exit() {
  Fiber& f = *cur;
  const int lin = f.pos.lin;
  Warp& W = blk.warps[lin / 32];
  W.live &= ~(1u << (lin % 32));
  if (W.present != 0 && (W.present == (W.mask & W.live) || (W.present & W.live) == W.live)) complete_warp(W);
  --blk.expected;
  if (blk.arrived > 0 && blk.arrived >= blk.expected) complete_block_barrier();
  f.done = true;
  sync_release(&launch_token);  // the host reads the kernel's writes after the launch (stream order)
}

void fiber_entry(void* arg) {
  Fiber& f = *static_cast<Fiber*>(arg);
#if defined(EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &sched_stack_bottom, &sched_stack_size);
#endif
  fiber_body(f);  // returns normally: its frames leave no poisoned stack behind
  {
    Quiet quiet;
    thread_exit();
  }
  yield_fiber(true);
  std::abort();  // never resumed
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

int block_barrier(int op, int pred, const char* file, int line) {
  Quiet quiet;
  if (cur == nullptr) {
    report("__syncthreads outside a kernel (%s:%d)", file, line);
    return pred;
  }
  if (blk.arrived == 0) {
    blk.op = op;
    blk.file = file;
    blk.line = line;
    blk.acc = op == 1 ? 1 : 0;
  } else if ((blk.file != file || blk.line != line || blk.op != op) && blk.divergent_phase != blk.phase) {
    blk.divergent_phase = blk.phase;  // once a barrier
    report("threads meet at different barriers: %s:%d and %s:%d (a __syncthreads in divergent code)", blk.file,
           blk.line, file, line);
  }
  if (op == 1) blk.acc = blk.acc && pred;
  else if (op == 2) blk.acc = blk.acc || pred;
  else if (op == 3) blk.acc += pred != 0;
  const int my_phase = blk.phase;
  sync_release(&blk.tsan_token[my_phase & 1]);
  if (++blk.arrived >= blk.expected) {
    complete_block_barrier();
  } else {
    blk.waiters.push_back(cur);
    wait_here("__syncthreads", file, line);
  }
  sync_acquire(&blk.tsan_token[my_phase & 1]);
  return blk.result;
}

void syncwarp(unsigned mask, const char* file, int line) {
  Quiet quiet;
  if (cur == nullptr) return;
  int lane;
  Warp& W = warp_arrive(kSyncwarp, mask, 32, file, line, lane);
  const int my_phase = W.phase;
  sync_release(&W.tsan_token[my_phase & 1]);
  warp_wait_or_complete(W, "__syncwarp", file, line);
  sync_acquire(&W.tsan_token[my_phase & 1]);
}

void warp_exchange(int kind, unsigned mask, const void* in, void* out, size_t bytes, int arg, int width,
                   const char* file, int line) {
  Quiet quiet;
  if (cur == nullptr) {
    report("%s outside a kernel (%s:%d)", kind_name(kind), file, line);
    std::memcpy(out, in, bytes);
    return;
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    report("%s at %s:%d: width %d is not a power of 2 up to 32", kind_name(kind), file, line, width);
  int lane;
  Warp& W = warp_arrive(kind, mask, width, file, line, lane);
  W.bytes = bytes;
  std::memcpy(W.in[lane], in, bytes);
  W.arg[lane] = arg;
  warp_wait_or_complete(W, kind_name(kind), file, line);
  std::memcpy(out, W.out[lane], kind >= kBallot ? sizeof(unsigned) : bytes);
}

void mma(int shape, const uint32_t* a, const uint32_t* b, const float* c, float* d, const char* file, int line) {
  Quiet quiet;
  if (cur == nullptr) {
    report("mma.sync outside a kernel (%s:%d)", file, line);
    return;
  }
  int lane;
  Warp& W = warp_arrive(kMma, 0xffffffffu, 32, file, line, lane);
  W.shape = shape;
  if (W.live != 0xffffffffu)
    report("mma.sync at %s:%d in a warp without all 32 lanes (live %08x)", file, line, W.live);
  std::memcpy(W.a[lane], a, sizeof W.a[lane]);
  std::memcpy(W.b[lane], b, sizeof W.b[lane]);
  std::memcpy(W.c[lane], c, sizeof W.c[lane]);
  warp_wait_or_complete(W, "mma.sync", file, line);
  std::memcpy(d, W.d[lane], sizeof W.d[lane]);
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
#if defined(EMU_TSAN)
  if (sched_tsan == nullptr) sched_tsan = __tsan_get_current_fiber();
#endif
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
extern "C" long emu_launch_count() { return emu::n_launches; }
extern "C" long emu_block_count() { return emu::n_blocks; }
