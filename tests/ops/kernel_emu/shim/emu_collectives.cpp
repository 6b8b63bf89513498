// Barriers and warp collectives: the last thread to arrive completes the phase (and, for a warp collective,
// computes every lane's result: shuffles, votes, mma.sync from the PTX ISA fragment tables) and wakes the
// others. Not instrumented (emu_state.h); under TSan a barrier phase is a release/acquire pair.
#include <cstring>

#include "emu_state.h"

namespace emu::rt {
namespace {

void complete_block_barrier() {
  blk.result = blk.acc;
  blk.arrived = 0;
  ++blk.phase;
  wake(blk.waiters);
}

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

}  // namespace

void drop_thread(int lin) {
  Warp& W = blk.warps[static_cast<size_t>(lin / 32)];
  W.live &= ~(1u << (lin % 32));
  if (W.present != 0 && (W.present == (W.mask & W.live) || (W.present & W.live) == W.live)) complete_warp(W);
  --blk.expected;
  if (blk.arrived > 0 && blk.arrived >= blk.expected) complete_block_barrier();
}

}  // namespace emu::rt

namespace emu {
using namespace rt;

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

}  // namespace emu
