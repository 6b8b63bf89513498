"""HashtagObjective: the fused path (wslfast ops) and the stock path (dense target) give the same loss and
gradients, both equal to a float64 reference; rows without hashtags count for nothing."""
import pytest
import torch
import torch.nn as nn

from tests.tiny_model import TinyNet
from wslfast.engine import HashtagObjective, dense_soft_target_cross_entropy
from wslfast.sparse_targets import SparseTargets


def _reference(net, x, rows, classes):
    """Plain float64: -sum_j (1/k) log softmax(z)_t_j averaged over rows with any hashtag."""
    z = net.double()(x.double())
    logp = torch.log_softmax(z, -1)
    losses = [-sum(logp[i, c] for c in r) / len(r) for i, r in enumerate(rows) if r]
    return torch.stack(losses).mean()


@pytest.mark.parametrize("rows", [[[0, 3], [6], [1, 2, 5]], [[4], [], [0, 0, 2]], [[1]]])
def test_fused_and_stock_agree_with_float64(rows):
    classes = 7
    torch.manual_seed(0)
    x = torch.randn(len(rows), 3, 6, 6)
    targets = SparseTargets.from_lists(rows, classes)
    canon = [list(r) for r in rows]  # duplicates in a row: 1/k each, merged -> same as listing twice
    losses, grads = {}, {}
    for fused in (True, False):
        torch.manual_seed(1)
        net = TinyNet(classes)
        loss = HashtagObjective(net, fused=fused)(x, targets)
        loss.backward()
        losses[fused], grads[fused] = loss.detach(), [p.grad.clone() for p in net.parameters()]
    torch.manual_seed(1)
    ref = _reference(TinyNet(classes), x, canon, classes)
    torch.testing.assert_close(losses[True].double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[False].double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dense_ce_rows_without_targets_do_not_count():
    z = torch.randn(3, 4)
    t = torch.zeros(3, 4)
    t[0, 1] = 1.0
    expected = -torch.log_softmax(z, -1)[0, 1]
    torch.testing.assert_close(dense_soft_target_cross_entropy(z, t), expected)


def test_model_without_interface_is_refused():
    with pytest.raises(TypeError, match="forward_features"):
        HashtagObjective(nn.Linear(2, 2))


def test_bf16_autocast_fused_runs_and_is_close_to_fp32():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    targets = SparseTargets.from_lists([[0, 3], [6], [1, 2, 5], [4]], 7)
    torch.manual_seed(1)
    net = TinyNet(7)
    fp32 = HashtagObjective(net, fused=True)(x, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = HashtagObjective(net, fused=True)(x, targets)
    loss.backward()
    assert net.fc.weight.grad.dtype == torch.float32 and torch.isfinite(net.fc.weight.grad).all()
    torch.testing.assert_close(loss.float(), fp32.detach(), rtol=0.03, atol=0.03)
