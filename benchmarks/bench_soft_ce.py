"""Soft-target cross-entropy: wslfast against stock PyTorch, speed and peak memory, in one run.

    python benchmarks/bench_soft_ce.py                 # CPU here: the goal shapes; all of them on a GPU
    python benchmarks/bench_soft_ce.py --full          # every shape of the issue on this device
    python benchmarks/bench_soft_ce.py --out FILE.json

Baselines (the dense [B, V] target is built before timing, and its memory is not counted against them):
  eager_logsoftmax  -(t * log_softmax(z)).sum(-1), mean over rows with targets      (a)
  eager_cross_entropy  F.cross_entropy(z, t) with probability targets               (b)
  compile_logsoftmax   torch.compile of (a)                                         (c)
  liger / cut_cross_entropy for k = 1 on a GPU when installed (skipped with a note otherwise).
The linear variant compares wslfast's fused classifier+loss with `features @ W.T + b` followed by (a).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # an uninstalled checkout
from common import append_results, cpu_peak_extra_bytes, record, sync, time_ms  # noqa: E402

from wslfast.ops import SparseTargets, linear_soft_target_cross_entropy, soft_target_cross_entropy  # noqa: E402

BENCH = "soft_ce"


def make_targets(B, V, k, device, seed=0):
    gen = random.Random(seed)
    rows = [gen.sample(range(V), min(k, V)) for _ in range(B)]
    return SparseTargets.from_lists(rows, V, device=device)


def dense_mean_loss(z, dense):
    rows = -(dense * torch.log_softmax(z, dim=-1)).sum(-1)
    has = (dense != 0).any(-1)
    return rows.sum() / has.sum().clamp(min=1)


def plain_impls(targets, dense, k, device, with_compile):
    impls = {
        "wslfast": lambda z: soft_target_cross_entropy(z, targets),
        "eager_logsoftmax": lambda z: dense_mean_loss(z, dense),
        "eager_cross_entropy": lambda z: F.cross_entropy(z, dense.to(z.dtype)),
    }
    if with_compile:
        impls["compile_logsoftmax"] = torch.compile(lambda z: dense_mean_loss(z, dense))
    if device.type == "cuda" and k == 1:
        labels = targets.indices
        try:
            from liger_kernel.transformers.functional import liger_cross_entropy
            impls["liger"] = lambda z: liger_cross_entropy(z, labels)
        except ImportError:
            print("note: liger-kernel not installed; its baseline is skipped")
    return impls


def linear_impls(targets, dense, k, device):
    impls = {
        "wslfast": lambda f, w, b: linear_soft_target_cross_entropy(f, w, b, targets),
        "eager_logsoftmax": lambda f, w, b: dense_mean_loss(F.linear(f, w, b), dense),
    }
    if device.type == "cuda" and k == 1:
        labels = targets.indices
        try:
            from cut_cross_entropy import linear_cross_entropy
            impls["cut_cross_entropy"] = lambda f, w, b: linear_cross_entropy(f, w, labels, bias=b)
        except ImportError:
            print("note: cut-cross-entropy not installed; its baseline is skipped")
    return impls


def time_modes(fn, leaves, device, repeats):
    """fwd, bwd and fwdbwd timings of fn(*leaves) -> scalar loss."""
    def clear():
        # logits in training are not leaves: no gradient accumulates into an old .grad, so none is kept
        for x in leaves:
            x.grad = None

    def fresh():
        clear()
        return fn(*leaves)

    out = {"fwd": time_ms(lambda: fresh(), device, repeats=repeats)}
    out["bwd"] = time_ms(lambda loss: loss.backward(), device, repeats=repeats, setup=fresh)
    out["fwdbwd"] = time_ms(lambda _: fn(*leaves).backward(), device, repeats=repeats, setup=clear)
    for x in leaves:
        x.grad = None
    return out


def cuda_peak_extra(fn, leaves, device):
    for x in leaves:
        x.grad = None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn(*leaves).backward()
    sync(device)
    extra = torch.cuda.max_memory_allocated(device) - base
    for x in leaves:
        x.grad = None
    return extra


def cpu_peak_extra(kind, impl, case):
    """Peak resident memory added by one fwd+bwd, measured in a fresh process (CPU has no allocator stats)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--mem-probe", json.dumps({"kind": kind, "impl": impl, **case})]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0 or out.stdout.strip().splitlines()[-1:] == ["None"]:
        print(f"note: memory probe failed for {impl} {case}: {out.stderr.strip()[-300:]}")
        return None
    return int(out.stdout.strip().splitlines()[-1])


