"""Transfer a pretrained backbone to a labelled target task and report top-1 / top-5 on its validation split.

    python train/transfer.py                         # the demo: runs/default's newest checkpoint on the
                                                     # demo target task, beside a randomly initialised backbone
    python train/transfer.py --checkpoint PATH --data DIR --mode linear|finetune [--key value ...]

mode=linear (the paper's main protocol): the backbone is frozen, the average-pooled features of every image
(resize, centre crop) are computed once, and a linear softmax classifier is fitted on the training split's
features (standardised, L2-regularised, full-batch L-BFGS: deterministic, no LR to tune).
mode=finetune: every weight trains, with a fresh head, SGD + momentum and random horizontal flips.
DIR is an ImageFolder-style tree (train/ and val/ with a folder per class). PATH is a pretrain.py checkpoint
or a torchvision-format ResNeXt state_dict (e.g. the released WSL weights: --arch resnext101_32x8d).
The transferred model (a torchvision-format state_dict; for the linear probe the backbone with the fitted
classifier as fc, the feature standardisation folded in) and metrics.json go to out. Top-5 is reported for
tasks of more than 5 classes. `--help` lists every key.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from train.demo_data import demo_corpus_dir  # noqa: E402
from wslfast.engine import (Config, command_line, format_duration, list_checkpoints, load_weights,  # noqa: E402
                            pick_device, seed_everything)

DEFAULTS = dict(
    checkpoint="",           # "" -> newest checkpoint in runs/default (the default pretraining run)
    data="",                 # "" -> the demo target task of the checkpoint's synthetic corpus
    arch="",                 # "" -> the checkpoint's arch (needed for plain state_dicts)
    mode="linear",           # linear | finetune
    baseline=True,           # also run the same protocol on a randomly initialised backbone
    image_size=0, resize_size=0,  # 0 -> the pretraining image size, and that x 256/224
    batch_size=64, num_threads=2, device="auto", seed=0,
    l2=1e-3, lbfgs_iters=200,     # linear probe
    epochs=10, lr=0.01, momentum=0.9, weight_decay=1e-4,  # finetune
    out="",                  # "" -> transfer-<mode> beside the checkpoint: model.pt and metrics.json
)

cfg = command_line(DEFAULTS, __doc__)
if cfg.mode not in ("linear", "finetune"):
    raise SystemExit(f"mode must be linear or finetune, got {cfg.mode!r}")
device = pick_device(cfg.device)

# ---------------------------------------------------------------- backbone weights
checkpoint = cfg.checkpoint
if not checkpoint:
    found = list_checkpoints("runs/default")
    if not found:
        raise SystemExit("no checkpoint in runs/default: run `python train/pretrain.py` first, or give --checkpoint")
    checkpoint = found[-1][1]
if not os.path.isfile(checkpoint):
    raise SystemExit(f"checkpoint {checkpoint!r} does not exist")
loaded = load_weights(checkpoint)  # weights_only; a damaged file is one line
if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # a pretrain.py checkpoint
    weights, pre_cfg = loaded["model"], Config(loaded.get("config") or {})
    arch = cfg.arch or loaded.get("arch") or pre_cfg.get("arch")
elif isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
    weights, pre_cfg, arch = loaded, Config(), cfg.arch  # a torchvision-format state_dict
    if not arch:
        raise SystemExit("a plain state_dict does not name its architecture: give --arch")
else:
    raise SystemExit(f"{checkpoint} is neither a pretrain.py checkpoint nor a state_dict")
backbone_weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}

# ---------------------------------------------------------------- target task
data = cfg.data
if not data:
    if pre_cfg.get("data") != "synthetic":
        raise SystemExit("this checkpoint was not trained on the demo corpus: give --data DIR")
    data = os.path.join(demo_corpus_dir(pre_cfg), "target")
for split in ("train", "val"):
    if not os.path.isdir(os.path.join(data, split)):
        raise SystemExit(f"data: {data!r} needs {split}/ with one folder per class")
classes = sorted(d for d in os.listdir(os.path.join(data, "train")) if os.path.isdir(os.path.join(data, "train", d)))
if len(classes) < 2:
    raise SystemExit(f"data: {data}/train must hold at least 2 class folders")
image_size = cfg.image_size or pre_cfg.get("image_size") or 224
resize_size = cfg.resize_size or round(image_size * 256 / 224)

from wslfast.data.dali import eval_loader  # noqa: E402
from wslfast.models import create_model  # noqa: E402


def load_split(split):
    """All (images, labels) batches of a split, on the device (the demo task is small; big tasks stream)."""
    return eval_loader(os.path.join(data, split), cfg.batch_size, device=device.type, image_size=image_size,
                       resize_size=resize_size, num_threads=cfg.num_threads)


def make_backbone(pretrained: bool):
    seed_everything(cfg.seed)
    model = create_model(arch, num_classes=len(classes), fused=True, zero_init_residual=False)
    if pretrained:
        missing, unexpected = model.load_state_dict(backbone_weights, strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise SystemExit(f"{checkpoint} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def features_of(model, split):
    model.eval()
    feats, labels = [], []
    for images, y in load_split(split):
        feats.append(model.forward_features(images.float()).float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def topk(logits, labels):
    """(top-1 %, top-5 % or None): top-5 means something only with more than 5 classes."""
    best = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = 100.0 * (best[:, 0] == labels).float().mean().item()
    top5 = 100.0 * (best == labels[:, None]).any(1).float().mean().item() if logits.shape[1] > 5 else None
    return top1, top5


def linear_probe(model):
    (xtr, ytr), (xva, yva) = features_of(model, "train"), features_of(model, "val")
    mean, std = xtr.mean(0), xtr.std(0).clamp(min=1e-6)
    xtr, xva = ((xtr - mean) / std).double(), ((xva - mean) / std).double()
    head = torch.nn.Linear(xtr.shape[1], len(classes), dtype=torch.float64)
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


def finetune(model):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_batches = list(load_split("train"))
    steps, step, t0 = cfg.epochs * len(train_batches), 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = 0.0
        for images, y in train_batches:
            images = images.float()  # the GPU loader hands out bf16
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            for g in opt.param_groups:  # cosine decay over the whole fine-tuning run
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(model(images), y.to(images.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item()
        elapsed = time.perf_counter() - t0
        print(f"    epoch {epoch + 1}/{cfg.epochs} | loss {loss_sum / len(train_batches):.4f} | "
              f"lr {opt.param_groups[0]['lr']:.4g} | elapsed {format_duration(elapsed)} | "
              f"eta {format_duration(elapsed / (epoch + 1) * (cfg.epochs - epoch - 1))}", flush=True)
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, y in load_split("val"):
            logits.append(model(images.float()).float().cpu())
            labels.append(y.cpu())
    return topk(torch.cat(logits), torch.cat(labels))


protocol = linear_probe if cfg.mode == "linear" else finetune
out = cfg.out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"transfer-{cfg.mode}")
print(f"transfer: {cfg.mode} on {data} ({len(classes)} classes, {image_size}px), {arch}, {device.type}", flush=True)
print(f"  pretrained {checkpoint}", flush=True)
model = make_backbone(True)
results = [("pretrained " + checkpoint, protocol(model))]
if cfg.baseline:
    print("  random init (same protocol)", flush=True)
    results.append(("random init (same protocol)", protocol(make_backbone(False))))
width = max(len(name) for name, _ in results)
for name, (top1, top5) in results:
    print(f"  {name:<{width}}  top-1 {top1:5.1f}%" + (f"  top-5 {top5:5.1f}%" if top5 is not None else ""))
metrics = {"mode": cfg.mode, "data": data, "classes": classes, "checkpoint": checkpoint, "arch": arch,
           "image_size": image_size, "pretrained": {"top1": results[0][1][0], "top5": results[0][1][1]}}
if cfg.baseline:
    gain = results[0][1][0] - results[1][1][0]
    metrics.update(random_init={"top1": results[1][1][0], "top5": results[1][1][1]}, gain_top1=gain)
    print(f"  pretraining gain: {gain:+.1f} top-1 points")
os.makedirs(out, exist_ok=True)
torch.save(model.state_dict(), os.path.join(out, "model.pt"))
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
print(f"saved: {os.path.join(out, 'model.pt')} ({len(classes)}-class {arch}) and {os.path.join(out, 'metrics.json')}")
