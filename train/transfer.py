r"""Transfer a pretrained backbone to a labelled target task and report top-1 / top-5 on its validation split.

    python train/transfer.py                         # the demo: runs/default's newest checkpoint on the demo
                                                     # target task, beside a randomly initialised backbone
    python train/transfer.py --checkpoint PATH --data DIR --mode linear|finetune|zeroshot [--key value ...]
    # SWAG's fine-tuning recipe (RegNetY-128GF, ImageNet-1k, 8 epochs at 384 px): one GPU, eight, several machines
    python train/transfer.py --config train/configs/transfer/finetune_regnet_y_128gf_in1k_swag.yaml \
        --checkpoint PATH --data /data/imagenet --out runs/ft-128gf
    torchrun --nproc-per-node=8 train/transfer.py --config train/configs/transfer/finetune_regnet_y_128gf_in1k_swag.yaml \
        --checkpoint PATH --data /data/imagenet --out runs/ft-128gf
    torchrun --nnodes=8 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=JOB \
        --max-restarts=3 train/transfer.py --config train/configs/transfer/finetune_regnet_y_128gf_in1k_swag.yaml \
        --checkpoint PATH --data /data/imagenet --out /shared/runs/ft-128gf     # the same command on each machine
    # the linear probe on ImageNet-1k: features extracted by every rank into out/features, a streamed fit
    torchrun --nproc-per-node=8 train/transfer.py --mode linear --checkpoint PATH --data /data/imagenet --out runs/lin

The learning rate is given for lr_batch images (SWAG: 6e-3 for 512) and scaled linearly to the run's global
batch (batch_size x ranks); under torchrun every rank reads its own part of the data (DDP, NCCL on GPU, gloo
on CPU). SLURM: as for pretrain.py (its docstring), `srun ... torchrun ... train/transfer.py ...`.

mode=finetune: every weight trains with a fresh head, on the training pipeline (DALI: a random-resized crop
and a flip, drawn anew every epoch, over a fresh permutation of the whole training split; memory does not
grow with the split), SGD (or AdamW) with a linear warm-up and a cosine, the head's LR head_lr_mult times
the backbone's; SWAG's recipe adds --mixup ALPHA and --label-smoothing EPS (soft-target CE), --ema DECAY
(the weight average is what is evaluated and saved, the last weights are reported too) and --sync-bn. The
run folder is pretrain.py's: run.json, checkpoints every checkpoint_every steps, on SIGTERM/SIGUSR1 and at the
end (weights, optimizer, EMA, every rank's data position and RNG states), `--resume auto` continues the
newest whole one exactly (on CPU bit-identical to an uninterrupted run), another run's folder is refused.
mode=linear (the paper's main protocol): the backbone is frozen; the average-pooled features of both splits
(resize, centre crop) are extracted once into out/features (parts of feature_part_size images, written by
all ranks, kept across restarts), centred and scaled by one factor (probe.feature_scaling), and a softmax
classifier (L2-regularised) is fitted: full-batch L-BFGS while the float64 training features fit lbfgs_max_mb, else
mini-batch SGD streamed from disk (wslfast.transfer.probe says why). It becomes the model's fc.
mode=zeroshot: no training: each class, a WordNet synset (folders named by wnid, or --class-map FILE), is
scored from the pretrained hashtag head over its synset and hyponyms (wslfast.transfer.zeroshot), optionally
calibrated (--zeroshot-temperature T, --zeroshot-prior TAU: the pretraining label prior divided out); the
vocabulary comes from --vocab (vocab.json or a shards manifest.json) or the pretraining data.
Several modes at once: --mode linear,finetune,zeroshot. DIR is an ImageFolder-style tree (train/ and val/
with a folder per class; every image is decoded once to check it, the check split over the ranks and kept
in the run folder). PATH is a pretrain.py checkpoint or a torchvision-format state_dict of a wslfast.models
arch (e.g. the released WSL or SWAG weights: --arch resnext101_32x8d, --arch regnet_y_16gf). Output per
mode in out (default transfer-<mode> beside the checkpoint; with several modes out/<mode>): model.pt (a
torchvision-format state_dict: the fine-tuned model, or the backbone with the probe's classifier as fc, its
standardisation folded in) and metrics.json; the random-init baseline runs in out/random-init. Top-5 is
reported for tasks of more than 5 classes. `--help` lists every key.
"""
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from wslfast.engine import (CheckpointError, Config, ConfigError, NonFiniteLossError, StopSignals,  # noqa: E402
                            claim_run_folder, cleanup_distributed, command_line, format_duration, list_checkpoints,
                            load_weights, peak_memory, exit_on_peer_failure, seed_everything,
                            setup_distributed)
