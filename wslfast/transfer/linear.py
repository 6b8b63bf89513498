"""The linear probe of train/transfer.py, step by step: features of both splits extracted once into a store
in the run folder (in parallel over the ranks, resumable), the standardisation from the store's moments
(each feature centred, all scaled by one factor: probe.feature_scaling),
the classifier fitted full-batch (small tasks) or streamed (any size), scored on the stored validation
features, and written into the model's classifier with the standardisation folded in.

    top1, top5 = linear_probe(model, task, cfg, info, folder, log=print)

Run plumbing (it reads the run's config keys: batch_size, num_threads, amp, seed, l2, lbfgs_iters,
lbfgs_max_mb, probe_solver, probe_epochs, probe_lr, probe_batch_size, feature_dtype, feature_part_size,
resume). Memory: one part of features and one batch for the streamed fit; the full-batch fit holds the
training features in float64 (at most lbfgs_max_mb, by the choice of solver).
"""
from __future__ import annotations

import hashlib
import math
import os
import time

import torch
import torch.distributed as dist

from ..engine.distributed import DistInfo, broadcast_object
from ..engine.metrics import format_duration
from ..errors import ConfigError, RunFolderError
from .features import INDEX, FeatureReader, FeatureStore
from .probe import choose_solver, feature_scaling, fit_lbfgs, fit_streamed, fold_standardisation
from .scoring import topk_hits, topk_percent

__all__ = ["linear_probe", "weights_digest", "listing_digest"]


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state_dict (parameters and buffers, in order): what its features are of."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def listing_digest(listing) -> str:
    """SHA-256 of a listing's files (relative to its root) and labels."""
    h = hashlib.sha256()
    for path, label in zip(listing.files, listing.labels):
        h.update(f"{os.path.relpath(path, listing.root)}\t{label}\n".encode())
    return h.hexdigest()


def _average(info: DistInfo):
    """In-place mean of tensors over the ranks (None for one process)."""
    if not info.enabled:
        return None

    def average(tensors):
        for t in tensors:
            dist.all_reduce(t)
            t.div_(info.world_size)
    return average


def _extract_split(model, task, split: str, cfg, info: DistInfo, folder: str, digest: str, log, stop) -> str:
    from .extract import extract_features

    listing = getattr(task, split)
    store_dir = os.path.join(folder, "features", split)
    key = {"weights": digest, "split": split, "files": listing_digest(listing), "image_size": task.image_size,
           "resize_size": task.resize_size}
    common = dict(key=key, dim=model.num_features, num_samples=len(listing), part_size=cfg.feature_part_size,
                  dtype=cfg.feature_dtype, order_seed=cfg.seed)
    problem = None
    if info.is_main:  # rank 0 checks the folder and writes the index; the others wait for it
        try:
            if cfg.resume == "none" and os.path.isfile(os.path.join(store_dir, INDEX)):
                raise RunFolderError(f"{store_dir} already holds features; --resume none would mix a new "
                                     f"extraction into it: give a new --out, or resume with --resume auto")
            FeatureStore(store_dir, **common)
        except RunFolderError as e:
            problem = str(e)
    if broadcast_object(info, problem):
        raise RunFolderError(problem) if info.is_main else SystemExit(1)
    store = FeatureStore(store_dir, create=False, **common)
    todo = len(store.missing_parts(info.rank, info.world_size))
    if info.is_main:
        if todo:
            log(f"  features {split}: {len(listing):,} images in {store.num_parts} part(s) of up to "
                f"{store.part_size} ({cfg.feature_dtype}) -> {store_dir}"
                + (f" ({store.num_parts - len(store.missing_parts())} already there)" if
                   len(store.missing_parts()) < store.num_parts else ""))
        else:
            log(f"  features {split}: all {store.num_parts} part(s) already in {store_dir}")

    def progress(done, total, rate, eta):
        if info.is_main:
            log(f"  features {split}: part {done}/{total} of rank 0 | {rate:,.1f} img/s | eta {format_duration(eta)}")

    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else None
    extract_features(model, listing, store, cfg.batch_size, info.device, task.image_size, task.resize_size,
                     cfg.num_threads, info.rank, info.world_size, autocast, progress, stop)
    if info.enabled:
        dist.barrier()  # every rank's parts are on disk before anyone reads them
    return store_dir


def linear_probe(model, task, cfg, info: DistInfo, folder: str, log=print, stop=None) -> tuple:
    """(top-1 %, top-5 % or None) of the probe on the validation split; model.fc becomes the classifier."""
    t0 = time.perf_counter()
    digest = weights_digest(model)
    stores = {split: _extract_split(model, task, split, cfg, info, folder, digest, log, stop)
              for split in ("train", "val")}
    train, val = FeatureReader(stores["train"]), FeatureReader(stores["val"])
    n, mean, var = train.moments()
    mean, std = feature_scaling(torch.from_numpy(mean), torch.from_numpy(var))  # centred, one scale
    num_classes = len(task.classes)
    solver, why = choose_solver(cfg.probe_solver, n, train.dim, cfg.lbfgs_max_mb)
    t_fit = time.perf_counter()
    if solver == "lbfgs":  # every rank fits the same small problem: deterministic, no communication
        if info.is_main:
            log(f"  fit: L-BFGS, {cfg.lbfgs_iters} iterations, l2 {cfg.l2:g} ({why})")
        x, y = train.load_all()
        weight, bias = fit_lbfgs((x.double() - mean) / std, y, num_classes, cfg.l2, cfg.lbfgs_iters)
        del x, y
    else:
        batch = max(1, min(cfg.probe_batch_size, n // info.world_size))
        steps = max(1, cfg.probe_epochs * math.ceil(n / (batch * info.world_size)))
        if info.is_main:
            log(f"  fit: {solver}, {cfg.probe_epochs} epochs = {steps} steps of {batch} x {info.world_size} "
                f"features, lr {cfg.probe_lr:g} (cosine), l2 {cfg.l2:g} ({why})")

        def fit_log(step, loss):
            if info.is_main:
                elapsed = time.perf_counter() - t_fit
                log(f"  fit: step {step}/{steps} | loss {loss:.4f} | elapsed {format_duration(elapsed)} | "
                    f"eta {format_duration(elapsed / step * (steps - step))}")

        try:
            weight, bias = fit_streamed(train.stream(batch, info.rank, info.world_size, cfg.seed), steps, train.dim,
                                        num_classes, mean, std, cfg.l2, solver, cfg.probe_lr, device=info.device,
                                        average=_average(info), log=fit_log, log_every=max(1, steps // 10))
        except FloatingPointError as e:  # diverged: the same on every rank (the loss is averaged); one line
            raise ConfigError(str(e)) from None
    w, b = fold_standardisation(weight.cpu(), bias.cpu(), mean, std)  # on raw features, float64
    hits = torch.zeros(3, dtype=torch.float64)
    for x, y in val.parts(info.rank, info.world_size):
        hits += topk_hits(x.double() @ w.T + b, y)
    if info.enabled:
        hits = hits.to(info.device)
        dist.all_reduce(hits)
        hits = hits.cpu()
    with torch.no_grad():
        model.fc.weight.copy_(w.to(model.fc.weight.dtype))
        model.fc.bias.copy_(b.to(model.fc.bias.dtype))
    if info.is_main:
        log(f"  linear probe: {format_duration(time.perf_counter() - t0)} (fit "
            f"{format_duration(time.perf_counter() - t_fit)})")
    return topk_percent(hits, num_classes)

