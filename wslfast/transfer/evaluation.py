"""Scores of a transferred model on the task's validation split, each rank scoring its own part of it and
the counts all-reduced (wslfast.transfer.scoring): fine-tuned models (evaluate) and zero-shot through the
hashtag head (evaluate_zeroshot, with its calibration beside the plain score).

Time: one forward pass per validation image; memory: a batch, and [3] counts.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..engine import Config, DistInfo
from .scoring import topk_hits, topk_percent
from .zeroshot import zeroshot_scores

__all__ = ["sync_buffers", "evaluate", "evaluate_zeroshot"]


def _val_loader(task, cfg: Config, info: DistInfo):
    from ..data.loaders import make_loader

    return make_loader("eval", task.val, cfg.batch_size, info.rank, info.world_size, device=info.device.type,
                       image_size=task.image_size, resize_size=task.resize_size, num_threads=cfg.num_threads,
                       validate=False)


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, so every rank evaluates the model rank 0 saves
    (with per-GPU BatchNorm each rank's last step moved its own)."""
    if info.enabled:
        for b in module.buffers():
            dist.broadcast(b, 0)


@torch.no_grad()
def evaluate(model, task, cfg: Config, info: DistInfo) -> tuple:
    """(top-1, top-5 or None) of model on the validation split, each rank scoring its own part."""
    sync_buffers(model, info)
    model.eval()
    loader = _val_loader(task, cfg, info)
    hits = torch.zeros(3, dtype=torch.float64, device=info.device)
    for images, y in loader:
        hits += topk_hits(model(images.float()).float(), y)
    if info.enabled:
        dist.all_reduce(hits)
    return topk_percent(hits.cpu(), len(task.classes))


@torch.no_grad()
def evaluate_zeroshot(model, task, cfg: Config, info: DistInfo, class_sets, log_prior) -> dict:
    """No training: each class scored from the pretrained hashtag head, pooled over its WordNet subtree;
    {"top1", "top5"[, "uncalibrated"]} with the calibration asked for (and the plain score beside it)."""
    model.eval()
    loader = _val_loader(task, cfg, info)
    calibrated = cfg.zeroshot_prior > 0 or cfg.zeroshot_temperature != 1
    hits = torch.zeros(2, 3, dtype=torch.float64, device=info.device)
    for images, y in loader:
        logits = model(images.float())
        hits[0] += topk_hits(zeroshot_scores(logits, class_sets, cfg.pooling, cfg.zeroshot_temperature, log_prior,
                                             cfg.zeroshot_prior), y)
        if calibrated:
            hits[1] += topk_hits(zeroshot_scores(logits, class_sets, cfg.pooling), y)
    if info.enabled:
        dist.all_reduce(hits)
    result = dict(zip(("top1", "top5"), topk_percent(hits[0].cpu(), len(task.classes))))
    if calibrated:
        result["uncalibrated"] = topk_percent(hits[1].cpu(), len(task.classes))[0]
    return result
