r"""Weakly supervised pretraining on hashtag shards (Mahajan et al. 2018, SWAG), one file, top to bottom.

With no arguments it runs the built-in demo: a synthetic hashtag corpus (made once, cached), its vocabulary
and shards, the tiny ResNeXt for a few minutes (GPU when present, else CPU), a checkpoint in runs/default.

    python train/pretrain.py                                        # the demo
    python train/pretrain.py --config train/configs/FILE.yaml --key value ...
    torchrun --nproc-per-node=8 train/pretrain.py --config train/configs/resnext101_32x8d_ig940m_1.5k.yaml
    # several machines (the same command on each; HOST is node 0; a killed worker brings the job back from
    # the last checkpoint by itself, since resume=auto is the default; a node that stays away ends the job
    # after dist_timeout seconds, or after the rendezvous's join timeout):
    torchrun --nnodes=42 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=JOB \
        --max-restarts=3 train/pretrain.py --config train/configs/resnext101_32x16d_ig3.5b_17k.yaml
    # SLURM (one task per node; `out` must be on a filesystem every node sees):
    srun --nodes=42 --ntasks-per-node=1 --signal=USR1@300 bash -c 'torchrun --nnodes=$SLURM_NNODES \
        --nproc-per-node=8 --rdzv-id=$SLURM_JOB_ID --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29400 \
        train/pretrain.py --config ...'

Every key below can be set in the YAML file or as --key value (`--help` lists them with their types;
`--debug` shows tracebacks where a mistake otherwise ends in one `error:` line). The config is written to
out/run.json when the run starts; out holding a different run is refused (one line says what differs).
Checkpoints (model, optimizer, data position, RNG states, step, config) are written by rank 0 every
checkpoint_every steps, on SIGTERM/SIGUSR1 and at the end; rerunning the same command resumes from the
newest whole one (resume=auto). On CPU a resumed run ends bit-identical to an uninterrupted one; on GPU up
to the non-determinism of cuDNN/cuBLAS (algorithm choice) and of NCCL's reduction order (wslfast's own
kernels reduce in a fixed order).
"""
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Tuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from wslfast.engine import (Config, ConfigError, DistInfo, HashtagObjective, LRSchedule,  # noqa: E402
                            MetricsLogger, NonFiniteGuard, NonFiniteLossError, StopSignals, broadcast_object,
                            build_optimizer, capture_rng, checked_digest, claim_run_folder, cleanup_distributed,
                            command_line, convert_sync_batchnorm, endless, exit_on_peer_failure, find_resumable,
                            format_duration, gather_objects, guarded_update, load_checkpoint, peak_learning_rate,
                            peak_memory, restore_rng, save_checkpoint, seed_everything, setup_distributed)


