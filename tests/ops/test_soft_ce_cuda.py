"""CUDA kernels of the soft-target cross-entropy against the float64 CPU reference (GPU machine only)."""
import random

import pytest
import torch

from wslfast.ops import SparseTargets, linear_soft_target_cross_entropy, soft_target_cross_entropy

from soft_ce_reference import dense_target, random_rows, reference_loss

pytestmark = pytest.mark.cuda


def case(B, V, seed, k_max=8, scale=3.0):
    rows, weights = random_rows(B, V, min(V, k_max), random.Random(seed))
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return logits, rows, weights


@pytest.mark.parametrize("B,V", [(1, 1), (2, 3), (7, 13), (33, 1531), (64, 17011), (5, 131073), (1, 1_000_003)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_reference_within_pytorchs_own_error(B, V, dtype):
    logits, rows, weights = case(B, V, seed=B + V)
    dense = dense_target(rows, V, weights)
    truth_z = logits.clone().requires_grad_()
    truth = reference_loss(truth_z, dense, "none")
    truth.sum().backward()
    t = SparseTargets.from_lists(rows, V, weights=weights, device="cuda")
    z = logits.to("cuda", dtype).requires_grad_()
    ours = soft_target_cross_entropy(z, t, "none")
    ours.sum().backward()
    tz = logits.to("cuda", dtype).requires_grad_()
    theirs = -(dense.to("cuda", dtype) * torch.log_softmax(tz, -1)).sum(-1)
    theirs.sum().backward()
    eps = torch.finfo(dtype).eps
    tol = 1e-5 if dtype == torch.float32 else 0
    err = (ours.double().cpu() - truth).abs().max()
    assert err <= 2 * (theirs.double().cpu() - truth).abs().max() + eps * 4 + tol
    gerr = (z.grad.double().cpu() - truth_z.grad).abs().max()
    assert gerr <= 2 * (tz.grad.double().cpu() - truth_z.grad).abs().max() + eps * 1e-2 + tol
    assert z.grad.dtype == dtype


def test_cuda_equals_cpu_kernel_float32_and_unaligned_rows():
    logits, rows, weights = case(9, 1001, seed=1)  # odd V: rows are not 16-byte aligned
    t_cpu = SparseTargets.from_lists(rows, 1001, weights=weights)
    t_gpu = t_cpu.to("cuda")
    for z in (logits.float(), logits.float()[:, :1001]):
        zc, zg = z.clone().requires_grad_(), z.cuda().requires_grad_()
        lc, lg = soft_target_cross_entropy(zc, t_cpu, "sum"), soft_target_cross_entropy(zg, t_gpu, "sum")
        torch.testing.assert_close(lg.cpu(), lc, rtol=1e-5, atol=1e-4)
        lc.backward()
        lg.backward()
        torch.testing.assert_close(zg.grad.cpu(), zc.grad, rtol=1e-5, atol=1e-7)


def test_cuda_empty_rows_and_extreme_logits():
    V = 4096
    logits = torch.full((3, V), -1e4)
    logits[0, 7] = 1e4
    t = SparseTargets.from_lists([[7, 8], [], [0]], V, device="cuda")
    z = logits.cuda().requires_grad_()
    loss = soft_target_cross_entropy(z, t, "none")
    ref = reference_loss(logits.double(), dense_target([[7, 8], [], [0]], V), "none")
    torch.testing.assert_close(loss.double().cpu(), ref, rtol=1e-6, atol=1e-3)
    loss.sum().backward()
    assert torch.all(z.grad[1] == 0) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_linear_matches_cpu_reference(dtype):
    B, D, V = 64, 128, 5003
    rows, _ = random_rows(B, V, 5, random.Random(3))
    g = torch.Generator().manual_seed(3)
    f, w, b = torch.randn(B, D, generator=g), torch.randn(V, D, generator=g) / D ** 0.5, torch.randn(V, generator=g)
    t = SparseTargets.from_lists(rows, V, device="cuda")
    args = [x.to("cuda", dtype).requires_grad_() for x in (f, w, b)]
    loss = linear_soft_target_cross_entropy(*args, t, chunk_size=1000)
    loss.backward()
    ref_args = [x.double().requires_grad_() for x in (f, w, b)]
    ref = reference_loss(torch.nn.functional.linear(*ref_args), dense_target(rows, V), "mean")
    ref.backward()
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(loss.double().cpu(), ref, rtol=tol, atol=tol)
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad.double().cpu(), r.grad, rtol=tol, atol=tol)


def test_cuda_linear_memory_is_chunk_bounded():
    B, D, V, chunk = 512, 256, 65536, 4096
    rows, _ = random_rows(B, V, 3, random.Random(0))
    t = SparseTargets.from_lists(rows, V, device="cuda")
    f = torch.randn(B, D, device="cuda", requires_grad=True)
    w = torch.randn(V, D, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    linear_soft_target_cross_entropy(f, w, None, t, chunk_size=chunk).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    full_logits = B * V * 4
    assert extra < full_logits / 2, (extra, full_logits)


def test_cuda_opcheck_and_compile():
    logits, rows, _ = case(6, 257, seed=2)
    t = SparseTargets.from_lists(rows, 257, device="cuda")
    z = logits.float().cuda().requires_grad_()
    torch.library.opcheck(torch.ops.wslfast.soft_ce.default, (z, t.indices, t.offsets, t.weights))
    step = torch.compile(lambda z, t: soft_target_cross_entropy(z * 2, t), fullgraph=True)
    torch.testing.assert_close(step(z, t), soft_target_cross_entropy(z * 2, t))
