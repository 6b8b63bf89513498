"""The optimizer of a pretraining or fine-tuning run, by name: SGD (ResNeXt, RegNetY) or AdamW (ViT).

    optimizer = build_optimizer(cfg, model)     # cfg.optimizer: sgd | adamw; cfg.lr, cfg.weight_decay, ...

sgd: momentum (Nesterov by default) and weight decay on every parameter, as Mahajan et al. 2018 (and
SWAG's RegNetY). adamw: betas (cfg.betas, default (0.9, 0.999)); weight decay on the weight matrices and
convolution kernels only: biases, norm scales/shifts (every 1-D parameter), the class token and the
position embeddings are not decayed (the usual ViT practice; DeiT, timm, SWAG's ClassyVision configs).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "build_optimizer", "no_decay_param_names"]

OPTIMIZERS = ("sgd", "adamw")
_NO_DECAY_NAMES = ("class_token", "pos_embedding")


def no_decay_param_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters()
            if p.requires_grad and (p.dim() <= 1 or n.split(".")[-1] in _NO_DECAY_NAMES)}


def _get(cfg, key, default):
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def build_optimizer(cfg, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """cfg: a mapping or object with optimizer, lr, weight_decay, momentum, nesterov, betas (missing keys
    take the defaults above). lr overrides cfg.lr (the scripts pass their computed peak)."""
    name = str(_get(cfg, "optimizer", "sgd")).lower()
    lr = float(lr if lr is not None else _get(cfg, "lr", 0.1))
    wd = float(_get(cfg, "weight_decay", 1e-4))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD([p for _, p in params], lr=lr, momentum=float(_get(cfg, "momentum", 0.9)),
                               nesterov=bool(_get(cfg, "nesterov", True)), weight_decay=wd)
    if name == "adamw":
        betas = tuple(float(b) for b in _get(cfg, "betas", (0.9, 0.999)))
        if len(betas) != 2:
            raise ValueError(f"build_optimizer: betas must be two numbers, got {betas}")
        skip = no_decay_param_names(model)
        groups = [{"params": [p for n, p in params if n not in skip], "weight_decay": wd},
                  {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas,
                                 eps=float(_get(cfg, "adam_eps", 1e-8)))
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
