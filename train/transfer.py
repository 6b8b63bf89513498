r"""Transfer a pretrained backbone to a labelled target task and report top-1 / top-5 on its validation split.

    python train/transfer.py                         # the demo: runs/default's newest checkpoint on the
                                                     # demo target task, beside a randomly initialised backbone
    python train/transfer.py --checkpoint PATH --data DIR --mode linear|finetune|zeroshot [--key value ...]
    python train/transfer.py --config train/configs/transfer/finetune_regnet_y_128gf_in1k_swag.yaml --checkpoint PATH \
        --data DIR                                   # SWAG's fine-tuning recipe

mode=linear (the paper's main protocol): the backbone is frozen, the average-pooled features of every image
(resize, centre crop) are computed once, and a linear softmax classifier is fitted on the training split's
features (standardised, L2-regularised, full-batch L-BFGS: deterministic, no LR to tune).
mode=finetune: every weight trains, with a fresh head, SGD + momentum and random horizontal flips; SWAG's
recipe adds --image-size (ViT position embeddings are interpolated on load), --mixup ALPHA, --label-smoothing
EPS (soft-target CE) and --ema DECAY (the weight average is evaluated too); see wslfast.transfer.
mode=zeroshot: no training: each class, a WordNet synset (folders named by wnid, or --class-map FILE), is
scored from the pretrained hashtag head over its synset and hyponyms (wslfast.transfer.zeroshot); the
vocabulary comes from --vocab (vocab.json or a shards manifest.json) or the pretraining data.
Several modes at once: --mode linear,finetune,zeroshot.
DIR is an ImageFolder-style tree (train/ and val/ with a folder per class). PATH is a pretrain.py checkpoint
or a torchvision-format state_dict of a wslfast.models arch (e.g. the released WSL or SWAG weights: --arch
resnext101_32x8d, --arch regnet_y_16gf).
The transferred model (a torchvision-format state_dict; for the linear probe the backbone with the fitted
classifier as fc, the feature standardisation folded in) and metrics.json go to out. Top-5 is reported for
tasks of more than 5 classes. `--help` lists every key.
"""
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from wslfast.engine.datasets import demo_corpus_dir  # noqa: E402
from wslfast.engine import (CheckpointError, Config, ConfigError, LRSchedule, build_optimizer,  # noqa: E402
                            command_line, format_duration, list_checkpoints, load_weights, pick_device,
                            seed_everything)
from wslfast.errors import DataError, UserError  # noqa: E402

MODES = ("linear", "finetune", "zeroshot")


# Top to bottom: TransferConfig (every key, its type and help), then the steps main() takes: load_pretrained,
# build_data, build_model, then per mode linear_probe, finetune (train_step, evaluate) or zeroshot, and save.
@dataclass
class TransferConfig:
    """Every key of a transfer run, with its type, default and help (shown by --help)."""
    SECTIONS: ClassVar[dict] = {"checkpoint": "what to transfer, and how", "image_size": "images",
                                "l2": "linear probe", "epochs": "fine-tuning", "vocab": "zero-shot", "out": "output"}

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
    batch_size: int = 64
    """images per batch"""
    num_threads: int = 2
    """data loader threads"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: a GPU when present, else the CPU"""
    seed: int = 0
    """seed of the models' initialisation (the fresh head, the baseline), the flips and mixup"""

    image_size: int = 0
    """crop size in pixels; 0 -> the pretraining image size (ViT position embeddings are interpolated)"""
    resize_size: int = 0
    """the shorter side before the centre crop; 0 -> image_size x 256/224"""

    l2: float = 1e-3
    """L2 penalty on the classifier's weights"""
    lbfgs_iters: int = 200
    """L-BFGS iterations (full batch, on standardised features)"""

    epochs: int = 10
    """passes over the training split"""
    lr: float = 0.01
    """peak learning rate, decayed by a cosine over the whole run"""
    momentum: float = 0.9
    """SGD momentum (plain, not Nesterov)"""
    weight_decay: float = 1e-4
    """SGD weight decay on every weight"""
    mixup: float = 0.0
    """mixup alpha (0: off); with label_smoothing, soft-target CE (SWAG: 0.1)"""
    label_smoothing: float = 0.0
    """label smoothing in [0, 1)"""
    ema: float = 0.0
    """weight-EMA decay in [0, 1) (0: off); the EMA weights are evaluated and saved"""
    ema_warmup: float = 0.05
    """the EMA only copies the weights for this fraction of the steps"""

    vocab: str = ""
    """the pretraining vocabulary (vocab.json or a shards manifest.json); "" -> the pretraining data's"""
    class_map: str = ""
    """a class<TAB>synset file for class folders not named by WordNet synsets; "" -> folder names (or, on
    the demo task, its own map)"""
    pooling: Literal["logsumexp", "max"] = "logsumexp"
    """a class's score: the log of its hashtags' summed probability, or the best hashtag's"""
    hyponyms: bool = True
    """a class's hashtags include those of its WordNet hyponyms"""

    out: str = ""
    """where model.pt (not zeroshot) and metrics.json go; "" -> transfer-<mode> beside the checkpoint"""