def build_case(kind, case, device, seed=0):
    dtype = getattr(torch, case["dtype"])
    targets = make_targets(case["B"], case["V"], case["k"], device, seed)
    dense = targets.to_dense(torch.float32)
    g = torch.Generator(device="cpu").manual_seed(seed)
    if kind == "plain":
        leaves = [(torch.randn(case["B"], case["V"], generator=g) * 3).to(device, dtype).requires_grad_()]
    else:
        D = case["D"]
        leaves = [torch.randn(case["B"], D, generator=g).to(device, dtype).requires_grad_(),
                  (torch.randn(case["V"], D, generator=g) / D ** 0.5).to(device, dtype).requires_grad_(),
                  torch.zeros(case["V"]).to(device, dtype).requires_grad_()]
    return targets, dense, leaves


def mem_probe(spec):
    kind, impl = spec.pop("kind"), spec.pop("impl")
    device = torch.device("cpu")
    targets, dense, leaves = build_case(kind, spec, device)
    impls = (plain_impls(targets, dense, spec["k"], device, False) if kind == "plain"
             else linear_impls(targets, dense, spec["k"], device))
    def reset():
        for x in leaves:
            x.grad = None

    print(cpu_peak_extra_bytes(lambda: impls[impl](*leaves).backward(), reset))


# Odd vocabularies (rows not a multiple of 16 bytes: the kernels peel a scalar head and tail per row); in the
# GPU goal run they come last and time wslfast alone, against the even neighbours above them.
ODD_GOAL_VOCABS = (1531, 17011, 131073)


def cases_for(device, full, goal=False):
    if goal:  # the shapes the goals are stated at, k = 3: quick enough for the one-call GPU session
        Bs, Vs = ((32, 256), (1500, 17000, 131072, 1_000_000)) if device.type == "cuda" else ((256,), (1500, 17000))
        dtype = "bfloat16" if device.type == "cuda" else "float32"
        plain = [dict(B=B, V=V, k=3, dtype=dtype) for B in Bs for V in Vs]
        if device.type == "cuda":
            plain += [dict(B=B, V=V, k=3, dtype=dtype) for B in Bs for V in ODD_GOAL_VOCABS]
        return plain, []
    if device.type == "cuda" or full:
        plain = [dict(B=B, V=V, k=k) for B in (256, 1024, 4096) for V in (1500, 17000, 131072, 1_000_000)
                 for k in (1, 3, 10)]
        if device.type == "cuda":  # the paper's per-GPU batches and B = 1: the split-vocabulary kernels
            plain = [dict(B=B, V=V, k=3) for B in (1, 32) for V in (17000, 131072, 1_000_000)] + plain
        dtypes = ["bfloat16", "float32"] if device.type == "cuda" else ["float32"]
        linear = [dict(B=4096, D=2048, V=V, k=3) for V in (17000, 131072, 1_000_000)]
        if device.type != "cuda":
            linear = [dict(B=2048, D=128, V=131072, k=3)]
    else:  # the CPU goals of the issue, and a spread around them that runs in minutes on 2 cores
        plain = [dict(B=256, V=V, k=k) for V in (1500, 17000) for k in (1, 3, 10)] + [dict(B=256, V=131072, k=3)]
        dtypes = ["float32"]
        linear = [dict(B=2048, D=128, V=131072, k=3)]
    return ([dict(c, dtype=d) for c in plain for d in dtypes],
            [dict(c, dtype=d) for c in linear for d in (["bfloat16"] if device.type == "cuda" else ["float32"])])


