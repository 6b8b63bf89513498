"""The backbones: Mahajan et al.'s ResNeXt-101 32xCd (C = 4, 8, 16, 32, 48), SWAG's RegNetY-16/32/128GF and
ViT-B/16, L/16, H/14, and a tiny variant of each family for tests and the CPU demo.

    model = create_model("regnet_y_16gf", num_classes=1000, fused=True)
    model = create_model("vit_h_14", num_classes=1000, image_size=518)
    feats = model.forward_features(images)      # [B, model.num_features]
    logits = model.fc(feats)                    # the linear classifier (ViT: heads.head, by another name)

State dicts are torchvision's layouts (resnext101_32x8d's for every width, regnet_y_*, vit_*), so
torchvision-format checkpoints (WSL, SWAG) load unchanged; `classifier_keys(model)` names the head's keys.
"""
from __future__ import annotations

from torch import nn

from .regnet import REGNET_Y_PARAMS, RegNetY, RegNetYBlock, regnet_y_block_params
from .resnext import Bottleneck, ResNeXt
from .vit import VIT_PARAMS, SDPAttention, ViT

__all__ = ["ResNeXt", "Bottleneck", "RegNetY", "RegNetYBlock", "ViT", "SDPAttention", "create_model",
           "model_names", "model_family", "classifier_keys", "CLASSIFIER_PREFIXES", "resnext101_32x4d",
           "resnext101_32x8d",
           "resnext101_32x16d", "resnext101_32x32d", "resnext101_32x48d", "resnext_tiny"]

_CONFIGS = {
    "resnext101_32x4d": dict(layers=(3, 4, 23, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(layers=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_32x16d": dict(layers=(3, 4, 23, 3), groups=32, width_per_group=16),
    "resnext101_32x32d": dict(layers=(3, 4, 23, 3), groups=32, width_per_group=32),
    "resnext101_32x48d": dict(layers=(3, 4, 23, 3), groups=32, width_per_group=48),
    # One block per stage, stage widths 16/32/64/128 in 4 groups, 512 features: seconds on a CPU, and any
    # image of 32x32 or more (64x64 leaves 2x2 at the last stage).
    "resnext_tiny": dict(layers=(1, 1, 1, 1), groups=4, width_per_group=16, base_planes=16),
}


_REGNETS = ("regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "regnet_y_tiny")


def model_names() -> list[str]:
    return sorted([*_CONFIGS, *_REGNETS, *VIT_PARAMS])


def model_family(name: str) -> str:
    """'resnext' | 'regnet' | 'vit' (ValueError for an unknown name)."""
    if name in _CONFIGS:
        return "resnext"
    if name in _REGNETS:
        return "regnet"
    if name in VIT_PARAMS:
        return "vit"
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")


def create_model(name: str, num_classes: int = 1000, fused: bool = True, zero_init_residual: bool = True,
                 image_size: int = 224) -> nn.Module:
    """Builds a model by name (see model_names()); weights freshly initialized.

    fused: ResNeXt and RegNetY run their conv+BN(+ReLU) layers on wslfast.ops.conv_bn_relu (ViT has no
    BatchNorm; it always runs PyTorch's scaled-dot-product attention). zero_init_residual: the last BN gamma
    of each residual block starts at 0 (ResNeXt, RegNetY; ViT has none). image_size: ViT's input size (its
    position embeddings are per patch); the convolutional models take any size.
    """
    family = model_family(name)
    if family == "resnext":
        return ResNeXt(**_CONFIGS[name], num_classes=num_classes, fused=fused, zero_init_residual=zero_init_residual)
    if family == "regnet":
        return RegNetY(regnet_y_block_params(name), num_classes=num_classes,
                       stem_width=16 if name == "regnet_y_tiny" else 32, fused=fused,
                       zero_init_residual=zero_init_residual)
    return ViT(**VIT_PARAMS[name], num_classes=num_classes, image_size=image_size)


CLASSIFIER_PREFIXES = ("fc.", "heads.")  # ResNeXt/RegNetY fc.*, ViT heads.head.*: torchvision's names


def classifier_keys(model: nn.Module) -> tuple[str, ...]:
    """The state_dict keys of the model's linear classifier (fc.* or, for ViT, heads.*): what a transfer
    drops from a pretrained checkpoint before loading the backbone under a fresh head."""
    prefix = "heads." if isinstance(model, ViT) else "fc."
    return tuple(k for k in model.state_dict() if k.startswith(prefix))


def resnext101_32x4d(**kwargs) -> ResNeXt:
    return create_model("resnext101_32x4d", **kwargs)


def resnext101_32x8d(**kwargs) -> ResNeXt:
    return create_model("resnext101_32x8d", **kwargs)


def resnext101_32x16d(**kwargs) -> ResNeXt:
    return create_model("resnext101_32x16d", **kwargs)


def resnext101_32x32d(**kwargs) -> ResNeXt:
    return create_model("resnext101_32x32d", **kwargs)


def resnext101_32x48d(**kwargs) -> ResNeXt:
    return create_model("resnext101_32x48d", **kwargs)


def resnext_tiny(**kwargs) -> ResNeXt:
    return create_model("resnext_tiny", **kwargs)
