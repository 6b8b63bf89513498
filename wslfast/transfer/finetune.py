"""Fine-tuning of train/transfer.py, step by step, as pretrain.py trains: every weight of the backbone under a
fresh head, on the DALI training pipeline over an ImageFolder (a random-resized crop and a flip, new every
epoch, a fresh permutation of the whole split each epoch: memory does not grow with the split), DDP under
torchrun, SWAG's mixup / label smoothing / weight EMA / SyncBN when asked, and pretrain.py's run folder:
checkpoints every checkpoint_every steps, on SIGTERM/SIGUSR1 and at the end, `--resume auto` exact.

    result = finetune(model, task, cfg, info, folder, stop, say)     # {"top1", "top5"[, "last_weights"]}

The steps: build_finetune (pipeline, schedule in images seen, optimizer with the head's LR multiplier, EMA,
mixup generator), resume, train (train_step each step, save every checkpoint_every steps), evaluate. Run
plumbing: it reads the run's config keys (the fine-tuning section of train/transfer.py's TransferConfig).
Time: the training steps; memory: the model, its optimizer state (and EMA copy) and the pipeline's batches.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..engine import (CheckpointError, Config, ConfigError, DistInfo, LRSchedule, MetricsLogger, NonFiniteGuard,
                      StopSignals, broadcast_object, build_optimizer, capture_rng, checked_digest,
                      convert_sync_batchnorm, endless, find_resumable, gather_objects, guarded_update, load_checkpoint,
                      restore_rng, save_checkpoint)
from .evaluation import evaluate
from .mixup import mixup_batch, mixup_cross_entropy

__all__ = ["FinetuneRun", "head_lr_groups", "build_finetune", "resume", "save", "train_step", "train", "finetune"]


@dataclass
class FinetuneRun:
    """What a fine-tuning run is made of; resume(), save() and train() take it."""
    cfg: Config
    info: DistInfo
    folder: str
    loader: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    guard: NonFiniteGuard
    ema: object
    mix_gen: torch.Generator
    total_steps: int
    num_classes: int
    step: int = 0
    images_seen: int = 0


def head_lr_groups(optimizer: torch.optim.Optimizer, model: torch.nn.Module, mult: float) -> torch.optim.Optimizer:
    """The optimizer (before its first step) with each parameter group split in two: the backbone's (lr_mult 1)
    and the classifier's (lr_mult mult); train_step sets each group's LR to lr x lr_mult."""
    from ..models import CLASSIFIER_PREFIXES

    head = {id(p) for n, p in model.named_parameters() if n.startswith(CLASSIFIER_PREFIXES)}
    groups = []
    for group in optimizer.param_groups:
        rest = {k: v for k, v in group.items() if k != "params"}
        for params, lr_mult in (([p for p in group["params"] if id(p) not in head], 1.0),
                                ([p for p in group["params"] if id(p) in head], float(mult))):
            if params:
                groups.append({**rest, "params": params, "lr_mult": lr_mult})
    optimizer.param_groups.clear()  # regrouped in place: the optimizer's own class and settings stay
    for group in groups:
        optimizer.add_param_group(group)
    return optimizer


def build_finetune(cfg: Config, info: DistInfo, task, model, folder: str) -> FinetuneRun:
    """This rank's training pipeline, the schedule in images seen, the optimizer (head LR multiplier), the
    EMA and the mixup generator."""
    from ..data.loaders import make_loader
    from .ema import ModelEMA

    loader = make_loader("train", task.train, cfg.batch_size, info.rank, info.world_size, device=info.device.type,
                         image_size=task.image_size, seed=cfg.seed, num_threads=cfg.num_threads, validate=False)
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * len(loader)
    if total_steps < 1:
        raise ConfigError(f"nothing to fine-tune: {total_steps} steps (epochs, steps)")
    global_batch = cfg.batch_size * info.world_size
    peak = cfg.lr * global_batch / cfg.lr_batch if cfg.lr_batch else cfg.lr
    run_images = total_steps * global_batch
    schedule = LRSchedule(peak, run_images, round(cfg.warmup_fraction * run_images), "cosine", warmup_start_lr=0.0)
    try:
        optimizer = build_optimizer(model, cfg.optimizer, peak, cfg.weight_decay, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    optimizer = head_lr_groups(optimizer, model, cfg.head_lr_mult)
    ema = ModelEMA(model, cfg.ema, int(cfg.ema_warmup * total_steps)) if cfg.ema > 0 else None
    mix_gen = torch.Generator().manual_seed(cfg.seed + info.rank)
    return FinetuneRun(cfg, info, folder, loader, model, optimizer, schedule, NonFiniteGuard(model), ema, mix_gen,
                       total_steps, len(task.classes))


def resume(run: FinetuneRun) -> str | None:
    """The newest whole checkpoint in the run folder (rank 0 picks, every rank loads it) into the run;
    returns its path, or None for a fresh start."""
    info = run.info
    if run.cfg.resume == "none":
        return None
    path = broadcast_object(info, find_resumable(run.folder)[0] if info.is_main else None)
    if path is None:
        return None
    state = load_checkpoint(path, map_location="cpu")
    if state.get("world_size") != info.world_size:
        raise CheckpointError(f"{path} was written by {state.get('world_size')} ranks, this run has "
                              f"{info.world_size}: fine-tuning resumes with the same number of ranks (the data "
                              f"order and the LR scaling depend on it)")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.guard.load_state_dict(state.get("nonfinite", {}))
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.step, run.images_seen = int(state["step"]), int(state["images_seen"])
    run.loader.load_state_dict(state["loader"][info.rank])
    restore_rng(state["rng"][info.rank], info.device)
    run.mix_gen.set_state(state["mix_gen"][info.rank])
    return path


def save(run: FinetuneRun) -> str:
    """Gather every rank's data position, RNG states and weight digest; rank 0 checks and writes the
    checkpoint of run.step. Every rank returns its path."""
    info, model = run.info, run.model
    loaders = gather_objects(info, run.loader.state_dict())
    rngs = gather_objects(info, capture_rng(info.device))
    mix = gather_objects(info, run.mix_gen.get_state())
    digest = checked_digest(info, model, run.step)
    path = None
    if info.is_main:
        state = {"step": run.step, "images_seen": run.images_seen, "model": model.state_dict(),
                 "optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
                 "ema": run.ema.state_dict() if run.ema is not None else None, "loader": loaders, "rng": rngs,
                 "mix_gen": mix, "nonfinite": run.guard.state_dict(), "world_size": info.world_size,
                 "num_classes": run.num_classes, "config": dict(run.cfg), "weights_digest": digest}
        path = save_checkpoint(state, run.folder, run.step, run.cfg.keep_last)
    return broadcast_object(info, path)


def train_step(step_module, optimizer, guard: NonFiniteGuard, images, labels, lr: float, num_classes: int,
               info: DistInfo, step: int, mixup: float = 0.0, label_smoothing: float = 0.0, mix_gen=None,
               stop_requested: bool = False, autocast=None) -> tuple[torch.Tensor, bool, bool]:
    """One fine-tuning step on one batch (crops and flips come from the pipeline): each group's LR (lr x
    its lr_mult), SWAG's mixup with soft-target CE (and label smoothing) when asked, else plain CE; one
    small all-reduce so that every rank agrees on skipping a non-finite step and on stopping; the update.
    Returns (loss, skipped, stop): the loss a detached 0-d tensor."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    guard.snapshot()
    labels = labels.to(images.device)
    with autocast if autocast is not None else contextlib.nullcontext():
        if mixup > 0 or label_smoothing > 0:
            images, soft, _, _ = mixup_batch(images, labels, num_classes, mixup, mix_gen)
            loss = mixup_cross_entropy(step_module(images), soft, label_smoothing)
        else:
            loss = F.cross_entropy(step_module(images).float(), labels)
    return guarded_update(loss, optimizer, guard, info, step, stop_requested)


