// The scheduler's state, shared by the runtime's files (emu_runtime.cpp: launches and blocks;
// emu_fibers.cpp: fibers and their stacks; emu_collectives.cpp: barriers, shuffles, mma). Internal.
#pragma once
#include <vector>

#include "emu.h"

#if defined(EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu::rt {

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

// ---- the launch in flight (emu_runtime.cpp) ----
extern Fiber* cur;  // null: the scheduler (host) runs
extern Block blk;
#if defined(EMU_TSAN)
constexpr unsigned long kPool = 2048;
#else
constexpr unsigned long kPool = 1024;
#endif
extern std::vector<Fiber> fibers;
extern unsigned long pool_base;  // the pool slot of thread 0 of the running block
inline Fiber& fiber_of(unsigned long t) { return fibers[(pool_base + t) % kPool]; }
extern std::vector<Fiber*> ready;
extern size_t ready_head;
extern bool depth_first;
extern unsigned long nthreads;
extern const char* k_name;
extern const char* k_file;
extern int k_line;
extern long n_launches, n_blocks;
extern bool bounds_reported;
extern char launch_token;
extern cudaError_t last_error;
extern int n_errors;
extern ThreadPos host_pos;
extern void (*g_body)(void*);  // the kernel body of the launch and its captures
extern void* g_ctx;

// The runtime's own bookkeeping is shared by every fiber without synchronisation: TSan must not see it.
// Only intercepted calls need hiding (the runtime is not instrumented): operator new, memcpy, memset.
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

inline void sync_release(void* addr) {
#if defined(EMU_TSAN)
  __tsan_release(addr);
#else
  (void)addr;
#endif
}
inline void sync_acquire(void* addr) {
#if defined(EMU_TSAN)
  __tsan_acquire(addr);
#else
  (void)addr;
#endif
}

// ---- fibers (emu_fibers.cpp) ----
void start_fiber(Fiber& f);  // fresh context (and stack) running the launch's body
void run_fiber(Fiber& f);    // scheduler -> f, back when f waits or ends
void wait_here(const char* what, const char* file, int line);  // the running fiber waits (where, for reports)
void wake(std::vector<Fiber*>& waiters);
void* alloc_shared(size_t bytes, size_t align);
void free_shared(void* p, size_t bytes);

// ---- collectives (emu_collectives.cpp) ----
void drop_thread(int lin);  // a thread exited: no barrier or warp collective waits for it any more

}  // namespace emu::rt
