"""The loop pieces train/pretrain.py and wslfast.transfer.finetune share (wslfast.engine.step), one process."""
import pytest
import torch
import torch.nn as nn

from wslfast.engine import (DistInfo, NonFiniteGuard, NonFiniteLossError, checked_digest, endless,
                            exit_on_peer_failure, guarded_update)

ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def _update(net, opt, guard, x, step, stop=False):
    guard.snapshot()
    return guarded_update(net(x).square().mean(), opt, guard, ONE, step, stop)


def test_a_finite_step_is_the_plain_sgd_step():
    net, ref = _net(), _net()
    x = torch.randn(4, 3, 8, 8)
    opt, ref_opt = torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    loss, skipped, stop = _update(net, opt, NonFiniteGuard(net), x, 0)
    ref_loss = ref(x).square().mean()
    ref_loss.backward()
    ref_opt.step()
    assert not skipped and not stop and not loss.requires_grad and loss.item() == ref_loss.item()
    for p, q in zip(net.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(p, q)
    assert all(p.grad is None for p in net.parameters())


def test_a_nonfinite_step_changes_nothing_and_the_stop_flag_passes_through():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = NonFiniteGuard(net, max_consecutive=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    _, skipped, stop = _update(net, opt, guard, x, 0, stop=True)
    assert skipped and stop and guard.skipped == 1
    for k, v in net.state_dict().items():  # weights and the BN running statistics the forward changed
        assert torch.equal(v, before[k]), k
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        _update(net, opt, guard, x, 1)


def test_endless_repeats_epochs_and_names_an_empty_loader():
    it = endless([1, 2], "the test loader")
    assert [next(it) for _ in range(5)] == [1, 2, 1, 2, 1]
    with pytest.raises(RuntimeError, match="the test loader yielded no batch"):
        next(endless([], "the test loader"))


def test_checked_digest_refuses_inf_weights_and_is_stable():
    net = _net()
    assert checked_digest(ONE, net, 3) == checked_digest(ONE, net, 3)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="step 3: the weights hold inf/NaN"):
        checked_digest(ONE, net, 3)


def test_a_plain_error_is_left_to_the_caller():
    assert exit_on_peer_failure(RuntimeError("Connection reset by peer"), ONE) is None  # one process: no peers
    assert exit_on_peer_failure(ValueError("x"), DistInfo(0, 2, 0, torch.device("cpu"), "gloo")) is None