def train(run: FinetuneRun, step_module, log: MetricsLogger, stop: StopSignals) -> tuple:
    """Steps until total_steps or a stop signal; a log line every log_every steps, a checkpoint every
    checkpoint_every steps, on a stop and at the end. Returns (last checkpoint, what stopped the run or None)."""
    cfg, info = run.cfg, run.info
    global_batch = cfg.batch_size * info.world_size
    steps_per_epoch = max(len(run.loader), 1)
    batches = endless(run.loader, "the training pipeline")
    loss_sum, good_steps = torch.zeros((), device=info.device), 0
    window_start, data_wait = time.perf_counter(), 0.0
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else None
    last_checkpoint, stopped_by = None, None
    while run.step < run.total_steps:
        t0 = time.perf_counter()
        images, labels = next(batches)
        if autocast is None and images.dtype != torch.float32:
            images = images.float()  # the GPU pipeline hands out bf16
        data_wait += time.perf_counter() - t0
        lr = run.schedule(run.images_seen)
        loss, skipped, stop_now = train_step(step_module, run.optimizer, run.guard, images, labels, lr,
                                             run.num_classes, info, run.step, cfg.mixup, cfg.label_smoothing,
                                             run.mix_gen, stop.received is not None, autocast)
        if not skipped:
            if run.ema is not None:
                run.ema.update(run.model)
            loss_sum += loss.float()
            good_steps += 1
        run.step += 1
        run.images_seen += global_batch
        log.advance()
        if run.step % cfg.log_every == 0 or run.step == run.total_steps:
            mean_loss = loss_sum / max(good_steps, 1)
            if info.enabled:
                dist.all_reduce(mean_loss)
                mean_loss /= info.world_size
            elapsed = time.perf_counter() - window_start
            in_window = (run.step - 1) % cfg.log_every + 1
            log.log(run.step, {"epoch": f"{run.step / steps_per_epoch:.2f}", "loss": mean_loss.item(), "lr": lr,
                               "img_per_s": in_window * global_batch / elapsed, "data_share": data_wait / elapsed,
                               "skipped": run.guard.skipped})
            loss_sum.zero_()
            good_steps, data_wait, window_start = 0, 0.0, time.perf_counter()
        if stop_now:
            stopped_by = stop.name or "a signal on another rank"
        if run.step % cfg.checkpoint_every == 0 or run.step == run.total_steps or stopped_by:
            last_checkpoint = save(run)
            if stopped_by:
                break
    return last_checkpoint, stopped_by


