"""wslfast.nn.ConvBNReLU against nn.Conv2d -> nn.BatchNorm2d -> nn.ReLU, BatchNorm bookkeeping included."""
import copy

import pytest
import torch
from torch import nn

from wslfast.nn import ConvBNReLU


def plain_of(module: ConvBNReLU) -> nn.Sequential:
    layers = [copy.deepcopy(module.conv), copy.deepcopy(module.bn)]
    return nn.Sequential(*layers, nn.ReLU()) if module.relu else nn.Sequential(*layers)


def randomize(module: ConvBNReLU) -> ConvBNReLU:
    with torch.no_grad():
        module.bn.weight.uniform_(0.5, 1.5)
        module.bn.bias.normal_(0, 0.2)
    return module


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("relu", [True, False])
def test_matches_plain_layers_over_train_and_eval(momentum, relu):
    fused = randomize(ConvBNReLU(16, 32, 3, stride=2, groups=8, relu=relu, momentum=momentum).double())
    plain = plain_of(fused)
    x = torch.randn(3, 16, 9, 8, dtype=torch.float64)
    for step in range(3):
        xs = (x * (step + 1)).requires_grad_()
        xp = xs.detach().clone().requires_grad_()
        y1, y2 = fused(xs), plain(xp)
        torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
        y1.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(xs.grad, xp.grad, rtol=1e-9, atol=1e-10)
    for (n1, b1), (n2, b2) in zip(fused.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(b1, b2, rtol=1e-12, atol=1e-12, msg=n1)
    for p1, p2 in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-9, atol=1e-10)
    fused.eval(), plain.eval()
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-10, atol=1e-10)


def test_track_running_stats_false_uses_batch_statistics_in_eval():
    fused = ConvBNReLU(8, 8, 3, groups=2).double()
    fused.bn = nn.BatchNorm2d(8, track_running_stats=False).double()
    plain = plain_of(fused).eval()
    fused.eval()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-10, atol=1e-10)


def test_from_modules_shares_parameters_and_keeps_state_dict_names():
    conv, bn = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
    module = ConvBNReLU.from_modules(conv, bn, relu=False)
    assert module.conv is conv and module.bn is bn and module.relu is False
    assert set(module.state_dict()) == {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                        "bn.num_batches_tracked"}
    module(torch.randn(2, 8, 4, 4))
    assert bn.num_batches_tracked.item() == 1


def test_channels_last_and_contiguous_agree():
    module = randomize(ConvBNReLU(32, 32, 3, groups=4))
    x = torch.randn(2, 32, 7, 7)
    a = copy.deepcopy(module)(x)
    b = copy.deepcopy(module).to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rejects_what_the_op_cannot_do():
    with pytest.raises(ValueError, match="bias=False"):
        ConvBNReLU.from_modules(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="dilation"):
        ConvBNReLU.from_modules(nn.Conv2d(4, 4, 3, dilation=2, bias=False), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="same along H and W"):
        ConvBNReLU.from_modules(nn.Conv2d(4, 4, 3, stride=(1, 2), bias=False), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="features"):
        ConvBNReLU.from_modules(nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="affine"):
        ConvBNReLU.from_modules(nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False))
    with pytest.raises(TypeError, match="Conv2d"):
        ConvBNReLU.from_modules(nn.Linear(4, 4), nn.BatchNorm2d(4))
