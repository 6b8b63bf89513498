"""Fused grouped conv + BatchNorm + ReLU: wslfast against eager PyTorch and torch.compile, in one run.

    python benchmarks/bench_conv_bn.py                   # CPU: 32x4d stage shapes, batch 8, float32
    (from a checkout built in place: PYTHONPATH=. python benchmarks/bench_conv_bn.py)
    python benchmarks/bench_conv_bn.py --no-compile      # skip the torch.compile baseline
    python benchmarks/bench_conv_bn.py --no-step         # skip the whole-model training step
    python benchmarks/bench_conv_bn.py --widths 8,16 --batches 32   # a subset of the block cases
    python benchmarks/bench_conv_bn.py --out FILE.json

Block cases: the stride-1 grouped 3x3 conv (groups 32) of each stage of ResNeXt-101 32x{4,8,16}d at
224x224 input (56, 28, 14, 7 pixels), channels_last. GPU default: all three widths at batch 32 and 128 in
bf16; CPU default: 32x4d at batch 8 in float32 (the issue's CPU goal). Modes fwd, bwd (backward alone,
graph built untimed) and fwdbwd. Impls: wslfast (conv_bn_relu), eager (F.conv2d -> F.batch_norm ->
F.relu), compile (torch.compile of eager). On a GPU the wslfast forward also records the bandwidth it
achieved on its fused traffic (read x, write z, read z, write y) and the device's copy bandwidth.
Changed-kernel cases (GPU, --no-changed to skip): the layers whose kernels issue 20 changed, at batch 128 in
bf16 (benchmarks/model_conv_bn.py models their work): the stride-2 3x3 grouped conv opening 32x4d's stage 2
(8 channels a group, the data gradient's output phases), its stride-2 1x1 downsample (phases with no tap), and
32x48d's stage-1 3x3 (49 weight-gradient m-splits: a bounded workspace, two rounds). 32x4d stage 1 (4 channels
a group: pixel pairs; 3136 statistics parts: the finalize's tree) is the first block case above.
Records are appended after each case, so a run cut short keeps what it measured.
Step: one SGD step of a whole model, fused=True vs fused=False (GPU: resnext101_32x8d, batch 64, bf16
autocast; CPU: resnext_tiny, batch 16, 128x128, float32), channels_last.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (append_results, current_rss_bytes, device_label, peak_rss_bytes, record, sync,  # noqa: E402
                    time_ms)

from wslfast.models import create_model  # noqa: E402
from wslfast.ops import conv_bn_relu  # noqa: E402

BENCH = "conv_bn"
STAGES = ((56, 1), (28, 2), (14, 4), (7, 8))  # (pixels, width multiplier) of the four stages


def stage_cases(widths, batches, dtype):
    return [dict(model=f"32x{wpg}d", stage=i + 1, N=n, C=32 * wpg * mult, H=hw, W=hw, groups=32,
                 dtype=str(dtype).replace("torch.", ""), threads=torch.get_num_threads())
            for wpg in widths for n in batches for i, (hw, mult) in enumerate(STAGES)]


def changed_cases(dtype):
    """Layers whose kernels issue 20 changed (see the module docstring)."""
    base = dict(N=128, dtype=str(dtype).replace("torch.", ""), threads=torch.get_num_threads())
    return [dict(model="32x4d", stage="2 first 3x3/2", C=256, H=56, W=56, K=256, R=3, stride=2, groups=32, **base),
            dict(model="32x4d", stage="2 downsample 1x1/2", C=256, H=56, W=56, K=512, R=1, stride=2, groups=1,
                 relu=False, **base),
            dict(model="32x48d", stage=1, C=1536, H=56, W=56, K=1536, R=3, stride=1, groups=32, **base)]


def conv_kwargs(case):
    """The conv of a case: stage cases are 3x3, stride 1, groups 32, K = C, with ReLU."""
    r = case.get("R", 3)
    return dict(stride=case.get("stride", 1), padding=r // 2, groups=case["groups"], relu=case.get("relu", True))


def make_inputs(case, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    c, k, r, groups = case["C"], case.get("K", case["C"]), case.get("R", 3), case["groups"]
    x = torch.randn(case["N"], c, case["H"], case["W"], generator=gen).to(device, dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(k, c // groups, r, r, generator=gen) / (r * r * c / groups) ** 0.5).to(device, dtype)
    w = w.requires_grad_()
    g = torch.ones(k, device=device, requires_grad=True)
    b = torch.zeros(k, device=device, requires_grad=True)
    stats = (torch.zeros(k, device=device), torch.ones(k, device=device))
    return x, w, g, b, stats


def eager_block(x, w, g, b, rm, rv, stride=1, padding=1, groups=32, relu=True):
    y = F.batch_norm(F.conv2d(x, w, None, stride, padding, 1, groups), rm, rv, g.to(x.dtype), b.to(x.dtype), True)
    return F.relu(y) if relu else y


def wslfast_block(x, w, g, b, rm, rv, stride=1, padding=1, groups=32, relu=True):
    return conv_bn_relu(x, w, g, b, rm, rv, stride=stride, padding=padding, groups=groups, relu=relu)


def block_impls(with_compile):
    impls = {"wslfast": wslfast_block, "eager": eager_block}
    if with_compile:
        impls["compile"] = torch.compile(eager_block)
    return impls


def mode_fns(fn, inputs, kw):
    """{mode: (callable, setup or None)} for one impl on one case."""
    x, w, g, b, (rm, rv) = inputs
    with torch.no_grad():
        dy = torch.randn_like(fn(x, w, g, b, rm, rv, **kw))
    leaves = (x, w, g, b)

    def fwd(_=None):
        return fn(x, w, g, b, rm, rv, **kw)

    def bwd(y):
        torch.autograd.backward(y, dy)
        for t in leaves:
            t.grad = None

    def fwdbwd(_=None):
        bwd(fwd())

    return {"fwd": (fwd, None), "bwd": (bwd, fwd), "fwdbwd": (fwdbwd, None)}


def quantiles(times):
    q = statistics.quantiles(times, n=10, method="inclusive")
    return q[1], statistics.median(times), q[7]


def interleaved_times(fns, device, warmup, repeats):
    """{name: (p20, p50, p80)}: the impls take turns, one call each per round, so a machine whose load
    drifts (shared CI cores) weighs on all of them alike."""
    times = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, (fn, setup) in fns.items():
            ms = time_ms(fn, device, warmup=0, repeats=1, setup=setup)[1]
            if i >= warmup:
                times[name].append(ms)
    return {name: quantiles(t) for name, t in times.items()}


def cuda_peak(fn, inputs, device, kw):
    x, w, g, b, (rm, rv) = inputs
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    y = fn(x, w, g, b, rm, rv, **kw)
    torch.autograd.backward(y, torch.ones_like(y))
    sync(device)
    for t in (x, w, g, b):
        t.grad = None
    return torch.cuda.max_memory_allocated(device) - base


def cpu_peak(impl, case):
    """Peak RSS growth of one fwd+bwd, measured in a fresh process (RSS peaks are per process)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--mem-child", impl, repr(case)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def mem_child(impl, case):
    inputs = make_inputs(case, torch.device("cpu"), getattr(torch, case["dtype"]))
    before = current_rss_bytes()
    x, w, g, b, (rm, rv) = inputs
    fn = block_impls(False)[impl]
    y = fn(x, w, g, b, rm, rv, **conv_kwargs(case))
    torch.autograd.backward(y, torch.ones_like(y))
    print(max(0, peak_rss_bytes() - before))


