"""The model family of the paper: ResNeXt-101 32xCd (C = 4, 8, 16, 32, 48) and a tiny variant for tests.

    model = create_model("resnext101_32x8d", num_classes=1000, fused=True)
    feats = model.forward_features(images)      # [B, 2048]
    logits = model.fc(feats)                    # torchvision-style Linear head

State dicts are torchvision's resnext101_32x8d layout (for the same width).
"""
from __future__ import annotations

from .resnext import Bottleneck, ResNeXt

__all__ = ["ResNeXt", "Bottleneck", "create_model", "model_names", "resnext101_32x4d", "resnext101_32x8d",
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


def model_names() -> list[str]:
    return sorted(_CONFIGS)


def create_model(name: str, num_classes: int = 1000, fused: bool = True, zero_init_residual: bool = True) -> ResNeXt:
    """Builds a model by name (see model_names()); weights freshly initialized."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    return ResNeXt(**_CONFIGS[name], num_classes=num_classes, fused=fused, zero_init_residual=zero_init_residual)


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
