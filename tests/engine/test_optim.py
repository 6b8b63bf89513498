"""build_optimizer: SGD as the ResNeXt recipe, AdamW with no decay on biases/norms/class token/pos-embedding."""
import pytest
import torch

from wslfast.engine.optim import build_optimizer, no_decay_param_names
from wslfast.models import create_model


def test_sgd_keeps_the_resnext_recipe():
    model = create_model("regnet_y_tiny", num_classes=5)
    opt = build_optimizer(model, "sgd", lr=0.5, weight_decay=1e-4, momentum=0.8, nesterov=True)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["lr"] == 0.5 and g["momentum"] == 0.8 and g["nesterov"] and g["weight_decay"] == 1e-4
    assert len(g["params"]) == len(list(model.parameters()))


def test_adamw_decays_matrices_only():
    model = create_model("vit_tiny", num_classes=5, image_size=32)
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.95)
    assert decay["eps"] == no_decay["eps"] == 1e-6
    skip = no_decay_param_names(model)
    assert {"class_token", "encoder.pos_embedding", "heads.head.bias", "encoder.ln.weight"} <= skip
    assert "conv_proj.weight" not in skip and "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" not in skip
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # AdamW's decoupled decay on a decayed matrix, none on a bias, with zero gradients
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    w, b = model.conv_proj.weight.detach().clone(), model.conv_proj.bias.detach().clone()
    opt.step()
    torch.testing.assert_close(model.conv_proj.weight.detach(), w * (1 - 1e-3 * 0.1))
    torch.testing.assert_close(model.conv_proj.bias.detach(), b)


def test_bad_optimizer_name():
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adamw"):
        build_optimizer(torch.nn.Linear(2, 2), "lamb")


def test_plain_sgd_and_adamw_defaults():
    opt = build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.1, nesterov=False)
    assert not opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    opt = build_optimizer(torch.nn.Linear(2, 2), "adamw", lr=0.1)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["eps"] == 1e-8
    with pytest.raises(ValueError, match="betas must be two numbers"):
        build_optimizer(torch.nn.Linear(2, 2), "adamw", betas=[0.9])
