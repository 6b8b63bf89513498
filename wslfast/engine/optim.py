"""The optimizer of a pretraining or fine-tuning run, by name: SGD (ResNeXt, RegNetY) or AdamW (ViT).

    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.9, nesterov=True)

sgd: momentum (Nesterov by default) and weight decay on every parameter, as Mahajan et al. 2018 (and
SWAG's RegNetY). adamw: betas (default (0.9, 0.999)) and eps; weight decay on the weight matrices and
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


def build_optimizer(model: nn.Module, optimizer: str = "sgd", lr: float = 0.1, weight_decay: float = 1e-4,
                    momentum: float = 0.9, nesterov: bool = True, betas=None, eps: float = 1e-8
                    ) -> torch.optim.Optimizer:
    """The optimizer over model's trainable parameters. sgd reads momentum and nesterov; adamw reads betas
    (None -> (0.9, 0.999)) and eps. Every setting is an argument: the scripts pass their declared keys."""
    name = str(optimizer).lower()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    lr, weight_decay = float(lr), float(weight_decay)
    if name == "sgd":
        return torch.optim.SGD([p for _, p in params], lr=lr, momentum=float(momentum), nesterov=bool(nesterov),
                               weight_decay=weight_decay)
    if name == "adamw":
        betas = (0.9, 0.999) if betas is None else tuple(float(b) for b in betas)
        if len(betas) != 2:
            raise ValueError(f"build_optimizer: betas must be two numbers, got {betas}")
        skip = no_decay_param_names(model)
        groups = [{"params": [p for n, p in params if n not in skip], "weight_decay": weight_decay},
                  {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=float(eps))
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
