"""ModelEMA against a plain reference loop over the state_dict values (float64)."""
import pytest
import torch
from torch import nn

from wslfast.transfer import ModelEMA


def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


@pytest.mark.parametrize("warmup", [0, 2])
def test_ema_matches_a_plain_reference(warmup):
    torch.manual_seed(0)
    net = small_net()
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    decay = 0.9
    ema = ModelEMA(net, decay=decay, warmup_steps=warmup)
    ref = {k: v.detach().double().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for step in range(1, 6):
        net.train()
        net(torch.randn(5, 3, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(net)
        for k, v in net.state_dict().items():
            if step <= warmup or not v.is_floating_point():
                ref[k] = v.detach().double().clone()
            else:
                ref[k] = decay * ref[k] + (1 - decay) * v.detach().double()
    got = ema.module.state_dict()
    for k, v in ref.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-6, msg=k)
    assert got["1.num_batches_tracked"] == net.state_dict()["1.num_batches_tracked"] == 6  # 5 + the lazy init
    # the average is a separate, frozen, eval-mode copy
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    assert ema.module[0].weight.data_ptr() != net[0].weight.data_ptr()


def test_ema_state_round_trip_and_bad_arguments():
    net = nn.Linear(3, 2)
    ema = ModelEMA(net, decay=0.5)
    ema.update(net)
    other = ModelEMA(nn.Linear(3, 2), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.5
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(net, decay=1.0)
    with pytest.raises(ValueError, match="keys differ"):
        ema.update(nn.Linear(3, 2, bias=False))
