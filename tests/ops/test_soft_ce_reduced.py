"""The loss reduced inside the op (soft_ce_reduced) and the backward's broadcast / divided upstream gradient,
against the float64 reference; and the ops a fused forward+backward dispatches around the kernels (on CUDA
each of them is a launch: the budget is 2 + 1 + 1 for the mean and the sum, see benchmarks/model_soft_ce.py)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wslfast.ops import SparseTargets, linear_soft_target_cross_entropy, soft_target_cross_entropy

from soft_ce_reference import dense_target, reference_loss


def case(B, V, rows, seed=0):
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    return logits, SparseTargets.from_lists(rows, V), dense_target(rows, V)


def ops():
    return torch.ops.wslfast


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reduced_op_matches_reference_and_returns_its_norm(reduction, dtype):
    rows = [[1, 5], [], [0], [2, 3, 4], [], [6]]
    logits, t, dense = case(6, 1531, rows)
    z = logits.to(dtype, copy=True).requires_grad_()
    loss, lse, norm = ops().soft_ce_reduced(z, t.indices, t.offsets, t.weights, reduction)
    ref = reference_loss(logits, dense, reduction)
    assert loss.shape == () and loss.dtype == dtype and lse.dtype == torch.float64 and norm.dtype == torch.float32
    assert norm.item() == (4.0 if reduction == "mean" else 1.0)  # rows with targets
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), rtol=1e-6, atol=1e-6)
    loss.backward(torch.tensor(2.5, dtype=dtype))
    zr = logits.clone().requires_grad_()
    reference_loss(zr, dense, reduction).backward(torch.tensor(2.5, dtype=torch.float64))
    torch.testing.assert_close(z.grad.double(), zr.grad, rtol=1e-5, atol=1e-7)


def test_reduced_op_on_an_empty_batch_and_on_rows_without_targets():
    for B in (0, 3):
        z = torch.randn(B, 7, requires_grad=True)
        t = SparseTargets.from_lists([[]] * B, 7)
        loss, _, norm = ops().soft_ce_reduced(z, t.indices, t.offsets, t.weights, "mean")
        assert loss.item() == 0.0 and norm.item() == 1.0  # max(1, rows with targets)
        loss.backward()
        assert z.grad.shape == (B, 7) and torch.all(z.grad == 0)


def test_backward_reads_a_broadcast_or_strided_upstream_and_divides_by_norm():
    rows = [[1], [0, 2], [4]]
    logits, t, dense = case(3, 5, rows, seed=3)
    _, lse = ops().soft_ce(logits, t.indices, t.offsets, t.weights)
    wide = torch.tensor([0.5, -1.0, 2.0, 9.0, -3.0, 7.0], dtype=torch.float64)
    zr = logits.clone().requires_grad_()
    reference_loss(zr, dense, "none").backward(wide[::2])
    got = ops().soft_ce_backward(wide[::2], logits, lse, t.indices, t.offsets, t.weights, 0)  # stride 2
    torch.testing.assert_close(got, zr.grad)
    norm = torch.tensor(4.0)
    one = torch.tensor(3.0, dtype=torch.float64).expand(3)  # stride 0
    got = ops().soft_ce_backward(one, logits, lse, t.indices, t.offsets, t.weights, 0, norm)
    zr.grad = None
    reference_loss(zr, dense, "none").backward(torch.full((3,), 3.0 / 4.0, dtype=torch.float64))
    torch.testing.assert_close(got, zr.grad)


def test_bad_reduction_or_norm_on_the_raw_ops():
    logits, t, _ = case(2, 5, [[1], [2]])
    with pytest.raises(RuntimeError, match="reduction must be 'sum' or 'mean'"):
        ops().soft_ce_reduced(logits, t.indices, t.offsets, t.weights, "none")
    _, lse = ops().soft_ce(logits, t.indices, t.offsets, t.weights)
    with pytest.raises(RuntimeError, match="norm must be one floating value"):
        ops().soft_ce_backward(torch.ones(2), logits, lse, t.indices, t.offsets, t.weights, 0, torch.ones(2))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_opcheck_reduced(reduction):
    logits, t, _ = case(5, 33, [[1, 2], [], [0], [32], [5, 6, 7]], seed=1)
    args = (logits.float().requires_grad_(), t.indices, t.offsets, t.weights, reduction)
    torch.library.opcheck(ops().soft_ce_reduced.default, args)
    _, lse = ops().soft_ce(*args[:4])
    bwd = (torch.ones(()).expand(5), args[0].detach(), lse, t.indices, t.offsets, t.weights, 0, torch.tensor(2.0))
    torch.library.opcheck(ops().soft_ce_backward.default, bwd)


class _Dispatched(TorchDispatchMode):
    """The ops dispatched from Python and autograd (the ops' own insides are not seen)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# ops that launch nothing on CUDA (views, the detach of AccumulateGrad)
_NO_LAUNCH = {"aten.expand", "aten.detach", "aten.view", "aten.alias"}


@pytest.mark.parametrize("reduction,around", [("mean", ["aten.ones_like"]), ("sum", ["aten.ones_like"]),
                                              ("none", ["aten.sum", "aten.ones_like"])])
def test_a_fused_forward_backward_dispatches_nothing_else_that_launches(reduction, around):
    """On CUDA: soft_ce(_reduced) is 2 launches, soft_ce_backward 1; what the wrapper and autograd add around
    them is listed here (the autograd seed's ones_like; the user's .sum() for "none")."""
    logits, t, _ = case(4, 1531, [[1, 2], [3], [], [1530]])
    z = logits.float().requires_grad_()
    with _Dispatched() as seen:
        loss = soft_target_cross_entropy(z, t, reduction)
        (loss.sum() if reduction == "none" else loss).backward()
    ours = [o for o in seen.ops if o.startswith("wslfast.")]
    assert ours == ["wslfast.soft_ce" if reduction == "none" else "wslfast.soft_ce_reduced", "wslfast.soft_ce_backward"]
    assert [o for o in seen.ops if not o.startswith("wslfast.") and o not in _NO_LAUNCH] == around


def test_finish_merges_parts_in_order_like_one_logsumexp():
    """soft_ce_finish over the partials of three column chunks equals the loss over the whole row, with NaN,
    all -inf chunks and rows without targets."""
    rows = [[1, 9], [], [4], [0, 11], [2]]
    logits, t, dense = case(5, 12, rows, seed=5)
    logits[1, 10] = float("nan")       # row without targets: loss 0, lse NaN
    logits[3, :4] = float("-inf")      # an all -inf chunk, and a target on -inf: loss inf
    logits[4, 8:] = float("-inf")
    parts = [ops().soft_ce_partials(logits[:, c:c + 4], t.indices, t.offsets, t.weights, c) for c in (0, 4, 8)]
    stacked = torch.stack([p[i] for i in range(4) for p in parts]).view(4, 3, 5)
    loss, lse, norm = ops().soft_ce_finish(stacked, t.offsets, "none", torch.float64)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), equal_nan=True)
    whole, _ = ops().soft_ce(logits, t.indices, t.offsets, t.weights)  # one part: the whole row
    torch.testing.assert_close(loss, whole)
    finite = [0, 2]  # the dense reference's 0 * -inf is NaN in rows 3 and 4
    torch.testing.assert_close(loss[finite], reference_loss(logits, dense, "none")[finite])
    assert loss[1] == 0 and loss[3] == float("inf") and torch.isfinite(loss[4]) and norm.item() == 1.0
    mean, _, norm = ops().soft_ce_finish(stacked, t.offsets, "mean", torch.float32)
    assert mean.dtype == torch.float32 and norm.item() == 4.0 and mean.item() == float("inf")


