"""Non-finite steps: flagged, BatchNorm statistics restored, optimizer step skipped, stop after N in a row."""
import pytest
import torch
import torch.nn as nn

from wslfast.engine import NonFiniteGuard, NonFiniteLossError, nonfinite_flag


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def _step(net, opt, guard, x, step):
    guard.snapshot()
    loss = net(x).square().mean()
    loss.backward()
    skip = guard.record(bool(nonfinite_flag(loss, net.parameters()).item()), step)
    if not skip:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return skip


def test_flag_sees_loss_and_gradients():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([0.0, 1.0, 2.0])
    assert nonfinite_flag(torch.tensor(1.0), [p]).item() == 0.0
    assert nonfinite_flag(torch.tensor(float("nan")), [p]).item() == 1.0
    p.grad = torch.tensor([0.0, float("inf"), 2.0])
    assert nonfinite_flag(torch.tensor(1.0), [p]).item() == 1.0
    assert nonfinite_flag(torch.tensor(1.0), [nn.Parameter(torch.ones(1))]).item() == 0.0  # no grads


def test_bad_batch_leaves_weights_and_bn_stats_untouched():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    guard = NonFiniteGuard(net, max_consecutive=3)
    _step(net, opt, guard, torch.randn(4, 3, 8, 8), 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    bad = torch.randn(4, 3, 8, 8)
    bad[1, 0, 2, 2] = float("nan")
    assert _step(net, opt, guard, bad, 1) is True
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for m, p in zip(momentum, net.parameters()):
        assert torch.equal(m, opt.state[p]["momentum_buffer"])
    assert guard.skipped == 1 and guard.consecutive == 1
    assert _step(net, opt, guard, torch.randn(4, 3, 8, 8), 2) is False
    assert guard.consecutive == 0 and guard.skipped == 1
    assert not torch.equal(net[0].weight, before["0.weight"])


def test_stops_after_n_in_a_row_with_clear_message():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = NonFiniteGuard(net, max_consecutive=2)
    x = torch.full((2, 3, 8, 8), float("inf"))
    assert _step(net, opt, guard, x, 0) is True
    with pytest.raises(NonFiniteLossError, match="non-finite for 2 steps in a row"):
        _step(net, opt, guard, x, 1)


def test_state_roundtrip_and_bad_limit():
    guard = NonFiniteGuard(_net())
    guard.load_state_dict({"skipped": 5, "consecutive": 1})
    assert guard.state_dict() == {"skipped": 5, "consecutive": 1}
    with pytest.raises(ValueError):
        NonFiniteGuard(_net(), max_consecutive=0)
