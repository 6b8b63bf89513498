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

from wslfast.data.demo import demo_corpus_dir  # noqa: E402
from wslfast.engine import (Config, command_line, format_duration, list_checkpoints, load_weights,  # noqa: E402
                            pick_device, seed_everything)

DEFAULTS = dict(
    checkpoint="",           # "" -> newest checkpoint in runs/default (the default pretraining run)
    data="",                 # "" -> the demo target task of the checkpoint's synthetic corpus
    arch="",                 # "" -> the checkpoint's arch (needed for plain state_dicts)
    mode="linear",           # linear | finetune | zeroshot, or several: linear,finetune,zeroshot
    baseline=True,           # also run the same protocol on a randomly initialised backbone
    image_size=0, resize_size=0,  # 0 -> the pretraining image size, and that x 256/224
    batch_size=64, num_threads=2, device="auto", seed=0,
    l2=1e-3, lbfgs_iters=200,     # linear probe
    epochs=10, lr=0.01, momentum=0.9, weight_decay=1e-4,  # finetune
    mixup=0.0, label_smoothing=0.0,  # finetune, SWAG: mixup alpha 0.1 with soft-target CE
    ema=0.0, ema_warmup=0.05,        # finetune: weight-EMA decay (0 = off); copy-only for this fraction of steps
    vocab="", class_map="", pooling="logsumexp", hyponyms=True,  # zeroshot (see wslfast.transfer.zeroshot)
    out="",                  # "" -> transfer-<mode> beside the checkpoint: model.pt (not zeroshot), metrics.json
)

cfg = command_line(DEFAULTS, __doc__)
modes = [m.strip() for m in str(cfg.mode).split(",") if m.strip()]
if not modes or any(m not in ("linear", "finetune", "zeroshot") for m in modes):
    raise SystemExit(f"mode must be linear, finetune or zeroshot (or a comma-separated list), got {cfg.mode!r}")
if cfg.mixup < 0 or not 0 <= cfg.label_smoothing < 1 or not 0 <= cfg.ema < 1 or not 0 <= cfg.ema_warmup <= 1:
    raise SystemExit("need mixup >= 0, label_smoothing in [0, 1), ema (a decay) in [0, 1), ema_warmup in [0, 1]")
if cfg.pooling not in ("logsumexp", "max"):
    raise SystemExit(f"pooling must be logsumexp or max, got {cfg.pooling!r}")
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
from wslfast.models import CLASSIFIER_PREFIXES  # noqa: E402

backbone_weights = {k: v for k, v in weights.items() if not k.startswith(CLASSIFIER_PREFIXES)}

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

from wslfast.data.loaders import eval_loader  # noqa: E402
from wslfast.models import create_model  # noqa: E402


def vocabulary_path_of(pre_cfg, data):
    """The pretraining vocabulary: the demo corpus's vocab.json, else the shards' manifest.json."""
    if pre_cfg.get("data") == "synthetic":
        return os.path.join(demo_corpus_dir(pre_cfg), "vocab.json")
    if pre_cfg.get("data") and os.path.isfile(os.path.join(pre_cfg["data"], "manifest.json")):
        return os.path.join(pre_cfg["data"], "manifest.json")
    raise SystemExit("zeroshot: cannot find the pretraining vocabulary: give --vocab (vocab.json or manifest.json)")


def load_split(split):
    """All (images, labels) batches of a split, on the device (the demo task is small; big tasks stream)."""
    return eval_loader(os.path.join(data, split), cfg.batch_size, device=device.type, image_size=image_size,
                       resize_size=resize_size, num_threads=cfg.num_threads)


