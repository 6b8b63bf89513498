r"""Weakly supervised pretraining of ResNeXt on hashtag shards (Mahajan et al. 2018), one file, top to bottom.

With no arguments it runs the built-in demo: a synthetic hashtag corpus (made once, cached), its vocabulary
and shards, the tiny ResNeXt for a few minutes (GPU when present, else CPU), a checkpoint in runs/default.

    python train/pretrain.py                                        # the demo
    python train/pretrain.py --config train/configs/FILE.yaml --key value ...
    torchrun --nproc-per-node=8 train/pretrain.py --config train/configs/resnext101_32x8d_ig1b_1.5k.yaml
    # several machines (the same command on each; HOST is node 0; a killed worker brings the job back from
    # the last checkpoint by itself, since resume=auto is the default; a node that stays away ends the job
    # after dist_timeout seconds, or after the rendezvous's join timeout):
    torchrun --nnodes=42 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=JOB \
        --max-restarts=3 train/pretrain.py --config train/configs/resnext101_32x16d_ig3.5b_17k.yaml
    # SLURM (one task per node; `out` must be on a filesystem every node sees):
    srun --nodes=42 --ntasks-per-node=1 --signal=USR1@300 bash -c 'torchrun --nnodes=$SLURM_NNODES \
        --nproc-per-node=8 --rdzv-id=$SLURM_JOB_ID --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29400 \
        train/pretrain.py --config ...'

Every key below can be set in the YAML file or as --key value (`--help` lists them; `--debug` shows
tracebacks where a mistake otherwise ends in one `error:` line). The config is written to out/run.json
when the run starts; out holding a different run is refused (one line says what differs). Checkpoints
(model, optimizer, data position, RNG states, step, config) are written by rank 0 every checkpoint_every
steps, on SIGTERM/SIGUSR1 and at the end; rerunning the same command resumes from the newest whole one
(resume=auto). On CPU a resumed run ends bit-identical to an uninterrupted one; on GPU up to the
non-determinism of cuDNN/cuBLAS (algorithm choice) and of NCCL's reduction order (wslfast's own kernels
reduce in a fixed order).
"""
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from wslfast.data.demo import prepare_shards  # noqa: E402
from wslfast.engine import (HashtagObjective, LRSchedule, MetricsLogger, NonFiniteGuard,  # noqa: E402
                            NonFiniteLossError, RunFolderError, StopSignals, all_ranks_max, broadcast_object,
                            capture_rng, check_run_folder, cleanup_distributed, command_line,
                            convert_sync_batchnorm, find_resumable, format_duration, gather_objects,
                            load_checkpoint, nonfinite_flag, params_digest, peak_memory, peer_failure,
                            restore_rng, save_checkpoint, seed_everything, setup_distributed, write_run_file)

DEFAULTS = dict(
    # data: "synthetic" (the demo corpus, built once under cache_dir) or a folder of shards
    data="synthetic", synthetic_images=2000, synthetic_classes=10, sampling="natural", cache_dir="",
    image_size=64, num_threads=2,
    # model
    arch="resnext_tiny", zero_init_residual=True, fused=True, channels_last=True, compile=False,
    sync_bn=False, amp="none",                  # amp: none | bf16
    # optimisation (Goyal et al. 2017 / Mahajan et al. 2018). lr null -> 0.1 x global batch / 256, the
    # paper's rule; on the demo data 0.4 x global batch / 32 (its tiny model learns faster). AdamW configs
    # give their lr. optimizer: sgd (momentum, nesterov) | adamw (betas, null -> [0.9, 0.999]; ViT)
    batch_size=32, lr=None, optimizer="sgd", momentum=0.9, nesterov=True, betas=None, weight_decay=1e-4,
    total_images=32_000, steps=None,            # steps, when set, wins over total_images
    warmup_fraction=0.1, warmup_images=None,    # warm-up: a fraction of the run (or, given, images; <= half)
    warmup_start_lr=None,                       # null -> 0.1 (one 256-image batch), capped at the peak
    lr_schedule="step", halvings=2, min_lr=0.0,  # lr_schedule: step | cosine | constant
    max_nonfinite=10,
    # run
    out="runs/default", resume="auto",          # resume: auto | none | PATH
    checkpoint_every=200, keep_last=3, seed=0, device="auto", log_every=10, tensorboard=True,
    dist_timeout=600,                           # seconds a collective may wait for a peer before failing
)

cfg = command_line(DEFAULTS, __doc__)
info = setup_distributed(cfg.device, cfg.dist_timeout)
device, is_main = info.device, info.is_main
t_start = time.perf_counter()
if cfg.amp not in ("none", "bf16"):
    raise SystemExit(f"amp must be none or bf16, got {cfg.amp!r}")
if cfg.batch_size < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1:
    raise SystemExit("batch_size, checkpoint_every and log_every must be >= 1")
seed_everything(cfg.seed + info.rank)  # every rank its own stream (augmentations, ...)