from wslfast.engine.datasets import demo_corpus_dir  # noqa: E402

MODES = ("linear", "finetune", "zeroshot")
VARIANTS = ("pretrained", "random init")


# Top to bottom: TransferConfig (every key, its type and help), then the steps main() takes: load_pretrained,
# claim the run folders, the task (wslfast.transfer.task), then per mode and variant build_model and run_mode:
# wslfast.transfer.finetune (build_finetune, resume, train_step, train, save, evaluate), .linear (features
# extracted, then fitted) or .evaluation's zero-shot; then report and save_results.
@dataclass
class TransferConfig:
    """Every key of a transfer run, with its type, default and help (shown by --help)."""
    SECTIONS: ClassVar[dict] = {"checkpoint": "what to transfer, and how", "image_size": "images",
                                "probe_solver": "linear probe", "epochs": "fine-tuning", "vocab": "zero-shot",
                                "out": "run"}

    checkpoint: str = ""
    """a pretrain.py checkpoint or a torchvision-format state_dict; "" -> the newest checkpoint in
    runs/default (the default pretraining run)"""
    data: str = ""
    """the target task: a folder with train/ and val/, one folder per class in each; "" -> the demo target
    task of the checkpoint's synthetic corpus"""
    arch: str = ""
    """the backbone's wslfast.models name; "" -> the checkpoint's (needed for plain state_dicts)"""
    mode: str = "linear"
    """linear | finetune | zeroshot, or several: linear,finetune,zeroshot"""
    baseline: bool = True
    """also run the same protocol on a randomly initialised backbone"""
    batch_size: int = 32
    """images per rank (fine-tuning, feature extraction, evaluation)"""
    num_threads: int = 2
    """data loader threads per rank"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: a GPU when present, else the CPU"""
    seed: int = 0
    """base seed: the models' initialisation (the fresh head, the baseline), crops, flips, mixup (rank r
    draws from seed + r), the order of the probe's feature parts"""
    amp: Literal["none", "bf16"] = "none"
    """mixed precision for fine-tuning and feature extraction: none (fp32) or bf16 autocast"""

    image_size: int = 0
    """crop size in pixels; 0 -> the pretraining image size (ViT position embeddings are interpolated)"""
    resize_size: int = 0
    """evaluation: the shorter side before the centre crop; 0 -> image_size x 256/224"""

    probe_solver: Literal["auto", "lbfgs", "sgd", "adam"] = "auto"
    """auto: full-batch L-BFGS while the float64 training features fit lbfgs_max_mb, else mini-batch SGD
    streamed from disk; or one of them"""
    lbfgs_max_mb: int = 1024
    """auto's threshold (MB of N x D float64 training features: 65k images at 2,048 features)"""
    l2: float = 1e-3
    """L2 penalty on the classifier's weights (the same objective for every solver)"""
    lbfgs_iters: int = 200
    """L-BFGS iterations (full batch, on standardised features)"""
    probe_epochs: int = 30
    """streamed fit: passes over the training features"""
    probe_lr: float = 0.1
    """streamed fit: peak learning rate (cosine to 0)"""
    probe_batch_size: int = 256
    """streamed fit: features per rank and step"""
    feature_dtype: Literal["float32", "float16"] = "float32"
    """stored features (float16 halves the disk: 2.6 GB for ImageNet-1k at 2,048 features)"""
    feature_part_size: int = 8192
    """images per feature file (the unit of resume and of memory)"""

    # The fine-tuning defaults are for a small task and were measured on the demo (300 training images, the
    # tiny ResNeXt; 3 seeds): 30 epochs at lr 0.03 (head 0.3), 10% warm-up, cosine. Large tasks take a config
    # with their recipe (train/configs/transfer/: SWAG's, with its sources).
    epochs: int = 30
    """passes over the training split (steps wins when set)"""
    steps: Optional[int] = None
    """length of the fine-tuning in steps instead of epochs"""
    lr: float = 0.03
    """peak learning rate of the backbone at lr_batch images a step (a linear warm-up, then a cosine to 0)"""
    lr_batch: Optional[int] = None
    """the global batch lr is given for; the run's lr is lr x (batch_size x ranks) / lr_batch; null -> lr as is"""
    head_lr_mult: float = 10.0
    """the fresh head's learning rate is this many times the backbone's"""
    warmup_fraction: float = 0.1
    """linear warm-up from 0 over this fraction of the steps"""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (momentum, nesterov) or adamw"""
    momentum: float = 0.9
    """SGD momentum"""
    nesterov: bool = False
    """SGD with Nesterov momentum"""
    weight_decay: float = 1e-4
    """weight decay (AdamW: on weight matrices and kernels only)"""
    mixup: float = 0.0
    """mixup alpha (0: off); with label_smoothing, soft-target CE (SWAG: 0.1)"""
    label_smoothing: float = 0.0
    """label smoothing in [0, 1)"""
    ema: float = 0.0
    """weight-EMA decay in [0, 1) (0: off); the EMA weights are evaluated and saved"""
    ema_warmup: float = 0.05
    """the EMA only copies the weights for this fraction of the steps"""
    sync_bn: bool = False
    """BatchNorm statistics over all ranks (SWAG's fine-tuning; runs the stock conv layers)"""
    fused: bool = True
    """wslfast's fused conv+BN+ReLU; false: stock PyTorch"""

    vocab: str = ""
    """the pretraining vocabulary (vocab.json or a shards manifest.json); "" -> the pretraining data's"""
    class_map: str = ""
    """a class<TAB>synset file for class folders not named by WordNet synsets; "" -> folder names (or, on
    the demo task, its own map)"""
    pooling: Literal["logsumexp", "max"] = "logsumexp"
    """a class's score: the log of its hashtags' summed probability, or the best hashtag's"""
    hyponyms: bool = True
    """a class's hashtags include those of its WordNet hyponyms"""
    zeroshot_temperature: float = 1.0
    """calibration: the hashtag logits are divided by this before the softmax"""
    zeroshot_prior: float = 0.0
    """calibration: divide the hashtag softmax by the pretraining label prior to this power (0: off, 1: a
    uniform prior over the hashtags)"""

    out: str = ""
    """the run folder of each mode (model.pt, metrics.json, checkpoints, features); "" -> transfer-<mode>
    beside the checkpoint; with several modes out/<mode>"""
    resume: Literal["auto", "none"] = "auto"
    """auto: continue what the run folder holds (fine-tuning checkpoints, extracted features); none: refuse a
    folder that holds any"""
    checkpoint_every: int = 1000
    """fine-tuning steps between checkpoints (also written on SIGTERM/SIGUSR1 and at the end)"""
    keep_last: int = 2
    """checkpoints kept (0: all)"""
    log_every: int = 10
    """fine-tuning steps between log lines and metrics records"""
    tensorboard: bool = False
    """also write TensorBoard events to the run folder"""
    dist_timeout: int = 600
    """seconds a collective may wait for a peer before failing"""


# The keys each mode reads: a run folder's run.json holds the common keys and its own mode's, so one
# command may add modes (or change another mode's keys) and still continue the runs it has.
LINEAR_KEYS = {"probe_solver", "lbfgs_max_mb", "l2", "lbfgs_iters", "probe_epochs", "probe_lr", "probe_batch_size",
               "feature_dtype", "feature_part_size"}
FINETUNE_KEYS = {"epochs", "steps", "lr", "lr_batch", "head_lr_mult", "warmup_fraction", "optimizer", "momentum",
                 "nesterov", "weight_decay", "mixup", "label_smoothing", "ema", "ema_warmup", "sync_bn", "fused",
                 "checkpoint_every", "keep_last", "log_every", "tensorboard"}
ZEROSHOT_KEYS = {"vocab", "class_map", "pooling", "hyponyms", "zeroshot_temperature", "zeroshot_prior"}
MODE_KEYS = {"linear": LINEAR_KEYS, "finetune": FINETUNE_KEYS, "zeroshot": ZEROSHOT_KEYS}


def check_config(cfg: Config) -> list[str]:
    """What the types cannot say; returns the modes to run."""
    modes = [m.strip() for m in str(cfg.mode).split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise ConfigError(f"key 'mode': expected linear, finetune or zeroshot (or a comma-separated list), "
                          f"got {cfg.mode!r}")
    ranges = [("batch_size", cfg.batch_size >= 1, "an integer >= 1"),
              ("epochs", cfg.epochs >= 0, "an integer >= 0"),
              ("steps", cfg.steps is None or cfg.steps >= 1, "an integer >= 1 or null"),
              ("lr", cfg.lr > 0 or "finetune" not in modes, "a number > 0"),
              ("lr_batch", cfg.lr_batch is None or cfg.lr_batch >= 1, "an integer >= 1 or null"),
              ("head_lr_mult", cfg.head_lr_mult > 0, "a number > 0"),
              ("warmup_fraction", 0 <= cfg.warmup_fraction <= 0.5, "a fraction in [0, 0.5]"),
              ("lbfgs_iters", cfg.lbfgs_iters >= 1, "an integer >= 1"),
              ("lbfgs_max_mb", cfg.lbfgs_max_mb >= 0, "an integer >= 0"),
              ("probe_epochs", cfg.probe_epochs >= 1, "an integer >= 1"),
              ("probe_lr", cfg.probe_lr > 0, "a number > 0"),
              ("probe_batch_size", cfg.probe_batch_size >= 1, "an integer >= 1"),
              ("feature_part_size", cfg.feature_part_size >= 1, "an integer >= 1"),
              ("l2", cfg.l2 >= 0, "a number >= 0"),
              ("mixup", cfg.mixup >= 0, "a number >= 0"),
              ("label_smoothing", 0 <= cfg.label_smoothing < 1, "a number in [0, 1)"),
              ("ema", 0 <= cfg.ema < 1, "a decay in [0, 1)"),
              ("ema_warmup", 0 <= cfg.ema_warmup <= 1, "a fraction in [0, 1]"),
              ("zeroshot_temperature", cfg.zeroshot_temperature > 0, "a number > 0"),
              ("zeroshot_prior", 0 <= cfg.zeroshot_prior <= 1, "a number in [0, 1]"),
              ("checkpoint_every", cfg.checkpoint_every >= 1, "an integer >= 1"),
              ("log_every", cfg.log_every >= 1, "an integer >= 1")]
    for key, ok, what in ranges:
        if not ok:
            raise ConfigError(f"key {key!r}: expected {what}, got {cfg[key]}")
    return modes


def load_pretrained(cfg: Config) -> tuple[str, dict, Config, str]:
    """(checkpoint path, its weights, the pretraining config ({} for a plain state_dict), arch)."""
    checkpoint = cfg.checkpoint
    if not checkpoint:
        found = list_checkpoints("runs/default")
        if not found:
            raise CheckpointError("no checkpoint in runs/default: run `python train/pretrain.py` first, or give "
                                  "--checkpoint")
        checkpoint = found[-1][1]
    loaded = load_weights(checkpoint)  # weights_only; a missing or damaged file is one line
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # a pretrain.py checkpoint
        weights, pre_cfg = loaded["model"], Config(loaded.get("config") or {})
        arch = cfg.arch or loaded.get("arch") or pre_cfg.get("arch")
    elif isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        weights, pre_cfg, arch = loaded, Config(), cfg.arch  # a torchvision-format state_dict
        if not arch:
            raise ConfigError("a plain state_dict does not name its architecture: give --arch")
    else:
        raise CheckpointError(f"{checkpoint} is neither a pretrain.py checkpoint nor a state_dict")
    return os.path.abspath(checkpoint), weights, pre_cfg, arch


def task_root(cfg: Config, pre_cfg: Config) -> tuple[str, bool]:
    """(the task's folder, whether it is the demo corpus's own task)."""
    if cfg.data:
        return cfg.data, False
    if pre_cfg.get("data") != "synthetic":
        raise ConfigError("this checkpoint was not trained on the demo corpus: give --data DIR")
    return os.path.join(demo_corpus_dir(pre_cfg), "target"), True


def image_sizes(cfg: Config, pre_cfg: Config) -> tuple[int, int]:
    """(crop size, evaluation resize size)."""
    image_size = cfg.image_size or pre_cfg.get("image_size") or 224
    return image_size, cfg.resize_size or round(image_size * 256 / 224)


def build_model(cfg: Config, arch: str, num_classes: int, image_size: int, device, weights=None, source="",
                keep_head=False, fused=True) -> torch.nn.Module:
    """arch with a num_classes head at image_size, seeded by cfg.seed (the same on every rank). weights (a
    state_dict) are loaded when given: all but the classifier (a fresh head), or all of them (keep_head:
    the hashtag model for zero-shot)."""
    from wslfast.models import CLASSIFIER_PREFIXES, create_model

    torch.manual_seed(cfg.seed)
    model = create_model(arch, num_classes=num_classes, fused=fused, zero_init_residual=False, image_size=image_size)
    if weights is not None and keep_head:
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"zeroshot: {source} does not fit {arch} with a {num_classes}-hashtag head "
                                  f"({str(e).splitlines()[0]}); is --vocab the vocabulary it was trained on?")
    elif weights is not None:
        backbone = {k: v for k, v in weights.items() if not k.startswith(CLASSIFIER_PREFIXES)}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if [k for k in missing if not k.startswith(CLASSIFIER_PREFIXES)] or unexpected:
            raise CheckpointError(f"{source} does not fit {arch}: missing {missing[:5]}, unexpected "
                                  f"{unexpected[:5]}")
    return model.to(device, memory_format=torch.channels_last)


# ---------------------------------------------------------------- runs and results
def mode_folders(cfg: Config, checkpoint: str, modes: list[str]) -> dict:
    """{(mode, variant): run folder}: out (or out/<mode> for several modes; transfer-<mode> beside the
    checkpoint by default), the random-init baseline in its random-init/ subfolder."""
    folders = {}
    for mode in modes:
        base = cfg.out or os.path.join(os.path.dirname(checkpoint), f"transfer-{mode}")
        if len(modes) > 1 and cfg.out:
            base = os.path.join(cfg.out, mode)
        folders[(mode, "pretrained")] = base
        folders[(mode, "random init")] = os.path.join(base, "random-init")
    return folders


def run_config(cfg: Config, mode: str, checkpoint: str, variant: str) -> dict:
    """What a mode's run folder records in run.json: the common keys and its own mode's."""
    others = set().union(*(keys for m, keys in MODE_KEYS.items() if m != mode))
    config = {k: v for k, v in cfg.items() if k not in others and k not in ("mode", "baseline")}
    config.update(checkpoint=checkpoint, variant=variant)
    return config


def run_mode(mode, model, task, cfg, info, folder, stop, say, class_sets=None, log_prior=None) -> dict | None:
    """{"top1", "top5", ...} of one protocol on one model (None: stopped by a signal)."""
    if mode == "linear":
        from wslfast.transfer.extract import ExtractionStopped
        from wslfast.transfer.linear import linear_probe

        try:
            top1, top5 = linear_probe(model, task, cfg, info, folder, log=say, stop=lambda: stop.received is not None)
        except ExtractionStopped as e:
            say(f"stopped by {stop.name} during feature extraction ({e}); run the same command again to continue")
            return None
        return {"top1": top1, "top5": top5}
    if mode == "finetune":
        from wslfast.transfer.finetune import finetune

        return finetune(model, task, cfg, info, folder, stop, say)
    from wslfast.transfer.evaluation import evaluate_zeroshot

    return evaluate_zeroshot(model, task, cfg, info, class_sets, log_prior)


def report(mode, task, cfg, checkpoint, arch, results: dict, say) -> dict:
    """The result lines and metrics.json's content."""
    width = max(len(name) for name in results)
    for name, r in results.items():
        say(f"  {name:<{width}}  top-1 {r['top1']:5.1f}%" + (f"  top-5 {r['top5']:5.1f}%" if r["top5"] is not None
                                                             else ""))
        if "uncalibrated" in r:
            say(f"  {'':<{width}}  (uncalibrated: top-1 {r['uncalibrated']:5.1f}%)")
    first = next(iter(results.values()))
    metrics = {"mode": mode, "data": task.root, "classes": task.classes, "checkpoint": checkpoint, "arch": arch,
               "image_size": task.image_size, "pretrained": first}
    if len(results) > 1:
        base = list(results.values())[1]
        metrics.update(random_init=base, gain_top1=first["top1"] - base["top1"])
        say(f"  pretraining gain: {metrics['gain_top1']:+.1f} top-1 points")
    return metrics


def save_results(model, metrics: dict, out: str, save_model: bool) -> list[str]:
    """metrics.json (and model.pt, a torchvision-format state_dict) in out; returns what was written."""
    os.makedirs(out, exist_ok=True)
    saved = [os.path.join(out, "metrics.json")]
    if save_model:
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
        saved.insert(0, os.path.join(out, "model.pt") + f" ({len(metrics['classes'])}-class {metrics['arch']})")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return saved


def run_modes(modes, variants, cfg, info, task, checkpoint, weights, arch, folders, stop, say, vocab=None,
              class_sets=None, log_prior=None) -> bool:
    """Each mode on each variant (pretrained, random init), results printed and saved by rank 0; False when a
    signal stopped the run (what was done is on disk)."""
    for mode in modes:
        t_mode = time.perf_counter()
        say(f"transfer: {mode} on {task.root} ({len(task.classes)} classes, {len(task.train):,} train / "
            f"{len(task.val):,} val images, {task.image_size}px), {arch}, {info.world_size} x {info.device.type}")
        results, model = {}, None
        for variant in variants:
            name = f"pretrained {checkpoint}" if variant == "pretrained" else "random init (same protocol)"
            say(f"  {name}")
            keep_head = mode == "zeroshot"  # zero-shot scores with the pretrained hashtag head itself
            num_classes = len(vocab) if keep_head else len(task.classes)
            net = build_model(cfg, arch, num_classes, task.image_size, info.device,
                              weights if variant == "pretrained" else None, checkpoint, keep_head, cfg.fused)
            result = run_mode(mode, net, task, cfg, info, folders[(mode, variant)], stop, say, class_sets, log_prior)
            if result is None:
                return False
            results[name] = result
            model = model or net
        if info.is_main:
            metrics = report(mode, task, cfg, checkpoint, arch, results, say)
            say("saved: " + " and ".join(save_results(model, metrics, folders[(mode, "pretrained")],
                                                      save_model=mode != "zeroshot")))
        say(f"  time {format_duration(time.perf_counter() - t_mode)} for {mode}, {peak_memory(info.device)}")
    return True


def main(argv=None) -> int:
    from wslfast.transfer.task import load_task, zeroshot_classes

    cfg = command_line(TransferConfig, __doc__, argv)
    modes = check_config(cfg)
    info = setup_distributed(cfg.device, cfg.dist_timeout)
    t_start = time.perf_counter()
    say = (lambda text: print(text, flush=True)) if info.is_main else (lambda text: None)
    seed_everything(cfg.seed + info.rank)
    checkpoint, weights, pre_cfg, arch = load_pretrained(cfg)
    root, demo = task_root(cfg, pre_cfg)
    variants = VARIANTS if cfg.baseline else VARIANTS[:1]
    folders = mode_folders(cfg, checkpoint, modes)
    for mode in modes:  # every folder is this run's (or refused, one line) before any work
        for variant in variants:
            claim_run_folder(info, folders[(mode, variant)], run_config(cfg, mode, checkpoint, variant), cfg.resume)
    task = load_task(root, *image_sizes(cfg, pre_cfg), demo, info, cache_dir=folders[(modes[0], "pretrained")])
    vocab, class_sets, log_prior = zeroshot_classes(cfg, pre_cfg, task, say) if "zeroshot" in modes else (None,) * 3

    exit_code, completed = 0, False
    with StopSignals() as stop:
        try:
            completed = run_modes(modes, variants, cfg, info, task, checkpoint, weights, arch, folders, stop, say,
                                  vocab, class_sets, log_prior)
        except NonFiniteLossError as e:
            say(f"error: {e}")
            exit_code = 3
        except Exception as e:
            exit_on_peer_failure(e, info, cfg.debug)  # a peer died: one line and exit(1); else re-raised
            raise
    if completed:
        say(f"time {format_duration(time.perf_counter() - t_start)} in all, {peak_memory(info.device)}")
    cleanup_distributed(info)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
