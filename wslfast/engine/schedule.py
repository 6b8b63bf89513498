"""Learning-rate schedules indexed by images seen, so they do not change when the batch size does.

Linear warm-up (Goyal et al. 2017): from warmup_start_lr to the peak LR over the first warmup_images, then
  step:     the peak halved `halvings` times at equally spaced points over the rest of the run
            (Mahajan et al. 2018 use step halvings after warm-up),
  cosine:   half a cosine from the peak down to min_lr at total_images,
  constant: the peak until the end.

The peak itself comes from peak_learning_rate: the one given, else the linear scaling rule for SGD.
"""
from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["LRSchedule", "SCHEDULES", "peak_learning_rate"]

SCHEDULES = ("step", "cosine", "constant")


def peak_learning_rate(lr: float | None, optimizer: str, global_batch: int, demo_data: bool = False
                       ) -> tuple[float, str]:
    """(peak LR, how it was chosen). A given lr wins; else, for SGD, the linear scaling rule on the global
    batch: the paper's 0.1 x batch/256 (Goyal et al. 2017, Mahajan et al. 2018), or 0.4 x batch/32 on the
    demo corpus (its tiny model learns faster). AdamW has no such rule here: it needs lr."""
    if lr is not None:
        return float(lr), "given"
    if optimizer != "sgd":
        raise ConfigError(f"optimizer {optimizer} needs --lr (the paper's rule, 0.1 x batch/256, is SGD's)")
    if global_batch < 1:
        raise ConfigError(f"the global batch must be >= 1, got {global_batch}")
    if demo_data:
        return 0.4 * global_batch / 32, "demo rule 0.4 x batch/32"
    return 0.1 * global_batch / 256, "paper's rule 0.1 x batch/256"


class LRSchedule:
    def __init__(self, peak_lr: float, total_images: int, warmup_images: int = 0, kind: str = "step",
                 halvings: int = 1, warmup_start_lr: float | None = None, min_lr: float = 0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"LRSchedule: kind must be one of {SCHEDULES}, got {kind!r}")
        if not (peak_lr > 0 and math.isfinite(peak_lr)):
            raise ValueError(f"LRSchedule: peak_lr must be a positive number, got {peak_lr!r}")
        if total_images <= 0:
            raise ValueError(f"LRSchedule: total_images must be positive, got {total_images}")
        if not 0 <= warmup_images <= total_images:
            raise ValueError(f"LRSchedule: warmup_images must lie in [0, total_images={total_images}], "
                             f"got {warmup_images}")
        if halvings < 0:
            raise ValueError(f"LRSchedule: halvings must be >= 0, got {halvings}")
        self.peak_lr, self.total_images, self.warmup_images = float(peak_lr), int(total_images), int(warmup_images)
        self.kind, self.halvings, self.min_lr = kind, int(halvings), float(min_lr)
        # Goyal et al. start the ramp at the LR of one 256-image batch (0.1); never above the peak.
        start = 0.1 if warmup_start_lr is None else float(warmup_start_lr)
        self.warmup_start_lr = min(start, self.peak_lr)

    def __call__(self, images_seen: int) -> float:
        """The LR for the step that starts after images_seen images."""
        x = max(0, int(images_seen))
        if x < self.warmup_images:
            frac = x / self.warmup_images
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * frac
        rest = self.total_images - self.warmup_images
        if rest <= 0:
            return self.peak_lr
        progress = min(1.0, (x - self.warmup_images) / rest)
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "cosine":
            return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        # step: halvings+1 equal stretches after warm-up; stretch i runs at peak / 2**i.
        stretch = min(self.halvings, int(progress * (self.halvings + 1)))
        return self.peak_lr * 0.5 ** stretch

    def state_dict(self) -> dict:
        """The schedule's parameters (it holds no other state: the LR is a function of images seen)."""
        return {"kind": self.kind, "peak_lr": self.peak_lr, "total_images": self.total_images,
                "warmup_images": self.warmup_images, "warmup_start_lr": self.warmup_start_lr,
                "halvings": self.halvings, "min_lr": self.min_lr}

    def describe(self) -> str:
        return (f"{self.kind} schedule, peak lr {self.peak_lr:g}, warm-up {self.warmup_images} images from "
                f"{self.warmup_start_lr:g}" + (f", {self.halvings} halvings" if self.kind == "step" else ""))