# ---------------------------------------------------------------- run folder: this run's alone
problem = None
if is_main:
    try:
        check_run_folder(cfg.out, cfg, cfg.resume)
        write_run_file(cfg.out, cfg)
    except RunFolderError as e:
        problem = str(e)
if broadcast_object(info, problem):
    raise RunFolderError(problem) if is_main else SystemExit(1)  # rank 0 alone says why

# ---------------------------------------------------------------- data
shards = prepare_shards(cfg, info)
from wslfast.data.loaders import train_loader  # noqa: E402  (after prepare_shards: import is slow)

loader = train_loader(shards, cfg.batch_size, rank=info.rank, world_size=info.world_size,
                      device=device.type, image_size=cfg.image_size, seed=cfg.seed, num_threads=cfg.num_threads)
num_classes = loader.num_classes
global_batch = cfg.batch_size * info.world_size
total_steps = cfg.steps if cfg.steps is not None else math.ceil(cfg.total_images / global_batch)
if total_steps < 1:
    raise SystemExit(f"nothing to train: {total_steps} steps")
if cfg.lr is not None:
    peak_lr, lr_rule = cfg.lr, "given"
elif cfg.optimizer != "sgd":
    raise SystemExit(f"optimizer {cfg.optimizer} needs --lr (the paper's rule, 0.1 x batch/256, is SGD's)")
elif cfg.data == "synthetic":
    peak_lr, lr_rule = 0.4 * global_batch / 32, "demo rule 0.4 x batch/32"
else:
    peak_lr, lr_rule = 0.1 * global_batch / 256, "paper's rule 0.1 x batch/256"