def run_kind(kind, cases, device, args, records):
    for case in cases:
        done = len(records)
        try:
            targets, dense, leaves = build_case(kind, case, device)
        except torch.OutOfMemoryError:
            print(f"skip {kind} {case}: out of memory building inputs")
            continue
        impls = (plain_impls(targets, dense, case["k"], device, not args.no_compile) if kind == "plain"
                 else linear_impls(targets, dense, case["k"], device))
        if args.goal and kind == "plain" and case["V"] in ODD_GOAL_VOCABS:
            impls = {"wslfast": impls["wslfast"]}  # the time box: the baselines ran at the even V
        for name, fn in impls.items():
            # CPU: many repeats of the millisecond plain cases, few of the seconds-long linear ones
            repeats = args.repeats or (20 if device.type == "cuda" else (15 if kind == "plain" else 3))
            try:
                modes = time_modes(fn, leaves, device, repeats)
                mem = (cuda_peak_extra(fn, leaves, device) if device.type == "cuda"
                       else (cpu_peak_extra(kind, name, case) if not name.startswith("compile") else None))
            except torch.OutOfMemoryError:
                print(f"skip {kind} {name} {case}: out of memory")
                torch.cuda.empty_cache()
                continue
            for mode, t in modes.items():
                records.append(record(BENCH if kind == "plain" else BENCH + "_linear", case, name, mode, t,
                                      mem, device))
            print(f"{kind:6} {name:20} {case}  fwd+bwd p50 {modes['fwdbwd'][1]:9.3f} ms  "
                  f"peak extra {'-' if mem is None else f'{mem / 2**20:8.1f} MiB'}", flush=True)
        del targets, dense, leaves
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # each case's records as soon as it is done: a run cut short (a time-boxed GPU session) keeps them
        append_results(records[done:], args.out, device)


def summarize(records):
    """Per case: wslfast's fwd+bwd speed-up over the faster of (a), (b), and its memory ratio."""
    by_case = {}
    for r in records:
        if r["mode"] == "fwdbwd":
            by_case.setdefault((r["bench"], json.dumps(r["case"], sort_keys=True)), {})[r["impl"]] = r
    print("\nbench            case                                           speed-up vs best of (a),(b)  mem ratio")
    for (bench, case), impls in by_case.items():
        ours = impls.get("wslfast")
        stock = [impls[k] for k in ("eager_logsoftmax", "eager_cross_entropy") if k in impls]
        if not ours or not stock:
            continue
        best = min(stock, key=lambda r: r["ms_p50"])
        ratio = best["ms_p50"] / ours["ms_p50"]
        mem = (f"{ours['peak_mem_bytes'] / best['peak_mem_bytes']:.3f}"
               if ours["peak_mem_bytes"] and best["peak_mem_bytes"] else "-")
        print(f"{bench:16} {case:48} {ratio:8.2f}x  {mem}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--full", action="store_true", help="every shape of the issue, also on CPU (slow)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--only", choices=["plain", "linear"], default=None)
    p.add_argument("--goal", action="store_true", help="only the goal shapes (k = 3; bf16 on CUDA)")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results/<device>.json)")
    p.add_argument("--mem-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mem_probe:
        return mem_probe(json.loads(args.mem_probe))
    dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if dev == "auto" else dev)
    plain, linear = cases_for(device, args.full, args.goal)
    records = []
    if args.only in (None, "plain"):
        run_kind("plain", plain, device, args, records)
    if args.only in (None, "linear"):
        run_kind("linear", linear, device, args, records)
    summarize(records)
    print("results appended to", append_results([], args.out, device))


if __name__ == "__main__":
    main()
