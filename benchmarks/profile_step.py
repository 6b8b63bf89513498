"""Where a training step's time goes: torch.profiler over a few SGD steps of a model (--arch; a ResNeXt by
default) with the paper's loss (softmax over the vocabulary against 1/k targets), self time grouped by
kind of op, largest first.

    python benchmarks/profile_step.py                        # CPU: resnext_tiny, batch 16, 128 px, fp32
    python benchmarks/profile_step.py --device cuda          # resnext101_32x16d, batch 64, 224 px, bf16
    python benchmarks/profile_step.py --unfused              # the same model in plain PyTorch layers
    python benchmarks/profile_step.py --trace step.json      # also a Chrome trace of the profiled steps

Time is device (kernel) time on CUDA, each kernel charged to the op that launched it, and self CPU time
on CPU. The kinds: the fused conv+BN+ReLU and soft-target CE of wslfast, then ATen's convolutions,
batch norm, elementwise (ReLU, add, ...), pooling, matmul, the optimizer, copies/casts, memory set-up,
and everything else. Writes one record per kind (ms per step, share) to the results file
(benchmarks/results/<device>.json by default; --out elsewhere) and prints the table.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import append_results, record, sync, synthetic_hashtag_batch  # noqa: E402
from wslfast.models import create_model  # noqa: E402
from wslfast.nn import SoftTargetCrossEntropy  # noqa: E402

# (kind, substrings of the op name); the first match wins, so specific names come first.
KINDS = [
    ("wslfast conv+BN+ReLU", ("wslfast::conv_bn", "wslfast::bn_update")),
    ("wslfast soft-target CE", ("wslfast::soft_ce", "wslfast::linear_soft_ce")),
    ("convolution", ("conv", "cudnn", "mkldnn_convolution", "slow_conv")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("pooling", ("pool",)),
    ("matmul / linear", ("mm", "matmul", "linear", "addmm", "bmm")),
    ("optimizer", ("Optimizer.step", "_foreach", "sgd")),
    ("copies and casts", ("copy_", "to_copy", "_to_copy", "contiguous", "clone")),
    ("memory set-up", ("empty", "zero_", "zeros", "fill_", "resize_")),
    ("elementwise", ("relu", "threshold", "add", "mul", "div", "sub", "where", "sum", "mean", "neg", "exp",
                     "log", "clamp", "sqrt", "rsqrt", "cross_entropy", "softmax")),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k.lower() in low for k in keys):
            return kind
    return "other"


def profile_step(arch, batch, size, num_classes, device, fused, amp, steps, trace=None):
    model = create_model(arch, num_classes=num_classes, fused=fused).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = SoftTargetCrossEntropy()
    images, targets = synthetic_hashtag_batch(batch, size, num_classes, device)
    images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(images), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: cuDNN/oneDNN plans, allocator pools, lazy CUDA modules
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    if trace:
        prof.export_chrome_trace(trace)
    use_device = device.type == "cuda"
    per_kind, per_op = defaultdict(float), defaultdict(float)
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CPU:
            continue  # kernels are counted through the op that launched them
        us = evt.self_device_time_total if use_device else evt.self_cpu_time_total
        if us <= 0:
            continue
        per_kind[kind_of(evt.key)] += us / steps / 1e3
        per_op[evt.key] += us / steps / 1e3
    return dict(per_kind), dict(per_op)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default=None, help="default: resnext101_32x16d on CUDA, resnext_tiny on CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    ap.add_argument("--image-size", type=int, default=None, help="default: 224 on CUDA, 128 on CPU")
    ap.add_argument("--num-classes", type=int, default=None, help="default: 17000 on CUDA, 1000 on CPU")
    ap.add_argument("--unfused", action="store_true", help="plain PyTorch conv/BN/ReLU layers")
    ap.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None, help="default: bf16 on CUDA")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--trace", default=None, help="write a Chrome trace here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    arch = args.arch or ("resnext101_32x16d" if gpu else "resnext_tiny")
    batch = args.batch_size or (64 if gpu else 16)
    size = args.image_size or (224 if gpu else 128)
    num_classes = args.num_classes or (17000 if gpu else 1000)
    amp_name = args.amp or ("bf16" if gpu else "none")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp_name]
    fused = not args.unfused

    per_kind, per_op = profile_step(arch, batch, size, num_classes, device, fused, amp, args.steps, args.trace)
    total = sum(per_kind.values())
    clock = "device" if gpu else "CPU self"
    print(f"{arch} batch {batch} {size}px {num_classes} classes, {'fused' if fused else 'unfused'}, amp {amp_name}: "
          f"{total:.1f} ms of {clock} time per step")
    case = dict(model=arch, N=batch, H=size, W=size, classes=num_classes, amp=amp_name, fused=fused, clock=clock)
    records = []
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        share = ms / total if total else 0.0
        print(f"  {kind:24s} {ms:9.2f} ms  {100 * share:5.1f}%")
        records.append(record("profile_step", dict(case, kind=kind), "wslfast" if fused else "eager", "step",
                              (ms, ms, ms), None, device, share=round(share, 4)))
    print("largest ops:")
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name[:60]:60s} {ms:9.2f} ms  {100 * ms / total:5.1f}%")
    print("results appended to", append_results(records, args.out, device))


if __name__ == "__main__":
    main()
