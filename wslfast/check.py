"""Self-check of the installed wslfast build on this machine: `python -m wslfast.check`.

Runs every kernel of the compiled extension on each device present (the CPU, and each CUDA device when the
build has CUDA) on small and odd shapes against a float64 reference, then times each against stock PyTorch
on one realistic shape, and prints one table:

    kernel  device  max error  pass  ours ms  stock ms  ratio (stock / ours: above 1 = faster)

The exit status is 1 if any check failed (0 otherwise), so scripts can rely on it. On a machine without a
GPU the CUDA rows are skipped and say so. Options: --device cpu|cuda|all, --no-timing, --quick (small
timing shapes), --threads N (CPU threads).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import build_info
from .ops import SparseTargets, conv_bn_relu, linear_soft_target_cross_entropy, soft_target_cross_entropy

# Largest error allowed, relative to the reference's largest magnitude, by the precision the kernel runs in.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, "tf32": 2e-2, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@dataclass
class Row:
    kernel: str
    device: str
    error: float | None = None
    ok: bool | None = None  # None: skipped
    ours_ms: float | None = None
    stock_ms: float | None = None
    note: str = ""


def rel_err(got, want) -> float:
    """max |got - want| / max |want| over several tensors (NaN where either holds a NaN the other does not)."""
    worst = 0.0
    for a, b in zip(got, want):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if not torch.equal(torch.isnan(a), torch.isnan(b)):
            return float("nan")
        a, b = torch.nan_to_num(a), torch.nan_to_num(b)
        scale = max(b.abs().max().item(), 1e-30) if b.numel() else 1.0
        worst = max(worst, (a - b).abs().max().item() / scale if b.numel() else 0.0)
    return worst


def timed(fn, device: torch.device, reps: int) -> float:
    """Median milliseconds of fn() over reps after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---- soft-target cross-entropy ----

def targets_for(B, V, seed, device):
    rng = random.Random(seed)
    rows = [[rng.randrange(V) for _ in range(rng.randint(0, min(V, 8)))] for _ in range(B)]
    return SparseTargets.from_lists(rows, V, device=device)


def soft_ce_ours(z, t):
    return soft_target_cross_entropy(z, t, "sum")


def soft_ce_stock(z, dense):
    return -(dense * torch.log_softmax(z.float(), -1)).sum()


def check_soft_ce(device, dtype):
    errs = []
    for B, V in [(1, 1), (2, 3), (7, 13), (33, 1531), (5, 17011)]:
        t = targets_for(B, V, B * V, device)
        z64 = torch.randn(B, V, dtype=torch.float64, generator=torch.Generator().manual_seed(V)) * 3
        z = z64.to(device, dtype).requires_grad_()
        loss = soft_ce_ours(z, t)
        loss.backward()
        ref_z = z.detach().double().cpu().requires_grad_()
        ref = -(t.to("cpu").to_dense(torch.float64) * torch.log_softmax(ref_z, -1)).sum()
        ref.backward()
        errs.append(rel_err([loss, z.grad], [ref, ref_z.grad]))
    return max(errs)


def time_soft_ce(device, dtype, quick, reps):
    B, V = (16, 1500) if quick else ((32, 17000) if device.type == "cpu" else (64, 131072))
    t = targets_for(B, V, 0, device)
    dense = t.to_dense(torch.float32)
    z = torch.randn(B, V, device=device, dtype=dtype, requires_grad=True)

    def ours():
        soft_ce_ours(z, t).backward()

    def stock():
        soft_ce_stock(z, dense).backward()
    return timed(ours, device, reps), timed(stock, device, reps), f"B={B} V={V}"


def check_linear_soft_ce(device, dtype):
    B, D, V = 9, 24, 1001
    t = targets_for(B, V, 3, device)
    g = torch.Generator().manual_seed(3)
    f, w, b = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(V, D, generator=g,
                                                                                 dtype=torch.float64) / 5, None
    ours = [x.to(device, dtype).requires_grad_() for x in (f, w)]
    loss = linear_soft_target_cross_entropy(ours[0], ours[1], b, t, "sum", chunk_size=256)
    loss.backward()
    ref_in = [x.detach().double().cpu().requires_grad_() for x in ours]
    ref = -(t.to("cpu").to_dense(torch.float64) * torch.log_softmax(ref_in[0] @ ref_in[1].T, -1)).sum()
    ref.backward()
    return rel_err([loss, ours[0].grad, ours[1].grad], [ref, ref_in[0].grad, ref_in[1].grad])