def check_config(cfg: Config) -> list[str]:
    """What the types cannot say; returns the modes to run."""
    modes = [m.strip() for m in str(cfg.mode).split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"key 'mode': expected linear, finetune or zeroshot (or a comma-separated list), "
                          f"got {cfg.mode!r}")
    ranges = [("batch_size", cfg.batch_size >= 1, "an integer >= 1"),
              ("epochs", cfg.epochs >= 0, "an integer >= 0"),
              ("lbfgs_iters", cfg.lbfgs_iters >= 1, "an integer >= 1"),
              ("lr", cfg.lr > 0 or "finetune" not in modes, "a number > 0"),
              ("mixup", cfg.mixup >= 0, "a number >= 0"),
              ("label_smoothing", 0 <= cfg.label_smoothing < 1, "a number in [0, 1)"),
              ("ema", 0 <= cfg.ema < 1, "a decay in [0, 1)"),
              ("ema_warmup", 0 <= cfg.ema_warmup <= 1, "a fraction in [0, 1]")]
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
    elif isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        weights, pre_cfg, arch = loaded, Config(), cfg.arch  # a torchvision-format state_dict
        if not arch:
            raise ConfigError("a plain state_dict does not name its architecture: give --arch")
    else:
        raise CheckpointError(f"{checkpoint} is neither a pretrain.py checkpoint nor a state_dict")
    return checkpoint, weights, pre_cfg, arch


@dataclass
class Task:
    """The target task: its folder (train/ and val/), class names, and the eval transform's sizes."""
    root: str
    classes: list
    image_size: int
    resize_size: int
    demo: bool  # the demo corpus's own task (its classes have a built-in synset map)


def build_data(cfg: Config, pre_cfg: Config) -> Task:
    """The target task of cfg.data, or the demo's when the checkpoint was pretrained on the demo corpus."""
    root = cfg.data
    if not root:
        if pre_cfg.get("data") != "synthetic":
            raise ConfigError("this checkpoint was not trained on the demo corpus: give --data DIR")
        root = os.path.join(demo_corpus_dir(pre_cfg), "target")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError(f"data: {root!r} needs {split}/ with one folder per class")
    train = os.path.join(root, "train")
    classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    if len(classes) < 2:
        raise DataError(f"data: {root}/train must hold at least 2 class folders")
    image_size = cfg.image_size or pre_cfg.get("image_size") or 224
    return Task(root, classes, image_size, cfg.resize_size or round(image_size * 256 / 224), demo=not cfg.data)


def load_split(task: Task, split: str, cfg: Config, device):
    """(images, labels) batches of a split, resized and centre-cropped, on the device."""
    from wslfast.data.loaders import eval_loader

    return eval_loader(os.path.join(task.root, split), cfg.batch_size, device=device.type,
                       image_size=task.image_size, resize_size=task.resize_size, num_threads=cfg.num_threads)


def build_model(cfg: Config, arch: str, num_classes: int, task: Task, device, weights=None, source="",
                keep_head=False) -> torch.nn.Module:
    """arch with a num_classes head at the task's image size, seeded by cfg.seed. weights (a state_dict)
    are loaded when given: all but the classifier (a fresh head), or all of them (keep_head: the hashtag
    model for zero-shot)."""
    from wslfast.models import CLASSIFIER_PREFIXES, create_model

    seed_everything(cfg.seed)
    model = create_model(arch, num_classes=num_classes, fused=True, zero_init_residual=False,
                         image_size=task.image_size)
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


def topk(logits, labels):
    """(top-1 %, top-5 % or None): top-5 means something only with more than 5 classes."""
    best = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = 100.0 * (best[:, 0] == labels).float().mean().item()
    top5 = 100.0 * (best == labels[:, None]).any(1).float().mean().item() if logits.shape[1] > 5 else None
    return top1, top5


@torch.no_grad()
def features_of(model, batches):
    model.eval()
    feats, labels = [], []
    for images, y in batches:
        feats.append(model.forward_features(images.float()).float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def linear_probe(model, task: Task, cfg: Config, device):
    """Frozen features of both splits, then a linear softmax classifier fitted on the training split's
    (standardised, L2-regularised, full-batch L-BFGS); it becomes model.fc. Returns (top-1, top-5)."""
    xtr, ytr = features_of(model, load_split(task, "train", cfg, device))
    xva, yva = features_of(model, load_split(task, "val", cfg, device))
    mean, std = xtr.mean(0), xtr.std(0).clamp(min=1e-6)
    xtr, xva = ((xtr - mean) / std).double(), ((xva - mean) / std).double()
    head = torch.nn.Linear(xtr.shape[1], len(task.classes), dtype=torch.float64)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=cfg.lbfgs_iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xtr), ytr) + cfg.l2 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        # the classifier on raw features, standardisation folded in: the saved model is used as it is
        w = head.weight / std.double()
        model.fc.weight.copy_(w.to(model.fc.weight.dtype))
        model.fc.bias.copy_((head.bias - w @ mean.double()).to(model.fc.bias.dtype))
        return topk(head(xva), yva)


