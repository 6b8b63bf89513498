"""Every wslfast kernel once, on small inputs, checked against the same op on CPU: the driver for
compute-sanitizer on the GPU machine (scripts/gpu_session.sh), small enough for racecheck.

    python scripts/cuda_kernel_tour.py                 # on CUDA
    compute-sanitizer --tool memcheck --error-exitcode 9 python scripts/cuda_kernel_tour.py
    python scripts/cuda_kernel_tour.py --device cpu    # the same calls on CPU (checks this script)

Covers: soft-target CE forward/backward (float32, bfloat16; short and long rows, empty rows, duplicate
ids; one block per row and the split-vocabulary path; on CUDA a direct op call with broken CSR targets)
and its fused-linear variant; conv+BN+ReLU training and eval, forward and backward, with and without
ReLU and with a residual before the ReLU, in bfloat16 and float32 (TF32 on the tensor cores), for each convolution implementation (simple,
tensor-core) on 2, 4 and 8 channels per group (4 with an odd and an even width: the forward's pixel pairs), stride
2, odd sizes and a 1x1 conv; the running-statistics update. Exits 1 on the first mismatch.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wslfast.ops import conv_bn_relu, linear_soft_target_cross_entropy, soft_target_cross_entropy  # noqa: E402
from wslfast.sparse_targets import SparseTargets  # noqa: E402


def close(name, got, want, rel):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    err = (got - want).abs().max().item() / (want.abs().max().item() + 1e-12)
    if not err <= rel:  # also catches NaN
        print(f"MISMATCH {name}: max error {err:.2e} of its scale (allowed {rel:.0e})", flush=True)
        sys.exit(1)
    print(f"ok {name} ({err:.1e})", flush=True)


def fresh(t, device, dtype, memory_format=torch.contiguous_format):
    """A new leaf copy that requires grad (never the caller's tensor, even where .to() would not copy)."""
    return t.detach().to(device, dtype).clone(memory_format=memory_format).requires_grad_()


def soft_ce_cases(device):
    gen = torch.Generator().manual_seed(0)
    # splits: blocks per row of the CUDA kernels (the split-vocabulary path at 3; CPU ignores it)
    # V = 1531 "view": logits one column into a wider tensor (rows start off the 16-byte grid, row stride V + 1),
    # the peeled vector path; "mean" and "none" as well as "sum" (the finish kernel's three ways)
    for V, splits, view, red in ((1531, "1", True, "mean"), (17011, "1", False, "none"), (17011, "3", True, "sum")):
        os.environ["WSLFAST_SOFT_CE_SPLITS"] = splits
        rows = [[], [3], [1, 1, 5], list(range(0, V, max(1, V // 40)))]
        targets = SparseTargets.from_lists(rows, num_classes=V)
        logits = torch.randn(len(rows), V + view, generator=gen) * 3
        for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            outs = {}
            for dev in ("cpu", device):
                leaf = fresh(logits, dev, dtype)
                z = leaf[:, 1:] if view else leaf
                loss = soft_target_cross_entropy(z, targets.to(dev), red)
                (loss.sum() if red == "none" else loss).backward()
                outs[dev] = (loss, leaf.grad)
            close(f"soft_ce V={V} splits={splits} {dtype} loss", outs[device][0], outs["cpu"][0], rel)
            close(f"soft_ce V={V} splits={splits} {dtype} grad", outs[device][1], outs["cpu"][1], rel)
    os.environ.pop("WSLFAST_SOFT_CE_SPLITS")
    if device != "cpu":
        # A direct op call with broken CSR (unsorted row 0, offsets past nnz in row 1): NaN rows, and under
        # memcheck no read outside the targets (the CPU op refuses these with an error instead).
        z = torch.randn(2, 17011, device=device, requires_grad=True)
        ids, offs = torch.tensor([9, 2, 4], device=device), torch.tensor([0, 2, 1 << 40], device=device)
        loss, _ = torch.ops.wslfast.soft_ce(z, ids, offs, torch.ones(3, device=device))
        loss.sum().backward()
        if not (torch.isnan(loss).all() and torch.isnan(z.grad).all()):
            print("MISMATCH soft_ce broken CSR: expected NaN rows", flush=True)
            sys.exit(1)
        print("ok soft_ce broken CSR gives NaN rows", flush=True)
    targets = SparseTargets.from_lists([[0, 7], [], [99], [5, 5, 6]], num_classes=100)
    feats, weight, bias = (torch.randn(4, 24, generator=gen), torch.randn(100, 24, generator=gen) * 0.2,
                           torch.randn(100, generator=gen))
    outs = {}
    for dev in ("cpu", device):
        leaves = [fresh(t, dev, torch.float32) for t in (feats, weight, bias)]
        loss = linear_soft_target_cross_entropy(*leaves, targets.to(dev), "mean", chunk_size=32)
        loss.backward()
        outs[dev] = [loss] + [t.grad for t in leaves]
    for name, a, b in zip(("loss", "grad_features", "grad_weight", "grad_bias"), outs[device], outs["cpu"]):
        close(f"linear_soft_ce {name}", a, b, 1e-4)


CONV_CASES = [  # (N, C, H, W, K, groups, kernel, stride)
    (2, 64, 7, 9, 64, 32, 3, 1),     # 2 channels per group: simple kernels only
    (2, 128, 9, 7, 128, 32, 3, 1),   # 4 per group, odd width: tensor-core 8-byte loads, one pixel a GEMM row
    (2, 128, 8, 8, 128, 32, 3, 1),   # 4 per group, even width: pixel pairs in the forward (two pixels a row)
    (3, 256, 8, 8, 256, 32, 3, 2),   # 8 per group, stride 2
    (2, 64, 5, 6, 128, 1, 1, 1),     # 1x1, groups 1
]


def conv_bn_cases(device, impls):
    gen = torch.Generator().manual_seed(1)
    for n, c, h, w_, k, groups, kernel, stride in CONV_CASES:
        x = torch.randn(n, c, h, w_, generator=gen)
        w = torch.randn(k, c // groups, kernel, kernel, generator=gen) / (c // groups * kernel ** 2) ** 0.5
        g, b = 1 + 0.2 * torch.randn(k, generator=gen), 0.2 * torch.randn(k, generator=gen)
        rm, rv = 0.1 * torch.randn(k, generator=gen), 1 + 0.2 * torch.rand(k, generator=gen)
        kw = dict(stride=stride, padding=kernel // 2, groups=groups)
        x, w = x.to(torch.bfloat16).float(), w.to(torch.bfloat16).float()  # exact in every storage dtype
        dtypes = (torch.bfloat16, torch.float32) if device != "cpu" else (torch.float32,)
        p, q = (h + 2 * (kernel // 2) - kernel) // stride + 1, (w_ + 2 * (kernel // 2) - kernel) // stride + 1
        res = torch.randn(n, k, p, q, generator=gen).to(torch.bfloat16).float()
        for training in (True, False):
            for relu, r in ((True, None), (True, res), (False, None)):
                want = run(x, w, g, b, rm, rv, "cpu", torch.float64, training, relu, kw, r)
                for impl in impls:
                    if impl == "fast" and ((c // groups) % 4 or (k // groups) % 4):
                        continue
                    os.environ["WSLFAST_CONV_BN_IMPL"] = impl
                    for dtype in dtypes:
                        got = run(x, w, g, b, rm, rv, device, dtype, training, relu, kw, r)
                        # float32: full precision on CPU and in the simple kernels, TF32 operands in "fast".
                        rel = 1e-4 if dtype == torch.float32 and impl != "fast" else 3e-2
                        tag = (f"conv_bn {impl} {str(dtype)[6:]} {(n, c, h, w_, k, groups, kernel, stride)} "
                               f"training={training} relu={relu} residual={r is not None}")
                        for name, a, ref in zip(("y", "grad_x", "grad_w", "grad_gamma", "grad_beta", "running_mean",
                                                 "running_var", "grad_residual"), got, want):
                            close(f"{tag} {name}", a, ref, rel)
    os.environ.pop("WSLFAST_CONV_BN_IMPL", None)


def run(x, w, g, b, rm, rv, device, dtype, training, relu, kw, residual=None):
    xs = fresh(x, device, dtype, torch.channels_last)
    rs = None if residual is None else fresh(residual, device, dtype, torch.channels_last)
    ws = fresh(w, device, dtype)
    coef = torch.float64 if dtype == torch.float64 else torch.float32
    gs, bs = fresh(g, device, coef), fresh(b, device, coef)
    rms, rvs = rm.to(device, coef).clone(), rv.to(device, coef).clone()
    y = conv_bn_relu(xs, ws, gs, bs, rms, rvs, training=training, relu=relu, residual=rs, **kw)
    dy = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape).to(device, y.dtype)
    y.backward(dy)
    return [y, xs.grad, ws.grad, gs.grad, bs.grad, rms, rvs] + ([] if rs is None else [rs.grad])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", choices=("soft_ce", "conv_bn"), default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available (use --device cpu to check the script itself)")
    impls = ("simple", "fast") if args.device != "cpu" else ("auto",)
    if args.only in (None, "soft_ce"):
        soft_ce_cases(args.device)
    if args.only in (None, "conv_bn"):
        conv_bn_cases(args.device, impls)
    if args.device != "cpu":
        torch.cuda.synchronize()
    print("all kernels ran and matched", flush=True)


if __name__ == "__main__":
    main()