def copy_bandwidth_gbps(device):
    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, repeats=10)[1]
    return 2 * src.numel() / ms / 1e6


def fused_traffic_bytes(case, dtype):
    kw = conv_kwargs(case)
    p = (case["H"] + 2 * kw["padding"] - case.get("R", 3)) // kw["stride"] + 1
    q = (case["W"] + 2 * kw["padding"] - case.get("R", 3)) // kw["stride"] + 1
    x_elems = case["N"] * case["C"] * case["H"] * case["W"]
    z_elems = case["N"] * case.get("K", case["C"]) * p * q
    return (x_elems + 3 * z_elems) * torch.finfo(dtype).bits // 8  # x read, z write, z read, y write


def run_blocks(cases, device, dtype, with_compile, repeats, records, out):
    impls = block_impls(with_compile)
    peak_bw = copy_bandwidth_gbps(device) if device.type == "cuda" else None
    for case in cases:
        kw = conv_kwargs(case)
        first = len(records)
        inputs = make_inputs(case, device, dtype)
        per_impl = {name: mode_fns(fn, inputs, kw) for name, fn in impls.items()}
        mem = {name: (cuda_peak(fn, inputs, device, kw) if device.type == "cuda"
                      else None if name == "compile" else cpu_peak(name, case))
               for name, fn in impls.items()}
        for mode in ("fwd", "bwd", "fwdbwd"):
            times = interleaved_times({name: fns[mode] for name, fns in per_impl.items()}, device, 3, repeats)
            for name, t in times.items():
                extra = {}
                if name == "wslfast" and mode == "fwd" and peak_bw is not None:
                    gbps = fused_traffic_bytes(case, dtype) / t[1] / 1e6
                    extra = dict(achieved_gbps=round(gbps, 1), copy_gbps=round(peak_bw, 1))
                records.append(record(BENCH, case, name, mode, t, mem[name] if mode == "fwdbwd" else None, device,
                                      **extra))
            print(f"{case['model']} stage {case['stage']} N={case['N']} {mode:6s} "
                  + " ".join(f"{name} {t[1]:8.2f} ms" for name, t in times.items()), flush=True)
        append_results(records[first:], out, device)  # as each case ends: a cut-short run keeps its cases
        del inputs, per_impl
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_step(device, records, repeats):
    if device.type == "cuda":
        name, batch, size, autocast = "resnext101_32x8d", 64, 224, torch.bfloat16
    else:
        name, batch, size, autocast = "resnext_tiny", 16, 128, None
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    model = create_model(name).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step(fused):
        def run(_=None):
            model.set_fused(fused)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run, None

    # One model, switched between the fused op and plain layers each round (same weights either way).
    times = interleaved_times({"wslfast": step(True), "eager": step(False)}, device, 2, repeats)
    for impl, t in times.items():
        case = dict(model=name, N=batch, H=size, W=size, dtype="bf16-autocast" if autocast else "float32",
                    threads=torch.get_num_threads(),
                    fused=impl == "wslfast")
        records.append(record(BENCH + "_step", case, impl, "step", t, None, device))
        print(f"step {name} batch {batch} {impl}: {t[1]:.1f} ms", flush=True)
    print(f"step speed-up fused vs unfused: {times['eager'][1] / times['wslfast'][1]:.2f}x", flush=True)