def make_backbone(pretrained: bool):
    seed_everything(cfg.seed)
    model = create_model(arch, num_classes=len(classes), fused=True, zero_init_residual=False, image_size=image_size)
    if pretrained:
        missing, unexpected = model.load_state_dict(backbone_weights, strict=False)
        if [k for k in missing if not k.startswith(CLASSIFIER_PREFIXES)] or unexpected:
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
    ema = ModelEMA(model, cfg.ema, int(cfg.ema_warmup * steps)) if cfg.ema > 0 else None
    mix_gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = 0.0
        for images, y in train_batches:
            images = images.float()  # the GPU loader hands out bf16
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            for g in opt.param_groups:  # cosine decay over the whole fine-tuning run
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            if cfg.mixup > 0 or cfg.label_smoothing > 0:  # SWAG: soft-target CE on mixed images and labels
                images, soft, _, _ = mixup_batch(images, y, len(classes), cfg.mixup, mix_gen)
                loss = mixup_cross_entropy(model(images), soft, cfg.label_smoothing)
            else:
                loss = F.cross_entropy(model(images), y.to(images.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum += loss.item()
        elapsed = time.perf_counter() - t0
        print(f"    epoch {epoch + 1}/{cfg.epochs} | loss {loss_sum / len(train_batches):.4f} | "
              f"lr {opt.param_groups[0]['lr']:.4g} | elapsed {format_duration(elapsed)} | "
              f"eta {format_duration(elapsed / (epoch + 1) * (cfg.epochs - epoch - 1))}", flush=True)
    if ema is not None:  # the raw weights' score too, for comparison; the EMA's is the result (and is saved)
        print(f"  (finetune, last weights: top-1 {evaluate(model)[0]:5.1f}%; EMA {cfg.ema} weights below)")
        model.load_state_dict(ema.module.state_dict())
    return evaluate(model)


def evaluate(model):
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, y in load_split("val"):
            logits.append(model(images.float()).float().cpu())
            labels.append(y.cpu())
    return topk(torch.cat(logits), torch.cat(labels))


def zeroshot(model):
    """No training: the pretrained hashtag head, pooled per class over the class's WordNet subtree."""
    top1, top5 = zeroshot_evaluate(model, load_split("val"), class_sets, cfg.pooling)[:2]
    return top1, (top5 if len(classes) > 5 else None)


def make_hashtag_model(pretrained: bool):
    seed_everything(cfg.seed)
    model = create_model(arch, num_classes=len(vocab), fused=True, zero_init_residual=False, image_size=image_size)
    if pretrained:
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise SystemExit(f"zeroshot: {checkpoint} does not fit {arch} with a {len(vocab)}-hashtag head "
                             f"({str(e).splitlines()[0]}); is --vocab the vocabulary it was trained on?")
    return model.to(device, memory_format=torch.channels_last)


from wslfast.transfer import (ModelEMA, class_hashtag_sets, load_vocabulary, mixup_batch,  # noqa: E402
                              mixup_cross_entropy, read_class_map, resolve_class_synsets, synthetic_class_map,
                              zeroshot_evaluate)

if "zeroshot" in modes:
    vocab_path = cfg.vocab or vocabulary_path_of(pre_cfg, data)
    try:
        vocab = load_vocabulary(vocab_path)
        class_map = (read_class_map(cfg.class_map) if cfg.class_map else
                     synthetic_class_map(classes) if not cfg.data and pre_cfg.get("data") == "synthetic" else None)
        class_sets = class_hashtag_sets(resolve_class_synsets(classes, class_map), vocab, hyponyms=cfg.hyponyms)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: WordNet missing (with the apt command)
        raise SystemExit(str(e))
    covered = sum(1 for s in class_sets if s)
    print(f"zeroshot: {covered}/{len(classes)} classes have hashtags in {vocab_path} ({len(vocab)} labels); "
          f"pooling {cfg.pooling}; chance top-1 {100.0 / len(classes):.1f}%", flush=True)

for mode in modes:
    protocol = {"linear": linear_probe, "finetune": finetune, "zeroshot": zeroshot}[mode]
    build = make_hashtag_model if mode == "zeroshot" else make_backbone
    out = cfg.out or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"transfer-{mode}")
    if len(modes) > 1 and cfg.out:
        out = os.path.join(cfg.out, mode)
    print(f"transfer: {mode} on {data} ({len(classes)} classes, {image_size}px), {arch}, {device.type}", flush=True)
    print(f"  pretrained {checkpoint}", flush=True)
    model = build(True)
    results = [("pretrained " + checkpoint, protocol(model))]
    if cfg.baseline:
        print("  random init (same protocol)", flush=True)
        results.append(("random init (same protocol)", protocol(build(False))))
    width = max(len(name) for name, _ in results)
    for name, (top1, top5) in results:
        print(f"  {name:<{width}}  top-1 {top1:5.1f}%" + (f"  top-5 {top5:5.1f}%" if top5 is not None else ""))
    metrics = {"mode": mode, "data": data, "classes": classes, "checkpoint": checkpoint, "arch": arch,
               "image_size": image_size, "pretrained": {"top1": results[0][1][0], "top5": results[0][1][1]}}
    if cfg.baseline:
        gain = results[0][1][0] - results[1][1][0]
        metrics.update(random_init={"top1": results[1][1][0], "top5": results[1][1][1]}, gain_top1=gain)
        print(f"  pretraining gain: {gain:+.1f} top-1 points")
    os.makedirs(out, exist_ok=True)
    saved = [os.path.join(out, "metrics.json")]
    if mode != "zeroshot":  # zero-shot trains nothing: its model is the checkpoint itself
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
        saved.insert(0, os.path.join(out, "model.pt") + f" ({len(classes)}-class {arch})")
    with open(saved[-1], "w") as f:
        json.dump(metrics, f, indent=1)
    print("saved: " + " and ".join(saved))
