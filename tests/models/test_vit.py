"""ViT: torchvision state_dict compatibility (keys, shapes, parameter counts), torchvision's outputs from its
own weights (SDPA in place of nn.MultiheadAttention), position embeddings resized on load, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer as TvViT

from wslfast.engine import HashtagObjective
from wslfast.models import ViT, classifier_keys, create_model
from wslfast.models.vit import VIT_PARAMS
from wslfast.sparse_targets import SparseTargets

BIG = [("vit_b_16", tvm.vit_b_16, tvm.ViT_B_16_Weights, 384),
       ("vit_l_16", tvm.vit_l_16, tvm.ViT_L_16_Weights, 512),
       ("vit_h_14", tvm.vit_h_14, tvm.ViT_H_14_Weights, 518)]


@pytest.mark.parametrize("name,builder,weights,size", BIG, ids=[b[0] for b in BIG])
def test_big_models_have_torchvisions_keys_shapes_and_param_counts(name, builder, weights, size):
    """At SWAG's fine-tuning resolution, as torchvision's IMAGENET1K_SWAG_E2E_V1 weights are."""
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000, image_size=size)
        theirs = builder(weights=None, image_size=size)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert sum(p.numel() for p in ours.parameters()) == weights.IMAGENET1K_SWAG_E2E_V1.meta["num_params"]
    assert classifier_keys(ours) == ("heads.head.weight", "heads.head.bias")


def tv_tiny(image_size=32, num_classes=7):
    return TvViT(image_size=image_size, num_classes=num_classes, **VIT_PARAMS["vit_tiny"])


def randomize(model, seed=0):
    """torchvision zero-inits the head (and class token): random values so the outputs say something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("train", [False, True])
def test_torchvision_state_dict_gives_torchvisions_outputs(train):
    torch.manual_seed(0)
    tv = tv_tiny().double()
    randomize(tv)
    ours = create_model("vit_tiny", num_classes=7, image_size=32).double()
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.train(train), ours.train(train)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want, got = tv(x), ours(x)
        feats = ours.forward_features(x)
    assert feats.shape == (3, 32)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.fc(feats), got)


def test_gradients_reach_every_parameter_and_match_torchvision():
    torch.manual_seed(1)
    tv = tv_tiny().double()
    randomize(tv)
    ours = create_model("vit_tiny", num_classes=7, image_size=32).double()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for m in (tv, ours):
        m.train()
        m(x).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), tv.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_new_resolution_loads_with_interpolated_position_embeddings():
    torch.manual_seed(2)
    small = create_model("vit_tiny", num_classes=7, image_size=32)  # 4x4 patches
    randomize(small)
    big = create_model("vit_tiny", num_classes=7, image_size=56)    # 7x7 patches
    big.load_state_dict(small.state_dict(), strict=True)
    old = small.encoder.pos_embedding.detach()                      # [1, 17, 32]
    grid = old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(7, 7), mode="bicubic", align_corners=True).permute(0, 2, 3, 1).reshape(1, 49, 32)
    got = big.encoder.pos_embedding.detach()
    assert got.shape == (1, 50, 32)
    torch.testing.assert_close(got[:, :1], old[:, :1])
    torch.testing.assert_close(got[:, 1:], want)
    for k, v in small.state_dict().items():  # everything else unchanged
        if k != "encoder.pos_embedding":
            torch.testing.assert_close(big.state_dict()[k], v)
    assert big(torch.randn(2, 3, 56, 56)).shape == (2, 7)
    with pytest.raises(ValueError, match="expected images"):
        big(torch.randn(2, 3, 32, 32))
    bad = dict(small.state_dict())
    bad["encoder.pos_embedding"] = torch.zeros(1, 16, 32)  # 15 patches: no square grid
    with pytest.raises(ValueError, match="no square grid"):
        big.load_state_dict(bad)


@pytest.mark.parametrize("fused", [True, False])
def test_hashtag_objective_runs_on_vit(fused):
    torch.manual_seed(3)
    model = create_model("vit_tiny", num_classes=9, image_size=32)
    randomize(model)
    targets = SparseTargets.from_lists([[0, 8], [3]], num_classes=9)
    x = torch.randn(2, 3, 32, 32)
    loss = HashtagObjective(model, fused=fused)(x, targets)
    logp = torch.log_softmax(model(x).double(), 1)
    want = -(0.5 * (logp[0, 0] + logp[0, 8]) + logp[1, 3]) / 2
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.heads.head.weight.grad is not None
    assert "fc.weight" not in model.state_dict()  # fc is the head by another name, not a second copy


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create_model("vit_tiny", image_size=36)
    assert isinstance(create_model("vit_tiny", image_size=16), ViT)
    assert math.isclose(create_model("vit_tiny", image_size=16).encoder.pos_embedding.shape[1], 5)


@pytest.mark.slow
def test_full_size_b16_from_torchvision_gives_its_outputs():
    """torchvision's vit_b_16 (random init, nn.MultiheadAttention) in ours (SDPA), at 32 px (2 x 2 patches)."""
    torch.manual_seed(4)
    tv = tvm.vit_b_16(weights=None, num_classes=10, image_size=32).eval()
    randomize(tv)
    ours = create_model("vit_b_16", num_classes=10, image_size=32).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = tv(x), ours(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