def finetune(model, task, cfg: Config, info: DistInfo, folder: str, stop: StopSignals, say) -> dict | None:
    """Every weight trains (see the module docstring); say(text) prints (rank 0's); returns {"top1", "top5"[, "last_weights"]} on the
    validation split (the EMA's weights when ema > 0: they are what model ends up holding), or None when a
    signal stopped the run (its checkpoint is written)."""
    if cfg.sync_bn and info.world_size > 1:
        if hasattr(model, "set_fused"):
            model.set_fused(False)  # the fused conv+BN computes each rank's own statistics
        model = convert_sync_batchnorm(model, info.device)
    run = build_finetune(cfg, info, task, model, folder)
    resumed = resume(run)
    step_module = run.model
    if info.enabled:
        step_module = DDP(run.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                          gradient_as_bucket_view=True)
    log = MetricsLogger(folder, enabled=info.is_main, total_steps=run.total_steps, tensorboard=cfg.tensorboard,
                        start_step=run.step)
    global_batch = cfg.batch_size * info.world_size
    say(f"  fine-tuning {run.total_steps} steps ({run.total_steps / max(len(run.loader), 1):.1f} epochs of "
        f"{len(run.loader)} steps), batch {cfg.batch_size} x {info.world_size} = {global_batch}, "
        f"{run.schedule.describe()}, head lr x{cfg.head_lr_mult:g}"
        + (f", mixup {cfg.mixup:g}" if cfg.mixup else "") + (f", label smoothing {cfg.label_smoothing:g}"
                                                            if cfg.label_smoothing else "")
        + (f", EMA {cfg.ema:g}" if cfg.ema else "") + (", sync BN" if cfg.sync_bn and info.world_size > 1 else ""))
    say(f"  resumed from {resumed} at step {run.step}" if resumed else f"  starting from scratch in {folder}")
    if run.step >= run.total_steps:
        say(f"  run already complete at step {run.step}: evaluating its weights (a new --out or more --steps "
            f"trains again)")
    try:
        checkpoint, stopped_by = train(run, step_module, log, stop)
    finally:
        log.close()
    if stopped_by:
        say(f"stopped by {stopped_by} at step {run.step}; checkpoint {checkpoint}; run the same command again "
            f"to continue")
        return None
    result = {}
    if run.ema is not None:  # the raw weights' score too, for comparison; the EMA's is the result (and is saved)
        result["last_weights"] = evaluate(run.model, task, cfg, info)[0]
        say(f"  (finetune, last weights: top-1 {result['last_weights']:5.1f}%; EMA {cfg.ema} weights below)")
        run.model.load_state_dict(run.ema.module.state_dict())
    result["top1"], result["top5"] = evaluate(run.model, task, cfg, info)
    return result