def summarize(records):
    by = {(str(r["case"]), r["impl"], r["mode"]): r["ms_p50"] for r in records if r["bench"] == BENCH}
    for (case, impl, mode), ms in sorted(by.items()):
        if impl == "wslfast":
            ratios = [f"{base} {by[(case, base, mode)] / ms:.2f}x" for base in ("eager", "compile")
                      if (case, base, mode) in by]
            print(f"{mode:6s} {case}: wslfast {ms:.2f} ms; speed-up vs " + ", ".join(ratios))


def parse_ints(text, flag):
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise SystemExit(f"{flag}: values must be >= 1, got {text!r}")
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-step", action="store_true")
    ap.add_argument("--no-changed", action="store_true", help="skip the changed-kernel cases (GPU)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (torch.set_num_threads); 1 gives steadier numbers on busy shared cores")
    ap.add_argument("--widths", default=None, help="channels per group of the 32xCd models, e.g. 8,16 "
                    "(default: 4,8,16 on CUDA, 4 on CPU)")
    ap.add_argument("--batches", default=None, help="e.g. 32,128 (default: 32,128 on CUDA, 8 on CPU)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--mem-child", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        import ast
        return mem_child(args.mem_child[0], ast.literal_eval(args.mem_child[1]))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    widths = parse_ints(args.widths, "--widths") or ((4, 8, 16) if gpu else (4,))
    batches = parse_ints(args.batches, "--batches") or ((32, 128) if gpu else (8,))
    dtype, repeats = (torch.bfloat16, 20) if gpu else (torch.float32, 15)
    cases = stage_cases(widths, batches, dtype)
    repeats = args.repeats or repeats
    if gpu and not args.no_changed:
        cases += changed_cases(dtype)
    records = []
    run_blocks(cases, device, dtype, not args.no_compile, repeats, records, args.out)
    if not args.no_step:
        step_records = []
        run_step(device, step_records, max(3, repeats // 3))
        append_results(step_records, args.out, device)
        records += step_records
    summarize(records)
    print("results appended to", args.out or os.path.join("benchmarks", "results", f"{device_label(device)}.json"))


if __name__ == "__main__":
    main()