def train_step(model, optimizer, images, labels, lr: float, num_classes: int, mixup: float = 0.0,
               label_smoothing: float = 0.0, mix_gen=None) -> torch.Tensor:
    """One fine-tuning step: a random horizontal flip per image, SWAG's mixup with soft-target CE (and
    label smoothing) when asked, else plain CE, then the update at lr. Returns the detached loss."""
    from wslfast.transfer import mixup_batch, mixup_cross_entropy

    images = images.float()  # the GPU loader hands out bf16
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if mixup > 0 or label_smoothing > 0:  # SWAG: soft-target CE on mixed images and labels
        images, soft, _, _ = mixup_batch(images, labels, num_classes, mixup, mix_gen)
        loss = mixup_cross_entropy(model(images), soft, label_smoothing)
    else:
        loss = F.cross_entropy(model(images), labels.to(images.device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def evaluate(model, batches):
    """(top-1, top-5) of model's predictions over (images, labels) batches."""
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, y in batches:
            logits.append(model(images.float()).float().cpu())
            labels.append(y.cpu())
    return topk(torch.cat(logits), torch.cat(labels))


def finetune(model, task: Task, cfg: Config, device):
    """Every weight trains: SGD with momentum, the LR on a cosine over the whole run, optional weight EMA
    (then the EMA's weights are the result). Returns (top-1, top-5) on the validation split."""
    from wslfast.transfer import ModelEMA

    optimizer = build_optimizer(model, "sgd", cfg.lr, cfg.weight_decay, momentum=cfg.momentum, nesterov=False)
    train_batches = list(load_split(task, "train", cfg, device))
    steps, step, t0 = cfg.epochs * len(train_batches), 0, time.perf_counter()
    # cosine decay over the whole fine-tuning run, indexed by step (one unit per step), no warm-up
    schedule = LRSchedule(cfg.lr, max(steps, 1), 0, "cosine")
    ema = ModelEMA(model, cfg.ema, int(cfg.ema_warmup * steps)) if cfg.ema > 0 else None
    mix_gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = 0.0
        for images, y in train_batches:
            loss = train_step(model, optimizer, images, y, schedule(step), len(task.classes), cfg.mixup,
                              cfg.label_smoothing, mix_gen)
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum += loss.item()
        elapsed = time.perf_counter() - t0
        print(f"    epoch {epoch + 1}/{cfg.epochs} | loss {loss_sum / len(train_batches):.4f} | "
              f"lr {optimizer.param_groups[0]['lr']:.4g} | elapsed {format_duration(elapsed)} | "
              f"eta {format_duration(elapsed / (epoch + 1) * (cfg.epochs - epoch - 1))}", flush=True)
    if ema is not None:  # the raw weights' score too, for comparison; the EMA's is the result (and is saved)
        top1 = evaluate(model, load_split(task, "val", cfg, device))[0]
        print(f"  (finetune, last weights: top-1 {top1:5.1f}%; EMA {cfg.ema} weights below)")
        model.load_state_dict(ema.module.state_dict())
    return evaluate(model, load_split(task, "val", cfg, device))


def zeroshot(model, task: Task, cfg: Config, device, class_sets):
    """No training: each class scored from the pretrained hashtag head, pooled over its WordNet subtree."""
    from wslfast.transfer import zeroshot_evaluate

    top1, top5 = zeroshot_evaluate(model, load_split(task, "val", cfg, device), class_sets, cfg.pooling)[:2]
    return top1, (top5 if len(task.classes) > 5 else None)


def demo_class_map(classes) -> dict[str, str]:
    """The demo target task's classes (folders named by each concept's first spelling, e.g. 'dog') -> their
    wnids, from the demo corpus's concept table."""
    from wslfast.data.synthetic import CONCEPTS

    table = {forms[0]: wnid for forms, _, wnid in CONCEPTS}
    return {c: table[c] for c in classes if c in table}


def vocabulary_path_of(pre_cfg: Config) -> str:
    """The pretraining vocabulary: the demo corpus's vocab.json, else the shards' manifest.json."""
    if pre_cfg.get("data") == "synthetic":
        return os.path.join(demo_corpus_dir(pre_cfg), "vocab.json")
    if pre_cfg.get("data") and os.path.isfile(os.path.join(pre_cfg["data"], "manifest.json")):
        return os.path.join(pre_cfg["data"], "manifest.json")
    raise ConfigError("zeroshot: cannot find the pretraining vocabulary: give --vocab (vocab.json or manifest.json)")


def zeroshot_classes(cfg: Config, pre_cfg: Config, task: Task):
    """(vocabulary, each class's hashtag labels): a class's labels are its WordNet synset's and (hyponyms)
    those of the synsets under it."""
    from wslfast.transfer import class_hashtag_sets, load_vocabulary, read_class_map, resolve_class_synsets

    vocab_path = cfg.vocab or vocabulary_path_of(pre_cfg)
    try:
        vocab = load_vocabulary(vocab_path)
        class_map = (read_class_map(cfg.class_map) if cfg.class_map else
                     demo_class_map(task.classes) if task.demo and pre_cfg.get("data") == "synthetic" else None)
        class_sets = class_hashtag_sets(resolve_class_synsets(task.classes, class_map), vocab, hyponyms=cfg.hyponyms)
    except UserError:  # WordNet missing (its message says how to install it), ...
        raise
    except (OSError, ValueError) as e:  # a class map or vocabulary that cannot be used
        raise DataError(str(e)) from None
    covered = sum(1 for s in class_sets if s)
    print(f"zeroshot: {covered}/{len(task.classes)} classes have hashtags in {vocab_path} ({len(vocab)} labels); "
          f"pooling {cfg.pooling}; chance top-1 {100.0 / len(task.classes):.1f}%", flush=True)
    return vocab, class_sets


def save(model, metrics: dict, out: str, save_model: bool) -> list[str]:
    """metrics.json (and model.pt, a torchvision-format state_dict) in out; returns what was written."""
    os.makedirs(out, exist_ok=True)
    saved = [os.path.join(out, "metrics.json")]
    if save_model:
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
        saved.insert(0, os.path.join(out, "model.pt") + f" ({len(metrics['classes'])}-class {metrics['arch']})")
    with open(saved[-1], "w") as f:
        json.dump(metrics, f, indent=1)
    return saved


def transfer(mode: str, model, task: Task, cfg: Config, device, class_sets=None):
    """(top-1 %, top-5 % or None) of one protocol on one model."""
    if mode == "linear":
        return linear_probe(model, task, cfg, device)
    if mode == "finetune":
        return finetune(model, task, cfg, device)
    return zeroshot(model, task, cfg, device, class_sets)


def main(argv=None) -> int:
    cfg = command_line(TransferConfig, __doc__, argv)
    modes = check_config(cfg)
    device = pick_device(cfg.device)
    checkpoint, weights, pre_cfg, arch = load_pretrained(cfg)
    task = build_data(cfg, pre_cfg)
    vocab, class_sets = zeroshot_classes(cfg, pre_cfg, task) if "zeroshot" in modes else (None, None)

    for mode in modes:
        keep_head = mode == "zeroshot"  # zero-shot scores with the pretrained hashtag head itself
        num_classes = len(vocab) if keep_head else len(task.classes)
        out = cfg.out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"transfer-{mode}")
        if len(modes) > 1 and cfg.out:
            out = os.path.join(cfg.out, mode)
        print(f"transfer: {mode} on {task.root} ({len(task.classes)} classes, {task.image_size}px), {arch}, "
              f"{device.type}", flush=True)
        print(f"  pretrained {checkpoint}", flush=True)
        model = build_model(cfg, arch, num_classes, task, device, weights, checkpoint, keep_head)
        results = [("pretrained " + checkpoint, transfer(mode, model, task, cfg, device, class_sets))]
        if cfg.baseline:
            print("  random init (same protocol)", flush=True)
            baseline = build_model(cfg, arch, num_classes, task, device, None, checkpoint, keep_head)
            results.append(("random init (same protocol)", transfer(mode, baseline, task, cfg, device, class_sets)))
        width = max(len(name) for name, _ in results)
        for name, (top1, top5) in results:
            print(f"  {name:<{width}}  top-1 {top1:5.1f}%" + (f"  top-5 {top5:5.1f}%" if top5 is not None else ""))
        metrics = {"mode": mode, "data": task.root, "classes": task.classes, "checkpoint": checkpoint, "arch": arch,
                   "image_size": task.image_size, "pretrained": {"top1": results[0][1][0], "top5": results[0][1][1]}}
        if cfg.baseline:
            gain = results[0][1][0] - results[1][1][0]
            metrics.update(random_init={"top1": results[1][1][0], "top5": results[1][1][1]}, gain_top1=gain)
            print(f"  pretraining gain: {gain:+.1f} top-1 points")
        # zero-shot trains nothing: its model is the checkpoint itself
        print("saved: " + " and ".join(save(model, metrics, out, save_model=mode != "zeroshot")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
