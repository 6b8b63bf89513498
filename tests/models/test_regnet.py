"""RegNetY: torchvision state_dict compatibility (keys, shapes, parameter counts), torchvision's outputs from
its own weights, fused == unfused in eval and train mode, gradients to every parameter."""
import copy
from functools import partial

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.regnet import BlockParams
from torchvision.models.regnet import RegNet as TvRegNet

from wslfast.engine import HashtagObjective
from wslfast.models import RegNetY, classifier_keys, create_model, model_family
from wslfast.models.regnet import regnet_y_block_params
from wslfast.sparse_targets import SparseTargets

from tests.models.test_resnext import randomize_bn

BIG = [("regnet_y_16gf", tvm.regnet_y_16gf, tvm.RegNet_Y_16GF_Weights),
       ("regnet_y_32gf", tvm.regnet_y_32gf, tvm.RegNet_Y_32GF_Weights),
       ("regnet_y_128gf", tvm.regnet_y_128gf, tvm.RegNet_Y_128GF_Weights)]


@pytest.mark.parametrize("name,builder,weights", BIG, ids=[b[0] for b in BIG])
def test_big_models_have_torchvisions_keys_shapes_and_param_counts(name, builder, weights, monkeypatch):
    original = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):  # torchvision's width arithmetic calls .tolist(): not on meta tensors
        with torch.device("cpu"):
            return original(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))
    with torch.device("meta"):  # no memory, no init: seconds even for 128GF (645M parameters)
        ours = create_model(name, num_classes=1000)
        theirs = builder(weights=None)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    n = sum(p.numel() for p in ours.parameters())
    assert n == weights.IMAGENET1K_SWAG_E2E_V1.meta["num_params"]
    assert model_family(name) == "regnet" and classifier_keys(ours) == ("fc.weight", "fc.bias")


def tv_tiny(num_classes=7):
    return TvRegNet(regnet_y_block_params("regnet_y_tiny"), num_classes=num_classes, stem_width=16,
                    norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_torchvision_state_dict_gives_torchvisions_outputs(fused, train):
    torch.manual_seed(0)
    tv = tv_tiny().double()
    randomize_bn(tv)
    ours = create_model("regnet_y_tiny", num_classes=7, fused=fused).double()
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.train(train), ours.train(train)
    x = torch.randn(3, 3, 37, 41, dtype=torch.float64)  # odd sizes: every stride-2 layer rounds
    with torch.no_grad():
        want, got = tv(x), ours(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if train:  # the BN running statistics moved the same way
        for (k, a), b in zip(ours.state_dict().items(), tv.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=k)


def test_fused_and_unfused_agree_in_float32_channels_last_with_gradients():
    torch.manual_seed(1)
    fused = create_model("regnet_y_tiny", num_classes=5, fused=True, zero_init_residual=False)
    randomize_bn(fused)
    plain = copy.deepcopy(fused).set_fused(False)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    for m in (fused, plain):
        m.train()
        m(x).square().mean().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_zero_init_residual_starts_every_block_at_its_shortcut():
    m = create_model("regnet_y_tiny", zero_init_residual=True)
    gammas = [b.f.c[1].weight for b in m.modules() if hasattr(b, "f")]
    assert len(gammas) == 4 and all(g.abs().sum() == 0 for g in gammas)
    assert all(b.fused for b in m.modules() if hasattr(b, "f"))
    assert not any(b.fused for b in m.set_fused(False).modules() if hasattr(b, "f"))


@pytest.mark.parametrize("fused", [True, False])
def test_hashtag_objective_runs_on_regnet(fused):
    torch.manual_seed(2)
    model = create_model("regnet_y_tiny", num_classes=11, fused=fused)
    targets = SparseTargets.from_lists([[1, 4], [10], []], num_classes=11)
    x = torch.randn(3, 3, 32, 32)
    loss = HashtagObjective(model, fused=fused)(x, targets)
    want = HashtagObjective(model, fused=False)(x, targets) if fused else loss
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.fc.weight.grad is not None


def test_bad_input_is_one_clear_error():
    m = create_model("regnet_y_tiny")
    with pytest.raises(ValueError, match="expected images"):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown model"):
        create_model("regnet_y_7gf")
    assert isinstance(m, RegNetY)


@pytest.mark.slow
def test_full_size_16gf_from_torchvision_gives_its_outputs():
    """The real architecture, not only its shapes: torchvision's regnet_y_16gf weights (random init) in ours,
    fused and unfused, eval mode, small images."""
    torch.manual_seed(3)
    tv = tvm.regnet_y_16gf(weights=None, num_classes=10).eval()
    randomize_bn(tv)
    ours = create_model("regnet_y_16gf", num_classes=10, fused=True).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = tv(x)
        got_fused = ours(x)
        got_plain = ours.set_fused(False)(x)
    torch.testing.assert_close(got_plain, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_fused, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