def test_finish_refuses_bad_parts():
    offsets = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match=r"float64 \[4, P >= 1, B\]"):
        ops().soft_ce_finish(torch.zeros(3, 1, 1, dtype=torch.float64), offsets, "sum", torch.float32)
    with pytest.raises(RuntimeError, match="offsets must be int64"):
        ops().soft_ce_finish(torch.zeros(4, 1, 2, dtype=torch.float64), offsets, "sum", torch.float32)
    with pytest.raises(RuntimeError, match="reduction must be"):
        ops().soft_ce_finish(torch.zeros(4, 1, 1, dtype=torch.float64), offsets, "avg", torch.float32)


def test_opcheck_linear_reduced_and_finish():
    g = torch.Generator().manual_seed(7)
    t = SparseTargets.from_lists([[1, 2], [], [0], [29]], 30)
    f, w, b = torch.randn(4, 6, generator=g), torch.randn(30, 6, generator=g), torch.randn(30, generator=g)
    args = (f.requires_grad_(), w.requires_grad_(), b.requires_grad_(), t.indices, t.offsets, t.weights, 8, "mean")
    torch.library.opcheck(ops().linear_soft_ce_reduced.default, args)
    z = torch.randn(4, 30, generator=g)
    chunks = [ops().soft_ce_partials(z[:, c:c + 10], t.indices, t.offsets, t.weights, c) for c in (0, 10, 20)]
    parts = torch.stack([p[i] for i in range(4) for p in chunks]).view(4, 3, 4)
    for red in ("none", "sum", "mean"):
        torch.library.opcheck(ops().soft_ce_finish.default, (parts, t.offsets, red, torch.float32))


@pytest.mark.parametrize("chunk", [30, 8])
def test_linear_fused_forward_backward_dispatches_nothing_else_that_launches(chunk):
    """On CUDA the linear op is per chunk one GEMM and one row kernel, then one stack and one finish launch;
    its backward per chunk a GEMM, the row kernel and three GEMM/sum launches. Around them only the seed."""
    g = torch.Generator().manual_seed(8)
    t = SparseTargets.from_lists([[1, 2], [], [0], [29]], 30)
    leaves = [torch.randn(4, 6, generator=g).requires_grad_(), torch.randn(30, 6, generator=g).requires_grad_(),
              torch.randn(30, generator=g).requires_grad_()]
    with _Dispatched() as seen:
        linear_soft_target_cross_entropy(*leaves, t, "mean", chunk_size=chunk).backward()
    assert [o for o in seen.ops if o.startswith("wslfast.")] == ["wslfast.linear_soft_ce_reduced",
                                                                 "wslfast.linear_soft_ce_backward"]
    assert [o for o in seen.ops if not o.startswith("wslfast.") and o not in _NO_LAUNCH] == ["aten.ones_like"]