# Top to bottom: PretrainConfig (every key, its type and help), then the steps main() takes: build_schedule,
# build_data, build_model, resume, and train (train_step each step, save every checkpoint_every steps).
@dataclass
class PretrainConfig:
    """Every key of a pretraining run, with its type, default and help (shown by --help)."""
    SECTIONS: ClassVar[dict] = {"data": "data", "arch": "model",
                                "batch_size": "optimisation (Goyal et al. 2017 / Mahajan et al. 2018)", "out": "run"}

    data: str = "synthetic"
    """"synthetic" (the demo corpus, built once under cache_dir) or a folder of shards"""
    synthetic_images: int = 2000
    """demo corpus: number of images"""
    synthetic_classes: int = 10
    """demo corpus: classes of its transfer task (train/transfer.py's demo)"""
    sampling: Literal["natural", "sqrt", "uniform"] = "natural"
    """demo corpus: hashtag resampling (natural, square-root or uniform; Mahajan et al.)"""
    cache_dir: str = ""
    """where the demo corpus is built; "" -> $WSLFAST_CACHE, else ~/.cache/wslfast"""
    image_size: int = 64
    """training crop size in pixels"""
    num_threads: int = 2
    """data loader threads per rank"""

    arch: str = "resnext_tiny"
    """a wslfast.models name: resnext101_32x8d, regnet_y_16gf, vit_b_16, ..., or a *_tiny demo model"""
    zero_init_residual: bool = True
    """the last BN gamma of each residual block starts at 0 (Goyal et al. 2017)"""
    fused: bool = True
    """wslfast's fused ops (conv+BN+ReLU, classifier+loss); false: stock PyTorch"""
    channels_last: bool = True
    """NHWC memory format"""
    compile: bool = False
    """torch.compile the training step"""
    sync_bn: bool = False
    """BatchNorm statistics over all ranks (runs the stock conv layers); false: per-GPU BN, as the paper"""
    amp: Literal["none", "bf16"] = "none"
    """mixed precision: none (fp32) or bf16 autocast"""

    batch_size: int = 32
    """images per rank; the global batch is this x the number of ranks"""
    lr: Optional[float] = None
    """peak learning rate; null -> 0.1 x global batch / 256 (the paper's rule; on the demo data
    0.4 x global batch / 32, its tiny model learns faster); AdamW configs give theirs"""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (momentum, nesterov; ResNeXt, RegNetY) or adamw (betas, adam_eps; ViT)"""
    momentum: float = 0.9
    """SGD momentum"""
    nesterov: bool = True
    """SGD with Nesterov momentum"""
    betas: Optional[Tuple[float, float]] = None
    """AdamW betas; null -> [0.9, 0.999]"""
    adam_eps: float = 1e-8
    """AdamW epsilon"""
    weight_decay: float = 1e-4
    """weight decay (AdamW: on weight matrices and kernels only)"""
    total_images: int = 32_000
    """length of the run in images"""
    steps: Optional[int] = None
    """length of the run in steps; wins over total_images when set"""
    warmup_fraction: float = 0.1
    """linear warm-up over this fraction of the run"""
    warmup_images: Optional[int] = None
    """warm-up length in images instead of warmup_fraction (at most half the run)"""
    warmup_start_lr: Optional[float] = None
    """the LR the warm-up starts from; null -> 0.1 (one 256-image batch), capped at the peak"""
    lr_schedule: Literal["step", "cosine", "constant"] = "step"
    """after the warm-up: step halvings, a cosine down to min_lr, or constant"""
    halvings: int = 2
    """step schedule: the peak LR is halved this many times, equally spaced"""
    min_lr: float = 0.0
    """cosine schedule: the LR at the end"""
    max_nonfinite: int = 10
    """non-finite steps are skipped; this many in a row stop the run"""

    out: str = "runs/default"
    """the run's folder: run.json, checkpoints, metrics.jsonl, TensorBoard events"""
    resume: str = "auto"
    """auto (the newest whole checkpoint in out, if any), none, or the PATH of a checkpoint"""
    checkpoint_every: int = 200
    """steps between checkpoints (also written on SIGTERM/SIGUSR1 and at the end)"""
    keep_last: int = 3
    """checkpoints kept in out (0: all)"""
    seed: int = 0
    """base seed; rank r draws from seed + r"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: a GPU when present, else the CPU"""
    log_every: int = 10
    """steps between log lines and metrics records"""
    tensorboard: bool = True
    """also write TensorBoard events to out"""
    dist_timeout: int = 600
    """seconds a collective may wait for a peer before failing"""


def check_config(cfg: Config) -> None:
    """What the types cannot say: counts that must be positive."""
    for key in ("batch_size", "checkpoint_every", "log_every", "max_nonfinite"):
        if cfg[key] < 1:
            raise ConfigError(f"key {key!r}: expected an integer >= 1, got {cfg[key]}")


