"""A model of the soft-target CE's CUDA work, before (git main, cf8d547) and after the vector peel and the
fused loss: per case, the fraction of logits elements read in 16-byte vectors, memory instructions, bytes
moved per pass, and kernel launches per fused forward+backward. No GPU: the figures come from the launch
configuration the code uses (soft_ce_math.h's split and vector plan, compiled here with g++ and called, and
threads_for of soft_ce_cuda.cu), and the launch lists from reading the dispatch, checked where a tool sees it:

  * the kernels' own launches and 16-byte loads: counted by the SIMT emulator over the real .cu sources
    (2 launches per loss_cuda call, 1 per backward; every aligned-middle element read as a vector);
  * the ops around them: tests/ops/test_soft_ce_reduced.py records what the wrapper and autograd dispatch;
    "before" was read off torch.profiler on main's CPU path, with ATen's CUDA dispatch where it differs
    (count_nonzero is `(x != 0).sum()` on CUDA: two kernels).

    python benchmarks/model_soft_ce.py                       # table + benchmarks/results/model_soft_ce.json
    python benchmarks/model_soft_ce.py --sms 132 --out FILE  # another SM count (splits depend on it)

Records: bench (model_soft_ce | model_soft_ce_linear), case (B, V, k, dtype, reduction), impl (before |
after), metrics, commit, time. `est_floor_us` is a model figure (launches x 2.5 us + bytes at 4 TB/s), never a
measurement: it only says which of the two bounds a case sits on.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import git_commit  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "soft_ce", "soft_ce_math.h")
OUT = os.path.join(ROOT, "benchmarks", "results", "model_soft_ce.json")
ELEM = {"bfloat16": 2, "float16": 2, "float32": 4}
VOCABS = (1531, 1500, 17011, 17000, 27000, 131073)
LAUNCH_US, HBM_BYTES_PER_S = 2.5, 4.0e12

SHIM = r"""
#include "%s"
using namespace wslfast::soft_ce;
extern "C" {
int64_t m_choose_splits(int64_t r, int64_t c, int64_t s) { return choose_splits(r, c, s); }
int64_t m_head_elems(uint64_t a, int64_t e) { return head_elems(a, e); }
void m_split_range_peeled(int64_t cols, int64_t head, int64_t unit, int64_t splits, int64_t sp, int64_t* o) {
  split_range_peeled(cols, head, unit, splits, sp, o[0], o[1]);
}
void m_vector_span(int64_t c0, int64_t c1, int64_t head, int64_t unit, int64_t* o) {
  vector_span(c0, c1, head, unit, o[0], o[1]);
}
}
"""


def kernel_plan_library():
    """soft_ce_math.h compiled for the host (cached by the header's hash): the split and vector plan the
    kernels run."""
    src = SHIM % HEADER
    key = hashlib.sha256((src + open(HEADER).read()).encode()).hexdigest()[:16]
    lib = os.path.join(tempfile.gettempdir(), f"wslfast_model_soft_ce_{key}.so")
    if not os.path.exists(lib):
        cpp = lib[:-3] + ".cpp"
        with open(cpp, "w") as f:
            f.write(src)
        try:
            subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", cpp, "-o", lib + ".tmp"], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"model_soft_ce: needs g++ to compile {HEADER} for the host: {getattr(e, 'stderr', e)}")
        os.replace(lib + ".tmp", lib)
    c = ctypes.CDLL(lib)
    i64, p = ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
    c.m_choose_splits.restype = i64
    c.m_choose_splits.argtypes = [i64, i64, i64]
    c.m_head_elems.restype = i64
    c.m_head_elems.argtypes = [ctypes.c_uint64, i64]
    c.m_split_range_peeled.argtypes = [i64, i64, i64, i64, i64, p]
    c.m_vector_span.argtypes = [i64, i64, i64, i64, p]
    return c


def threads_for(cols: int, vec: int, max_threads: int = 512) -> int:
    """soft_ce_cuda.cu threads_for (the same before and after): about two vectors a thread, 32..512."""
    want = (cols + 2 * vec - 1) // (2 * vec)
    want = (want + 31) // 32 * 32
    return max(32, min(max_threads, want))


def row_plan(lib, B, V, es, splits, after):
    """16-byte vectors and scalar elements per pass over contiguous [B, V] logits (base 16-byte aligned, as the
    caching allocator gives), and the aligned-middle capacity (the vectors a row can hold at all)."""
    vec = 16 // es
    out = (ctypes.c_int64 * 2)()
    vectors = capacity = 0
    for r in range(B):
        head = lib.m_head_elems(r * V * es, es)
        capacity += (V - min(head, V)) // vec
        if not after:  # main: vectors only where the base is aligned and V % vec == 0, from column 0
            vectors += V // vec if V % vec == 0 else 0
            continue
        for sp in range(splits):
            lib.m_split_range_peeled(V, head, vec, splits, sp, out)
            c0, c1 = out[0], out[1]
            lib.m_vector_span(c0, c1, head, vec, out)
            vectors += (out[1] - out[0]) // vec
    return vectors, B * V - vectors * vec, capacity


def small_ops(B, S, before, reduction):
    """(name, launches, bytes) of every launch but the two big kernels' logits traffic, per fwd+bwd."""
    f8 = 8 * B
    if before:  # git main: the composite soft_ce (partials + ATen finish), Python's reduction, autograd's
        fwd = [("forward_kernel partials", 1, 32 * B * S)]
        if S > 1:
            fwd.append(("merge_kernel", 1, 32 * B * S + 32 * B))
        fwd += [("log", 1, 2 * f8), ("add", 1, 3 * f8), ("mul", 1, 3 * f8), ("sub", 1, 3 * f8),
                ("zeros_like fill", 1, f8), ("eq", 1, f8 + B), ("where", 1, B + 3 * f8), ("to float32", 1, f8 + 4 * B)]
        bwd = [("ones_like (autograd seed)", 1, 4)]
        if reduction in ("sum", "mean", "none+sum"):
            fwd.append(("sum", 1, 4 * B + 4))
        if reduction == "mean":
            fwd += [("offsets.diff sub", 1, 3 * f8), ("count_nonzero: ne", 1, f8 + B), ("count_nonzero: sum", 1, B + 8),
                    ("clamp_", 1, 16), ("div", 1, 12)]
            bwd.append(("DivBackward div", 1, 12))
        bwd += [("grad_rows.contiguous() of the expanded gradient", 1, 4 * B + 4),
                ("backward_kernel", 1, 4 * B + f8)]
        return fwd, bwd
    fwd = [("forward_kernel partials", 1, 32 * B * S),
           ("finish_kernel (merge, lse, loss" + (", sum)" if reduction in ("sum", "mean") else ")"), 1,
            32 * B * S + f8 + (4 * B if reduction in ("none", "none+sum") else 8) + (f8 + 8 if reduction == "mean" else 0))]
    if reduction == "none+sum":
        fwd.append(("sum (the caller's)", 1, 4 * B + 4))
    bwd = [("ones_like (autograd seed)", 1, 4), ("backward_kernel (upstream read in place, / norm)", 1, f8 + 8)]
    return fwd, bwd


def model_case(lib, B, V, k, dtype, reduction, sms, after):
    es = ELEM[dtype]
    vec = 16 // es
    S = lib.m_choose_splits(B, V, sms)
    vectors, scalars, capacity = row_plan(lib, B, V, es, S, after)
    fwd_ops, bwd_ops = small_ops(B, S, not after, reduction)
    targets = S * (12 * B * k + 8 * (B + 1))  # ids + weights + offsets, read by each split
    logits = B * V * es
    fwd_bytes = logits + targets + sum(b for _, _, b in fwd_ops)
    bwd_bytes = 2 * logits + targets + sum(b for _, _, b in bwd_ops)  # read logits, write the gradient
    launches = sum(n for _, n, _ in fwd_ops + bwd_ops)
    return {
        "splits": S, "threads": threads_for(-(-V // S), vec),
        "vector_fraction": round(vectors * vec / (B * V), 6),
        "aligned_middle_in_vectors": round(vectors / capacity, 6) if capacity else 1.0,
        "mem_instr_per_kelem_fwd": round(1000 * (vectors + scalars) / (B * V), 2),
        "mem_instr_per_kelem_bwd": round(2000 * (vectors + scalars) / (B * V), 2),
        "bytes_fwd": fwd_bytes, "bytes_bwd": bwd_bytes,
        "launches_fwd": sum(n for _, n, _ in fwd_ops), "launches_bwd": sum(n for _, n, _ in bwd_ops),
        "launches_fwdbwd": launches,
        "est_floor_us": round(launches * LAUNCH_US + (fwd_bytes + bwd_bytes) / HBM_BYTES_PER_S * 1e6, 1),
        "launch_list": [n for n, _, _ in fwd_ops + bwd_ops],
    }


def linear_launches(chunks, splits, dtype, bias, after):
    """Launches of one linear_soft_target_cross_entropy(mean) forward+backward, read off the composite
    (soft_ce_composite.cpp) and ATen's CUDA dispatch (a stack of n tensors is one cat launch per 128)."""
    low = dtype != "float32"
    fp32_sum = low and chunks > 1  # the feature gradient accumulates in fp32 over several chunks
    if not after:  # main: an online merge of ATen ops per chunk, then finish and Python's mean
        fwd = 1 + 3 + chunks * (1 + 1 + (splits > 1) + 12 + 1) + 8 + 6
        # per chunk: (add)mm recompute, grad_rows copy, backward kernel, grad_features (mm + add_ | addmm_),
        # grad_weight mm_out, grad_bias sum + copy; seed, DivBackward, zeros(grad_features), .to() for bf16
        per_chunk = 1 + 1 + 1 + (2 if low else 1) + 1 + (2 if bias else 0)
        return fwd, 2 + 1 + chunks * per_chunk + (1 if low else 0)
    # per chunk a GEMM and the row kernel (+ its split merge); then one stack and one finish (the mean inside)
    fwd = chunks * (2 + (splits > 1)) + -(-4 * chunks // 128) + 1
    # seed; per chunk GEMM recompute, backward kernel (upstream read in place), grad_weight, grad_bias (sum_out),
    # grad_features: mm (+ to(fp32) first | add_ later) or addmm_; the final .to() when accumulated in fp32
    bwd = 1 + chunks * (1 + 1 + 1 + (1 if bias else 0))
    bwd += (1 + fp32_sum) + (chunks - 1) * (2 if fp32_sum else 1) + fp32_sum
    return fwd, bwd


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sms", type=int, default=132, help="SM count (H100/H200 SXM: 132)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    lib = kernel_plan_library()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit = git_commit()
    records = []
    print(f"{'case':44} {'impl':6} {'S':>3} {'vec frac':>8} {'middle':>6} {'instr/k':>7} {'MB fwd':>7} "
          f"{'MB bwd':>7} {'launch':>6} {'est us':>7}")
    for B in (32, 256):
        for dtype in ("bfloat16", "float32"):
            for V in VOCABS:
                for reduction in ("mean", "none+sum"):
                    case = dict(B=B, V=V, k=3, dtype=dtype, reduction=reduction, sms=args.sms)
                    for impl in ("before", "after"):
                        m = model_case(lib, B, V, 3, dtype, reduction, args.sms, impl == "after")
                        records.append(dict(bench="model_soft_ce", case=case, impl=impl, **m, commit=commit, time=now))
                        label = f"B={B} V={V} {dtype} {reduction}"
                        print(f"{label:44} {impl:6} {m['splits']:>3} {m['vector_fraction']:>8.4f} "
                              f"{m['aligned_middle_in_vectors']:>6.3f} {m['mem_instr_per_kelem_fwd']:>7.1f} "
                              f"{m['bytes_fwd'] / 1e6:>7.3f} {m['bytes_bwd'] / 1e6:>7.3f} {m['launches_fwdbwd']:>6} "
                              f"{m['est_floor_us']:>7.1f}")
    print("\nlinear_soft_target_cross_entropy (mean, bias), launches fwd + bwd:")
    for B, V, dtype in ((256, 17000, "bfloat16"), (256, 131073, "bfloat16"), (2048, 131072, "float32")):
        es = ELEM[dtype]
        chunk = min(V, max(256, (64 << 20) // (B * es) // 8 * 8))  # default_chunk_size
        chunks = -(-V // chunk)
        splits = lib.m_choose_splits(B, chunk, args.sms)
        for impl in ("before", "after"):
            fwd, bwd = linear_launches(chunks, splits, dtype, True, impl == "after")
            case = dict(B=B, V=V, D=2048, k=3, dtype=dtype, reduction="mean", chunks=chunks, sms=args.sms)
            records.append(dict(bench="model_soft_ce_linear", case=case, impl=impl, launches_fwd=fwd,
                                launches_bwd=bwd, launches_fwdbwd=fwd + bwd, commit=commit, time=now))
            print(f"  B={B} V={V} {dtype} ({chunks} chunk{'s' if chunks > 1 else ''}) {impl:6}: {fwd} + {bwd} = "
                  f"{fwd + bwd}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(records, f, indent=1)
    print(f"\n{len(records)} records written to {args.out}")


if __name__ == "__main__":
    main()
