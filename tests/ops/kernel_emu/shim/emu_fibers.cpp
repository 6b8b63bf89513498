// Fibers: one per CUDA thread; a context switch of the 6 callee-saved registers and the stack pointer on
// x86-64 (ucontext elsewhere); stacks mmap'd once with a guard page; the ASan and TSan fiber annotations
// around every switch. Not instrumented (emu_state.h).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "emu_state.h"

#if defined(EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace emu::rt {
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

void fiber_entry(void* arg);

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

void fiber_body(Fiber& f) __attribute__((noinline));
void fiber_body(Fiber&) { g_body(g_ctx); }

void thread_exit() {
  Fiber& f = *cur;
  drop_thread(f.pos.lin);
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

}  // namespace

// __shared__ storage: exact-size heap blocks (ASan red zones at both ends); under TSan fresh mappings,
// unmapped at the block's end: that clears their shadow without the race check a free() would make against
// the block's threads, so no stale history links two blocks.
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
  if (sched_tsan == nullptr) sched_tsan = __tsan_get_current_fiber();  // the host thread's
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

}  // namespace emu::rt