run_images = total_steps * global_batch
# Warm-up and the halvings are fractions of the run, so a short run also warms up, peaks and decays.
warmup = round(cfg.warmup_fraction * run_images) if cfg.warmup_images is None else cfg.warmup_images
schedule = LRSchedule(peak_lr, run_images, max(0, min(warmup, run_images // 2)), cfg.lr_schedule, cfg.halvings,
                      cfg.warmup_start_lr, cfg.min_lr)

# ---------------------------------------------------------------- model, loss, optimizer
from wslfast.models import create_model  # noqa: E402

torch.manual_seed(cfg.seed)  # the same initial weights on every rank
model = create_model(cfg.arch, num_classes=num_classes, fused=cfg.fused, zero_init_residual=cfg.zero_init_residual,
                     image_size=cfg.image_size)
torch.manual_seed(cfg.seed + info.rank)  # back to this rank's own stream
if cfg.sync_bn and info.world_size > 1:
    # The fused conv+BN op computes each GPU's own statistics, so synchronised BN runs the stock conv layers
    # (the loss stays fused); as in the paper, per-GPU BN (the default) is the fast path.
    if hasattr(model, "set_fused"):
        model.set_fused(False)
    model = convert_sync_batchnorm(model, device)
model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
objective = HashtagObjective(model, fused=cfg.fused)
params = [p for p in model.parameters() if p.requires_grad]
from wslfast.engine.optim import build_optimizer  # noqa: E402

try:
    optimizer = build_optimizer(cfg, model, lr=peak_lr)
except ValueError as e:
    raise SystemExit(str(e))
guard = NonFiniteGuard(model, cfg.max_nonfinite)

# ---------------------------------------------------------------- resume
step, images_seen = 0, 0
resume_path = None
if cfg.resume not in ("none", ""):
    if cfg.resume == "auto":  # rank 0 picks the newest whole checkpoint; every rank loads that file
        resume_path = broadcast_object(info, find_resumable(cfg.out)[0] if is_main else None)
    else:
        resume_path = cfg.resume
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        guard.load_state_dict(state.get("nonfinite", {}))
        step, images_seen = int(state["step"]), int(state.get("images_seen", 0))
        try:
            if state.get("world_size") != info.world_size:
                raise ValueError(f"written by {state.get('world_size')} ranks, this run has {info.world_size}")
            loader.load_state_dict(state["loader"][info.rank])  # refuses a changed batch size, seed, ...
            restore_rng(state["rng"][info.rank], device)
        except ValueError as e:
            if is_main:
                print(f"resume: data position not restored ({e}); weights, optimizer and schedule are")
        del state

train_step_module = objective
if info.enabled:
    train_step_module = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                            gradient_as_bucket_view=True)
if cfg.compile:
    train_step_module = torch.compile(train_step_module)


def save(step_now: int) -> str:
    """Gather every rank's data position, RNG states and weight digest; rank 0 checks and writes."""
    loaders = gather_objects(info, loader.state_dict())
    rngs = gather_objects(info, capture_rng(device))
    digests = gather_objects(info, params_digest(model))
    if not all(torch.isfinite(p).all() for p in params):  # same on every rank: the digests agree or we stop
        raise NonFiniteLossError(f"step {step_now}: the weights hold inf/NaN (an update overflowed); not "
                                 f"writing a checkpoint, the last good one is kept")
    if len(set(digests)) != 1:  # every rank sees every digest, so all stop together
        raise RuntimeError(f"step {step_now}: replicas diverged (weight digests {digests})")
    path = None
    if is_main:
        state = {"step": step_now, "images_seen": images_seen, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "loader": loaders,
                 "rng": rngs, "nonfinite": guard.state_dict(), "world_size": info.world_size, "num_classes": num_classes,
                 "arch": cfg.arch, "config": dict(cfg), "weights_digest": digests[0]}
        path = save_checkpoint(state, cfg.out, step_now, cfg.keep_last)
    return broadcast_object(info, path)


log = MetricsLogger(cfg.out, enabled=is_main, total_steps=total_steps, tensorboard=cfg.tensorboard,
                    start_step=step)
if is_main:
    n_params = sum(p.numel() for p in params)
    log.print(f"pretrain: {cfg.arch} ({n_params / 1e6:.2f}M params, {num_classes} hashtags), {info.world_size} x "
              f"{device.type}, batch {cfg.batch_size} x {info.world_size} = {global_batch}, {total_steps} steps, "
              f"{schedule.describe()} ({lr_rule}), {'fused wslfast ops' if cfg.fused else 'stock PyTorch'}")
    log.print(f"resumed from {resume_path} at step {step}" if resume_path else "starting from scratch")


def batches():
    """Endless batches over epochs. A pass may legitimately be empty (resumed at the very end of an
    epoch, whose last partial batch the loader runs but does not yield); two empty passes mean no data."""
    empty_passes = 0
    while empty_passes < 2:
        empty_passes += 1
        for batch in loader:
            empty_passes = 0
            yield batch
    raise RuntimeError("the data loader yielded no batch: are the shards empty?")


# ---------------------------------------------------------------- train
exit_code = 0
stopped_by = None
last_loss, final_checkpoint = None, None
batch_iter = batches()
loss_sum = torch.zeros((), device=device)
good_steps = 0
window_start, data_wait = time.perf_counter(), 0.0
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
with StopSignals() as stop:
    try:
        if step >= total_steps and is_main:
            log.print(f"run already complete at step {step} ({cfg.out}); give --out or --steps to train more")
        while step < total_steps:
            t0 = time.perf_counter()
            images, targets = next(batch_iter)
            if cfg.amp == "none" and images.dtype != torch.float32:
                images = images.float()  # the GPU loader hands out bf16; fp32 training wants fp32
            data_wait += time.perf_counter() - t0
            lr = schedule(images_seen)
            for group in optimizer.param_groups:
                group["lr"] = lr
            guard.snapshot()
            with autocast:
                loss = train_step_module(images, targets)
            loss.backward()
            # One small all-reduce and one host sync per step: every rank agrees on skip and stop.
            flags = torch.stack([nonfinite_flag(loss, params),
                                 torch.tensor(float(stop.received is not None), device=device)])
            nonfinite, stop_now = all_ranks_max(info, flags).tolist()
            skip = guard.record(nonfinite > 0, step)
            if not skip:
                optimizer.step()
                loss_sum += loss.detach().float()
                good_steps += 1
            optimizer.zero_grad(set_to_none=True)
            step += 1
            images_seen += global_batch
            log.advance()
            if step % cfg.log_every == 0 or step == total_steps:
                mean_loss = loss_sum / max(good_steps, 1)
                if info.enabled:
                    dist.all_reduce(mean_loss)
                    mean_loss /= info.world_size
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % cfg.log_every + 1
                last_loss = mean_loss.item()
                log.log(step, {"loss": last_loss, "lr": lr, "images": images_seen,
                               "img_per_s": steps_in_window * global_batch / elapsed,
                               "data_share": data_wait / elapsed, "skipped": guard.skipped})
                loss_sum.zero_()
                good_steps, data_wait, window_start = 0, 0.0, time.perf_counter()
            if stop_now:
                stopped_by = stop.name or "a signal on another rank"
            if step % cfg.checkpoint_every == 0 or step == total_steps or stopped_by:
                path = final_checkpoint = save(step)
                if stopped_by:
                    log.print(f"stopped by {stopped_by} at step {step}; checkpoint {path}; "
                              f"run the same command again to continue")
                    break
    except NonFiniteLossError as e:
        log.print(f"error: {e}")
        exit_code = 3
    except Exception as e:  # a peer died: one line, and no teardown that could wait on it
        if not (info.enabled and peer_failure(e)) or cfg.debug:
            raise
        print(f"error: rank {info.rank}: {peer_failure(e)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
if exit_code == 0 and is_main and step >= total_steps and stopped_by is None:
    first_loss = (log.first or {}).get("loss")  # the run's first record, kept across resumes
    if first_loss is not None and last_loss is not None:
        log.print(f"done: loss {first_loss:.4f} (first logged) -> {last_loss:.4f} (last logged)")
    log.print(f"time {format_duration(time.perf_counter() - t_start)} in all "
              f"(training {format_duration(log.elapsed())}), {peak_memory(device)}")
    log.print(f"checkpoint: {final_checkpoint or resume_path}")  # this run's own, never an older file
log.close()
cleanup_distributed(info)
sys.exit(exit_code)
