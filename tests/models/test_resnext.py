"""ResNeXt models: torchvision state_dict compatibility, fused == unfused, gradients, formats, autocast."""
import copy

import pytest
import torch
from torchvision.models import resnext101_32x8d as tv_resnext101_32x8d
from torchvision.models.resnet import Bottleneck as TvBottleneck
from torchvision.models.resnet import ResNet as TvResNet

from wslfast.models import create_model, model_names, resnext101_32x8d, resnext_tiny


def randomize_bn(model, seed=0):
    """Non-trivial BN parameters and running statistics, so eval really uses them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


@pytest.mark.slow
@pytest.mark.parametrize("name,width", [("resnext101_32x4d", 4), ("resnext101_32x16d", 16)])
def test_state_dict_matches_torchvision_widths(name, width):
    ours = create_model(name).state_dict()
    theirs = TvResNet(TvBottleneck, [3, 4, 23, 3], groups=32, width_per_group=width).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.slow
def test_torchvision_32x8d_checkpoint_loads_and_gives_same_eval_outputs():
    tv = tv_resnext101_32x8d(weights=None).eval()
    randomize_bn(tv)
    ours = resnext101_32x8d(fused=True).eval()
    sd = tv.state_dict()
    assert list(ours.state_dict()) == list(sd)
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = tv(x)
        got = ours(x)
        feats = ours.forward_features(x)
    assert feats.shape == (2, 2048)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def tiny_pair(dtype=torch.float64, zero_init_residual=False):
    torch.manual_seed(0)
    fused = resnext_tiny(num_classes=7, fused=True, zero_init_residual=zero_init_residual).to(dtype)
    randomize_bn(fused)
    plain = copy.deepcopy(fused).set_fused(False)
    return fused, plain


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_and_unfused_agree_in_training(channels_last):
    fused, plain = tiny_pair()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    if channels_last:
        fused, plain = fused.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # the second step sees the first's running-stat updates (in eval below)
        for m in (fused, plain):
            m.zero_grad()
            m(x).square().mean().backward()
    for (name, p1), (_, p2) in zip(fused.named_parameters(), plain.named_parameters()):
        assert p1.grad is not None and torch.isfinite(p1.grad).all(), name
        assert p1.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-8, atol=1e-10, msg=name)
    for (name, b1), (_, b2) in zip(fused.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(b1, b2, rtol=1e-10, atol=1e-12, msg=name)
    fused.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-9, atol=1e-10)


def test_fused_and_unfused_agree_in_eval_with_gradients():
    fused, plain = tiny_pair()
    fused.eval(), plain.eval()
    x = torch.randn(2, 3, 48, 56, dtype=torch.float64)
    outs = []
    for m in (fused, plain):
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.square().sum().backward()
        outs.append((out.detach(), xi.grad, [p.grad for p in m.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-8, atol=1e-10)
    for g1, g2 in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


def test_zero_init_residual_and_every_parameter_gets_a_gradient():
    model = resnext_tiny(num_classes=5)
    for name, m in model.named_modules():
        if name.endswith("bn3"):
            assert torch.all(m.weight == 0)
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bf16_autocast_close_to_float32():
    fused, plain = tiny_pair(dtype=torch.float32)
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(x)
    assert out.dtype == torch.bfloat16
    want = plain(x)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())
    scale = want.abs().max().item()
    torch.testing.assert_close(out.float(), want, rtol=0.1, atol=0.1 * scale)


def test_forward_features_and_head():
    model = resnext_tiny(num_classes=11).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features) == (2, 512)
        torch.testing.assert_close(model(x), model.fc(feats))
    assert model.fc.weight.shape == (11, 512) and model.fc.bias.shape == (11,)


def test_names_and_bad_arguments():
    assert set(model_names()) == {"resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d",
                                  "resnext101_32x32d", "resnext101_32x48d", "resnext_tiny",
                                  "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "regnet_y_tiny",
                                  "vit_b_16", "vit_l_16", "vit_h_14", "vit_tiny"}
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet50")
    model = resnext_tiny()
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 1, 64, 64))
