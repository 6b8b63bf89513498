"""soft_target_cross_entropy against the float64 dense reference (tests/ops/soft_ce_reference.py)."""
import random

import pytest
import torch

from wslfast.nn import SoftTargetCrossEntropy
from wslfast.ops import SparseTargets, soft_target_cross_entropy

from soft_ce_reference import dense_target, random_rows, reference_loss

SHAPES = [(1, 1), (1, 2), (3, 7), (5, 13), (17, 31), (8, 257), (4, 1531), (2, 17011)]


def make_case(B, V, seed, weighted=False, k_max=None, scale=3.0, dtype=torch.float32, device="cpu"):
    gen = random.Random(seed)
    rows, weights = random_rows(B, V, min(V, 12) if k_max is None else k_max, gen)
    targets = SparseTargets.from_lists(rows, V, weights=weights if weighted else None, device=device)
    dense = dense_target(rows, V, weights if weighted else None)
    logits = (torch.randn(B, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale)
    return logits.to(device=device, dtype=dtype), targets, dense


@pytest.mark.parametrize("B,V", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_and_gradients_match_float64_reference(B, V, reduction):
    for weighted in (False, True):
        logits, targets, dense = make_case(B, V, seed=B * 1000 + V, weighted=weighted)
        z = logits.clone().requires_grad_()
        loss = soft_target_cross_entropy(z, targets, reduction)
        zr = logits.double().requires_grad_()
        ref = reference_loss(zr, dense, reduction)
        torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-5)
        upstream = torch.randn_like(ref)
        (loss.double() * upstream).sum().backward()
        (ref * upstream).sum().backward()
        torch.testing.assert_close(z.grad.double(), zr.grad, rtol=1e-4, atol=1e-6)
        assert loss.dtype == torch.float32 and z.grad.dtype == torch.float32


def test_k_from_zero_to_all_classes():
    V = 23
    rows = [list(range(k)) for k in range(V + 1)]
    targets = SparseTargets.from_lists(rows, V)
    logits = torch.randn(V + 1, V, dtype=torch.float64, requires_grad=True)
    loss = soft_target_cross_entropy(logits, targets, "none")
    ref_logits = logits.detach().clone().requires_grad_()
    ref = reference_loss(ref_logits, dense_target(rows, V), "none")
    torch.testing.assert_close(loss, ref)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    assert loss[0] == 0 and torch.all(logits.grad[0] == 0)


def test_rows_without_targets_have_zero_loss_and_grad_and_leave_the_mean():
    targets = SparseTargets.from_lists([[1], [], [0, 2]], 3)
    logits = torch.tensor([[1.0, 2.0, 3.0], [float("inf"), 0.0, float("nan")], [0.0, 0.0, 0.0]],
                          requires_grad=True)
    loss = soft_target_cross_entropy(logits, targets, "none")
    assert loss[1] == 0
    mean = soft_target_cross_entropy(logits, targets, "mean")
    torch.testing.assert_close(mean, (loss[0] + loss[2]) / 2)
    mean.backward()
    assert torch.all(logits.grad[1] == 0)


def test_no_targets_at_all_gives_zero_not_nan():
    logits = torch.randn(4, 5, requires_grad=True)
    loss = soft_target_cross_entropy(logits, SparseTargets.from_lists([[]] * 4, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_extreme_logits_stay_finite_and_exact():
    V = 64
    logits = torch.zeros(3, V, dtype=torch.float64)
    logits[0, 5], logits[1, :] = 1e4, -1e4
    logits[2, ::2] = 1e4
    logits[2, 1::2] = -1e4
    rows = [[5, 6], [0], [0, 1]]
    z = logits.float().requires_grad_()
    loss = soft_target_cross_entropy(z, SparseTargets.from_lists(rows, V), "none")
    zr = logits.clone().requires_grad_()
    ref = reference_loss(zr, dense_target(rows, V), "none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-3)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(z.grad.double(), zr.grad, rtol=1e-5, atol=1e-6)


def test_one_row_of_a_million_classes():
    V = 1_000_003
    logits, targets, dense = make_case(1, V, seed=7, k_max=5)
    z = logits.clone().requires_grad_()
    loss = soft_target_cross_entropy(z, targets, "sum")
    zr = logits.double().requires_grad_()
    ref = reference_loss(zr, dense, "sum")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(z.grad.double(), zr.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_pytorchs_own(dtype):
    B, V = 16, 1531
    logits, targets, dense = make_case(B, V, seed=3, dtype=dtype)
    truth_z = logits.double().requires_grad_()
    truth = reference_loss(truth_z, dense, "none")
    truth.sum().backward()
    # PyTorch's own computation in the same dtype
    tz = logits.clone().requires_grad_()
    theirs = -(dense.to(dtype) * torch.log_softmax(tz, -1)).sum(-1)
    theirs.sum().backward()
    z = logits.clone().requires_grad_()
    ours = soft_target_cross_entropy(z, targets, "none")
    ours.sum().backward()
    assert z.grad.dtype == dtype
    eps = torch.finfo(dtype).eps
    err_ours = (ours.double() - truth).abs().max()
    err_theirs = (theirs.double() - truth).abs().max()
    assert err_ours <= 2 * err_theirs + eps
    gerr_ours = (z.grad.double() - truth_z.grad).abs().max()
    gerr_theirs = (tz.grad.double() - truth_z.grad).abs().max()
    assert gerr_ours <= 2 * gerr_theirs + eps * 1e-2


def test_gradcheck_float64():
    targets = SparseTargets.from_lists([[0, 2], [], [4], [1, 1, 3]], 5, weights=[[0.3, 0.7], [], [1.0], [1, 2, 3]])
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: soft_target_cross_entropy(z, targets, "none"), (logits,))
    assert torch.autograd.gradcheck(lambda z: soft_target_cross_entropy(z, targets, "mean"), (logits,))


def test_non_contiguous_logits():
    base, targets, dense = make_case(6, 40, seed=11)
    wide = torch.randn(6, 80)
    wide[:, ::2] = base
    z = wide[:, ::2]  # column stride 2
    loss = soft_target_cross_entropy(z, targets, "none")
    torch.testing.assert_close(loss.double(), reference_loss(base.double(), dense, "none"), rtol=1e-5, atol=1e-5)
    zt = base.t().contiguous().t().requires_grad_()  # column-major
    soft_target_cross_entropy(zt, targets).backward()
    assert zt.grad.shape == (6, 40)


def test_opcheck():
    logits, targets, _ = make_case(5, 33, seed=1)
    args = (logits.requires_grad_(), targets.indices, targets.offsets, targets.weights)
    torch.library.opcheck(torch.ops.wslfast.soft_ce.default, args)
    torch.library.opcheck(torch.ops.wslfast.soft_ce_partials.default, args[:1] + args[1:] + (0,))


def test_torch_compile_fullgraph():
    logits, targets, dense = make_case(7, 50, seed=2)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(z, t):
        return soft_target_cross_entropy(z * 2.0, t)

    z = logits.clone().requires_grad_()
    loss = step(z, targets)
    ref = soft_target_cross_entropy(logits * 2.0, targets)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_module():
    logits, targets, dense = make_case(4, 9, seed=4)
    loss = SoftTargetCrossEntropy("sum")(logits, targets)
    torch.testing.assert_close(loss.double(), reference_loss(logits.double(), dense, "sum"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,exc,match", [
    (lambda t: (torch.randint(0, 5, (3, 7)), t), TypeError, "float32, bfloat16 or float16"),
    (lambda t: (torch.randn(21), t), ValueError, "2-D"),
    (lambda t: (torch.randn(4, 7), t), ValueError, "batch_size"),
    (lambda t: (torch.randn(3, 8), t), ValueError, "num_classes"),
    (lambda t: (torch.randn(3, 7), [[1], [2], [3]]), TypeError, "SparseTargets"),
])
def test_bad_inputs_raise_clear_errors(make, exc, match):
    t = SparseTargets.from_lists([[1], [2, 3], []], 7)
    logits, targets = make(t)
    with pytest.raises(exc, match=match):
        soft_target_cross_entropy(logits, targets)


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        soft_target_cross_entropy(torch.randn(1, 2), SparseTargets.from_lists([[0]], 2), "avg")


def test_raw_op_refuses_non_canonical_or_broken_csr_on_cpu():
    z = torch.randn(2, 5)
    w = torch.ones(3)
    with pytest.raises(RuntimeError, match="sorted and unique"):
        torch.ops.wslfast.soft_ce(z, torch.tensor([3, 1, 2]), torch.tensor([0, 2, 3]), w)
    with pytest.raises(RuntimeError, match="end at nnz"):
        torch.ops.wslfast.soft_ce(z, torch.tensor([1, 3, 2]), torch.tensor([0, 2, 2]), w)
    with pytest.raises(RuntimeError, match="B\\+1"):
        torch.ops.wslfast.soft_ce(z, torch.tensor([1, 3, 2]), torch.tensor([0, 3]), w)
    with pytest.raises(RuntimeError, match="weights has 2"):
        torch.ops.wslfast.soft_ce(z, torch.tensor([1, 3, 2]), torch.tensor([0, 2, 3]), w[:2])