def build_schedule(cfg: Config, global_batch: int) -> tuple[LRSchedule, int, str]:
    """(LR schedule over images seen, the run's steps, how the peak LR was chosen)."""
    total_steps = cfg.steps if cfg.steps is not None else math.ceil(cfg.total_images / global_batch)
    if total_steps < 1:
        raise ConfigError(f"nothing to train: {total_steps} steps (steps, total_images)")
    peak_lr, lr_rule = peak_learning_rate(cfg.lr, cfg.optimizer, global_batch, demo_data=cfg.data == "synthetic")
    run_images = total_steps * global_batch
    # Warm-up and the halvings are fractions of the run, so a short run also warms up, peaks and decays.
    warmup = round(cfg.warmup_fraction * run_images) if cfg.warmup_images is None else cfg.warmup_images
    try:
        schedule = LRSchedule(peak_lr, run_images, max(0, min(warmup, run_images // 2)), cfg.lr_schedule,
                              cfg.halvings, cfg.warmup_start_lr, cfg.min_lr)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return schedule, total_steps, lr_rule


def build_data(cfg: Config, info: DistInfo):
    """This rank's training loader: endless epochs of (images, SparseTargets) over its part of the shards
    (the demo corpus is built first when data=synthetic)."""
    from wslfast.engine.datasets import prepare_shards

    shards = prepare_shards(cfg, info)
    from wslfast.data.loaders import train_loader  # after prepare_shards: the import is slow

    return train_loader(shards, cfg.batch_size, rank=info.rank, world_size=info.world_size,
                        device=info.device.type, image_size=cfg.image_size, seed=cfg.seed,
                        num_threads=cfg.num_threads)


def build_model(cfg: Config, info: DistInfo, num_classes: int) -> torch.nn.Module:
    """The backbone with its hashtag classifier, the same initial weights on every rank, on the device."""
    from wslfast.models import create_model

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = create_model(cfg.arch, num_classes=num_classes, fused=cfg.fused,
                         zero_init_residual=cfg.zero_init_residual, image_size=cfg.image_size)
    torch.manual_seed(cfg.seed + info.rank)  # back to this rank's own stream
    if cfg.sync_bn and info.world_size > 1:
        # The fused conv+BN op computes each GPU's own statistics, so synchronised BN runs the stock conv layers
        # (the loss stays fused); as in the paper, per-GPU BN (the default) is the fast path.
        if hasattr(model, "set_fused"):
            model.set_fused(False)
        model = convert_sync_batchnorm(model, info.device)
    return model.to(info.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)


@dataclass
class Run:
    """What a pretraining run is made of, built by main() step by step; save() and resume() take it."""
    cfg: Config
    info: DistInfo
    loader: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    guard: NonFiniteGuard
    step: int = 0
    images_seen: int = 0


def resume(run: Run) -> str | None:
    """Load the checkpoint cfg.resume names (auto: rank 0 picks the newest whole one in out, every rank
    loads that file) into the run; returns its path, or None for a fresh start."""
    cfg, info = run.cfg, run.info
    if cfg.resume in ("none", ""):
        return None
    if cfg.resume == "auto":
        path = broadcast_object(info, find_resumable(cfg.out)[0] if info.is_main else None)
    else:
        path = cfg.resume
    if path is None:
        return None
    state = load_checkpoint(path, map_location="cpu")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.guard.load_state_dict(state.get("nonfinite", {}))
    run.step, run.images_seen = int(state["step"]), int(state.get("images_seen", 0))
    try:
        if state.get("world_size") != info.world_size:
            raise ValueError(f"written by {state.get('world_size')} ranks, this run has {info.world_size}")
        run.loader.load_state_dict(state["loader"][info.rank])  # refuses a changed batch size, seed, ...
        restore_rng(state["rng"][info.rank], info.device)
    except ValueError as e:
        if info.is_main:
            print(f"resume: data position not restored ({e}); weights, optimizer and schedule are")
    return path


def save(run: Run) -> str:
    """Gather every rank's data position, RNG states and weight digest; rank 0 checks and writes the
    checkpoint of run.step. Every rank returns its path."""
    info, model = run.info, run.model
    loaders = gather_objects(info, run.loader.state_dict())
    rngs = gather_objects(info, capture_rng(info.device))
    digest = checked_digest(info, model, run.step)  # finite and the same on every rank, or all stop
    path = None
    if info.is_main:
        state = {"step": run.step, "images_seen": run.images_seen, "model": model.state_dict(),
                 "optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
                 "loader": loaders, "rng": rngs, "nonfinite": run.guard.state_dict(),
                 "world_size": info.world_size, "num_classes": run.loader.num_classes, "arch": run.cfg.arch,
                 "config": dict(run.cfg), "weights_digest": digest}
        path = save_checkpoint(state, run.cfg.out, run.step, run.cfg.keep_last)
    return broadcast_object(info, path)


def train_step(step_module, optimizer, guard: NonFiniteGuard, images, targets, lr: float, info: DistInfo,
               step: int, stop_requested: bool = False, autocast=None) -> tuple[torch.Tensor, bool, bool]:
    """One optimisation step on one batch: the LR, forward and backward, then one small all-reduce (the
    step's one host sync) so that every rank agrees on skipping a non-finite step and on stopping, then the
    update. Returns (loss, skipped, stop): the loss a detached 0-d tensor, skipped and stop as bools."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    guard.snapshot()
    with autocast if autocast is not None else contextlib.nullcontext():
        loss = step_module(images, targets)
    return guarded_update(loss, optimizer, guard, info, step, stop_requested)


def train(run: Run, step_module, log: MetricsLogger, total_steps: int, stop: StopSignals) -> tuple:
    """Steps until total_steps or a stop signal, logging every log_every steps and checkpointing every
    checkpoint_every steps, on a stop and at the end. Returns (last logged loss, last checkpoint, what
    stopped the run or None)."""
    cfg, info, device = run.cfg, run.info, run.info.device
    global_batch = cfg.batch_size * info.world_size
    last_loss, final_checkpoint, stopped_by = None, None, None
    batch_iter = endless(run.loader, "the shards' loader")
    loss_sum = torch.zeros((), device=device)
    good_steps = 0
    window_start, data_wait = time.perf_counter(), 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
    if run.step >= total_steps and info.is_main:
        log.print(f"run already complete at step {run.step} ({cfg.out}); give --out or --steps to train more")
    while run.step < total_steps:
        t0 = time.perf_counter()
        images, targets = next(batch_iter)
        if cfg.amp == "none" and images.dtype != torch.float32:
            images = images.float()  # the GPU loader hands out bf16; fp32 training wants fp32
        data_wait += time.perf_counter() - t0
        lr = run.schedule(run.images_seen)
        loss, skipped, stop_now = train_step(step_module, run.optimizer, run.guard, images, targets, lr, info,
                                             run.step, stop.received is not None, autocast)
        if not skipped:
            loss_sum += loss.float()
            good_steps += 1
        run.step += 1
        run.images_seen += global_batch
        log.advance()
        if run.step % cfg.log_every == 0 or run.step == total_steps:
            mean_loss = loss_sum / max(good_steps, 1)
            if info.enabled:
                dist.all_reduce(mean_loss)
                mean_loss /= info.world_size
            elapsed = time.perf_counter() - window_start
            steps_in_window = (run.step - 1) % cfg.log_every + 1
            last_loss = mean_loss.item()
            log.log(run.step, {"loss": last_loss, "lr": lr, "images": run.images_seen,
                               "img_per_s": steps_in_window * global_batch / elapsed,
                               "data_share": data_wait / elapsed, "skipped": run.guard.skipped})
            loss_sum.zero_()
            good_steps, data_wait, window_start = 0, 0.0, time.perf_counter()
        if stop_now:
            stopped_by = stop.name or "a signal on another rank"
        if run.step % cfg.checkpoint_every == 0 or run.step == total_steps or stopped_by:
            final_checkpoint = save(run)
            if stopped_by:
                log.print(f"stopped by {stopped_by} at step {run.step}; checkpoint {final_checkpoint}; "
                          f"run the same command again to continue")
                break
    return last_loss, final_checkpoint, stopped_by


def main(argv=None) -> int:
    cfg = command_line(PretrainConfig, __doc__, argv)
    check_config(cfg)
    info = setup_distributed(cfg.device, cfg.dist_timeout)
    t_start = time.perf_counter()
    global_batch = cfg.batch_size * info.world_size
    schedule, total_steps, lr_rule = build_schedule(cfg, global_batch)  # before any work: it checks the config
    seed_everything(cfg.seed + info.rank)  # every rank its own stream (augmentations, ...)
    claim_run_folder(info, cfg.out, cfg, cfg.resume)  # out is this run's alone; run.json written

    loader = build_data(cfg, info)
    model = build_model(cfg, info, loader.num_classes)
    objective = HashtagObjective(model, fused=cfg.fused)
    try:
        optimizer = build_optimizer(model, cfg.optimizer, schedule.peak_lr, cfg.weight_decay,
                                    momentum=cfg.momentum, nesterov=cfg.nesterov, betas=cfg.betas, eps=cfg.adam_eps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    run = Run(cfg, info, loader, model, optimizer, schedule, NonFiniteGuard(model, cfg.max_nonfinite))
    resume_path = resume(run)

    step_module = objective
    if info.enabled:
        step_module = DDP(objective, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                          gradient_as_bucket_view=True)
    if cfg.compile:
        step_module = torch.compile(step_module)

    log = MetricsLogger(cfg.out, enabled=info.is_main, total_steps=total_steps, tensorboard=cfg.tensorboard,
                        start_step=run.step)
    if info.is_main:
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.print(f"pretrain: {cfg.arch} ({n_params / 1e6:.2f}M params, {loader.num_classes} hashtags), "
                  f"{info.world_size} x {info.device.type}, batch {cfg.batch_size} x {info.world_size} = "
                  f"{global_batch}, {total_steps} steps, {schedule.describe()} ({lr_rule}), "
                  f"{'fused wslfast ops' if cfg.fused else 'stock PyTorch'}")
        log.print(f"resumed from {resume_path} at step {run.step}" if resume_path else "starting from scratch")

    exit_code, last_loss, final_checkpoint, stopped_by = 0, None, None, None
    with StopSignals() as stop:
        try:
            last_loss, final_checkpoint, stopped_by = train(run, step_module, log, total_steps, stop)
        except NonFiniteLossError as e:
            log.print(f"error: {e}")
            exit_code = 3
        except Exception as e:
            exit_on_peer_failure(e, info, cfg.debug)  # a peer died: one line and exit(1); else re-raised
            raise
    if exit_code == 0 and info.is_main and run.step >= total_steps and stopped_by is None:
        first_loss = (log.first or {}).get("loss")  # the run's first record, kept across resumes
        if first_loss is not None and last_loss is not None:
            log.print(f"done: loss {first_loss:.4f} (first logged) -> {last_loss:.4f} (last logged)")
        log.print(f"time {format_duration(time.perf_counter() - t_start)} in all "
                  f"(training {format_duration(log.elapsed())}), {peak_memory(info.device)}")
        log.print(f"checkpoint: {final_checkpoint or resume_path}")  # this run's own, never an older file
    log.close()
    cleanup_distributed(info)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