# ---- fused conv + BN + ReLU ----

CONV_CASES = [  # N, C, H, W, K, groups, kernel, stride
    (2, 16, 7, 9, 16, 2, 3, 2), (3, 8, 5, 5, 12, 1, 3, 1), (2, 32, 6, 6, 64, 1, 1, 1), (1, 128, 9, 7, 128, 32, 3, 1),
]


def conv_case(case, seed):
    N, C, H, W, K, G, R, stride = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(K, C // G, R, R, generator=g, dtype=torch.float64) / (C // G * R * R) ** 0.5
    gamma = 1 + 0.2 * torch.randn(K, generator=g, dtype=torch.float64)
    beta = 0.2 * torch.randn(K, generator=g, dtype=torch.float64)
    return x, w, gamma, beta, dict(stride=stride, padding=R // 2, groups=G)


def conv_bn_once(x, w, gamma, beta, kw, device, dtype, training, stock=False):
    coef = torch.float64 if dtype == torch.float64 else torch.float32
    xs = x.to(device, dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    ws = w.to(device, dtype).requires_grad_()
    gs, bs = gamma.to(device, coef).requires_grad_(), beta.to(device, coef).requires_grad_()
    K = w.shape[0]
    rm, rv = torch.zeros(K, device=device, dtype=coef), torch.ones(K, device=device, dtype=coef)
    if stock:
        y = F.relu(F.batch_norm(F.conv2d(xs, ws, None, kw["stride"], kw["padding"], 1, kw["groups"]), rm, rv,
                                gs, bs, training, 0.1, 1e-5))
    else:
        y = conv_bn_relu(xs, ws, gs, bs, rm, rv, training=training, **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(device, y.dtype)
    y.backward(dy)
    return [y, xs.grad, ws.grad, gs.grad, bs.grad, rm, rv]


def check_conv_bn(device, dtype, training):
    errs = []
    for i, case in enumerate(CONV_CASES):
        x, w, gamma, beta, kw = conv_case(case, i)
        # Round to the storage dtype first so both sides see the same inputs.
        x, w = x.to(dtype).double(), w.to(dtype).double()
        got = conv_bn_once(x, w, gamma, beta, kw, device, dtype, training)
        want = conv_bn_once(x, w, gamma, beta, kw, torch.device("cpu"), torch.float64, training, stock=True)
        errs.append(rel_err(got, want))
    return max(errs)


def time_conv_bn(device, dtype, quick, reps):
    N = 2 if quick else (8 if device.type == "cpu" else 64)
    HW = 28 if quick else 56
    x, w, gamma, beta, kw = conv_case((N, 128, HW, HW, 128, 32, 3, 1), 0)
    ours = timed(lambda: conv_bn_once(x, w, gamma, beta, kw, device, dtype, True), device, reps)
    stock = timed(lambda: conv_bn_once(x, w, gamma, beta, kw, device, dtype, True, stock=True), device, reps)
    return ours, stock, f"N={N} C=128 {HW}x{HW} g=32"


# ---- driver ----

def with_impl(impl, fn, *args):
    """fn(*args) with WSLFAST_CONV_BN_IMPL = impl (the CUDA glue reads it on every call)."""
    old = os.environ.get("WSLFAST_CONV_BN_IMPL")
    os.environ["WSLFAST_CONV_BN_IMPL"] = impl
    try:
        return fn(*args)
    finally:
        if old is None:
            os.environ.pop("WSLFAST_CONV_BN_IMPL")
        else:
            os.environ["WSLFAST_CONV_BN_IMPL"] = old


def device_rows(device: torch.device, timing: bool, quick: bool, reps: int) -> list[Row]:
    rows = []
    dtypes = [torch.float32] + ([torch.float64] if device.type == "cpu" else [torch.bfloat16])
    timed_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16  # what training runs in there
    # float32 convolutions on CUDA run the tensor cores in TF32 (as cuDNN by default).
    def conv_tol(dt):
        return TOLERANCE["tf32"] if (device.type == "cuda" and dt == torch.float32) else TOLERANCE[dt]
    checks = []
    for dt in dtypes:
        name = str(dt).replace("torch.", "")
        checks.append((f"soft_ce fwd+bwd {name}", lambda dt=dt: check_soft_ce(device, dt), TOLERANCE[dt],
                       (lambda dt=dt: time_soft_ce(device, dt, quick, reps)) if dt == timed_dtype else None))
        checks.append((f"linear_soft_ce fwd+bwd {name}", lambda dt=dt: check_linear_soft_ce(device, dt),
                       TOLERANCE[dt], None))
        # On CUDA each convolution implementation separately (WSLFAST_CONV_BN_IMPL): tensor-core and simple.
        for impl in (("fast", "simple") if device.type == "cuda" else ("auto",)):
            for training in (True, False):
                mode = "train" if training else "eval"
                label = f"conv_bn_relu {mode} fwd+bwd {name}" + ("" if impl == "auto" else f" {impl}")
                checks.append((label, lambda dt=dt, tr=training, im=impl: with_impl(im, check_conv_bn, device, dt, tr),
                               conv_tol(dt) if impl != "simple" else TOLERANCE[dt],
                               (lambda dt=dt, im=impl: with_impl(im, time_conv_bn, device, dt, quick, reps))
                               if training and dt == timed_dtype and impl != "simple" else None))
    for name, check, tol, timer in checks:
        row = Row(name, str(device))
        try:
            row.error = check()
            row.ok = row.error == row.error and row.error <= tol
            if not row.ok:
                row.note = f"tolerance {tol:g}"
            if timer is not None and timing:
                row.ours_ms, row.stock_ms, shape = timer()
                row.note = (row.note + " " if row.note else "") + f"timed at {shape}"
        except Exception as err:  # one broken kernel must not hide the others
            row.ok, row.note = False, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        rows.append(row)
    return rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row], out=None) -> None:
    out = out or sys.stdout
    head = (f"{'kernel':<44} {'device':<8} {'max error':>10} {'pass':>5} {'ours ms':>9} {'stock ms':>9} "
            f"{'ratio':>6}  note")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        ok = "skip" if r.ok is None else ("yes" if r.ok else "FAIL")
        ratio = r.stock_ms / r.ours_ms if r.ours_ms and r.stock_ms else None
        print(f"{r.kernel:<44} {r.device:<8} {fmt(r.error, '10.2e'):>10} {ok:>5} {fmt(r.ours_ms, '9.3f'):>9} "
              f"{fmt(r.stock_ms, '9.3f'):>9} {fmt(ratio, '6.2f'):>6}  {r.note}", file=out)


def cpu_threads_row() -> Row:
    """Whether our CPU kernels use torch's threads: a build without the OpenMP torch runs on leaves
    at::parallel_for serial, so every CPU kernel would use one core (setup.py's openmp_flags)."""
    from . import _C

    want = min(torch.get_num_threads(), 64)
    got = _C.cpu_parallel_threads(64)
    return Row("parallel CPU kernels", "cpu", ok=got == want,
               note=f"at::parallel_for ran on {got} of {want} threads")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wslfast.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--no-timing", action="store_true", help="correctness only")
    p.add_argument("--quick", action="store_true", help="small timing shapes")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = build_info()
    print(f"wslfast {info['version']} built against torch {info['torch']} (running {info['torch_runtime']}), "
          f"CUDA compiled: {info['cuda_compiled']} {','.join(info['cuda_archs'])}; "
          f"{torch.get_num_threads()} CPU threads")
    rows = []
    if args.device in ("cpu", "all"):
        rows.append(cpu_threads_row())
        rows += device_rows(torch.device("cpu"), not args.no_timing, args.quick, args.reps)
    if args.device in ("cuda", "all"):
        if not torch.cuda.is_available():
            rows.append(Row("all CUDA kernels", "cuda", note="skipped: no CUDA device on this machine"))
        elif not info["cuda_compiled"]:
            rows.append(Row("all CUDA kernels", "cuda", ok=False,
                            note="a CUDA device is present but this build has no CUDA kernels: reinstall with nvcc"))
        else:
            for i in range(torch.cuda.device_count()):
                with torch.cuda.device(i):
                    rows += device_rows(torch.device("cuda", i), not args.no_timing, args.quick, args.reps)
    print_table(rows)
    failed = [r for r in rows if r.ok is False]
    print(f"{len(rows) - len(failed)} of {len(rows)} rows passed or skipped; {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
