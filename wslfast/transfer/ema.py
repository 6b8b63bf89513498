"""Exponential moving average of a model's weights, as SWAG's fine-tuning recipe keeps and evaluates it.

    ema = ModelEMA(model, decay=0.9999, warmup_steps=int(0.05 * total_steps))
    ... optimizer.step(); ema.update(model)        # once per step
    evaluate(ema.module)                           # the averaged model (same class, eval-ready)

After each update: ema_w = decay * ema_w + (1 - decay) * w for every floating-point parameter AND buffer
(BatchNorm's running statistics are averaged too, so they match the averaged weights); integer buffers
(num_batches_tracked) are copied. During the first `warmup_steps` updates the average is reset to the
model (ema_w = w): early weights, far from the end point, are left out (ClassyVision's EMA `warmup`,
SWAG issue #8). The average is held in float32 whatever the model's dtype.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in [0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"ModelEMA: warmup_steps must be >= 0, got {warmup_steps}")
        self.decay, self.warmup_steps, self.updates = float(decay), int(warmup_steps), 0
        self.module = copy.deepcopy(model).float().eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards `model`'s current weights (same architecture)."""
        self.updates += 1
        src = model.state_dict()
        dst = self.module.state_dict()
        if src.keys() != dst.keys():
            raise ValueError("ModelEMA.update: the model's state_dict keys differ from the averaged copy's")
        copy_only = self.updates <= self.warmup_steps
        for key, avg in dst.items():
            value = src[key].detach()
            if copy_only or not avg.is_floating_point():
                avg.copy_(value)
            else:
                avg.lerp_(value.to(avg.dtype), 1.0 - self.decay)  # avg + (1-decay)(w - avg)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "warmup_steps": self.warmup_steps,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay, self.warmup_steps, self.updates = state["decay"], state["warmup_steps"], state["updates"]
