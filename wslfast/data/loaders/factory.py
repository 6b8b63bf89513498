"""The one loader factory: a folder of shards, a list of shards, or an ImageFolder tree -> a DaliLoader.

`train_loader` and `eval_loader` are `make_loader` with the kind's defaults (train: random-resized-crop at
image_size and a flip, SparseTargets from shards, int64 classes from an ImageFolder tree; eval: resize the
shorter side to resize_size, center crop). An ImageFolder source is a folder, or the FolderListing of one
(`list_image_folder`: listed and checked once, e.g. split over the ranks of a job). Shards
are checked against their index when a loader opens them (`format.verify_shard(full=False)`, a few KB a
shard), so a damaged shard is named at open, not as a DALI error mid-run.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import DataError
from ..format import index_num_samples, list_shards, read_manifest, verify_shard
from .dali import DaliLoader
from .folder import FolderListing, list_image_folder

__all__ = ["make_loader", "train_loader", "eval_loader"]


def _shard_files(shards) -> tuple[list[str], list[str], int | None]:
    """(tar paths, index paths, num_classes from the manifest or None)."""
    if isinstance(shards, (str, os.PathLike)) and Path(shards).is_dir():
        tars = list_shards(shards)
    elif isinstance(shards, (str, os.PathLike)):
        tars = [str(shards)]
    else:
        tars = [str(s) for s in shards]
    if not tars:
        raise FileNotFoundError(f"no whole shards found in {shards!r}")
    for t in tars:
        if not Path(t).is_file():
            raise FileNotFoundError(f"shard {t} does not exist")
    idx = [str(Path(t).with_suffix(".idx")) for t in tars]
    missing = [i for i in idx if not Path(i).is_file()]
    if missing:
        raise FileNotFoundError(f"shard index files missing: {missing[:3]} (write shards with wslfast.data)")
    for t, i in zip(tars, idx):
        verify_shard(t, full=False, idx=i)
    try:
        num_classes = int(read_manifest(Path(tars[0]).parent)["num_classes"])
    except (FileNotFoundError, ValueError, KeyError):
        num_classes = None
    return tars, idx, num_classes


def make_loader(kind: str, source, batch_size: int, rank: int = 0, world_size: int = 1, device="cuda",
                image_size: int = 224, resize_size: int | None = None, seed: int = 0, num_threads: int = 4,
                num_classes: int | None = None, validate: bool = True, **kw) -> DaliLoader:
    """A DaliLoader of `kind` ("train" or "eval") over `source`: a folder of shards (+ manifest.json), a
    .tar or a list of them (each with its .idx), or an ImageFolder tree (a folder with no shards, or its
    FolderListing: int64 class targets, `.classes` holds the names, `.skipped` the files that do not decode;
    validate=False skips that decode check). resize_size defaults to image_size. num_classes: from the manifest unless
    given (shards without a manifest need it). **kw: DaliLoader's tuning (dtype, prefetch, ...)."""
    if kind not in ("train", "eval"):
        raise ValueError(f"make_loader: kind must be 'train' or 'eval', got {kind!r}")
    class_weights = kw.pop("class_weights", None)  # default: the manifest's (None: 1/k targets)
    common = dict(kind=kind, batch_size=batch_size, rank=rank, world_size=world_size, device=device,
                  image_size=image_size, resize_size=image_size if resize_size is None else resize_size,
                  seed=seed, num_threads=num_threads, **kw)
    src = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if src is not None and src.is_dir() and not list_shards(src):
        source = list_image_folder(src, validate=validate)
    if isinstance(source, FolderListing):
        loader = DaliLoader(files=source.files, labels=source.labels, num_classes=len(source.classes),
                            num_samples=len(source.files), **common)
        loader.classes, loader.skipped = source.classes, source.skipped
        return loader
    tars, idx, manifest_classes = _shard_files(source)
    num_classes = num_classes or manifest_classes
    if num_classes is None:
        raise DataError(f"{kind}_loader: no manifest.json beside the shards; pass num_classes=")
    return DaliLoader(tars=tars, idx=idx, num_classes=num_classes, num_samples=index_num_samples(idx),
                      class_weights=class_weights if class_weights is not None else _class_weights(tars, num_classes),
                      **common)


def _class_weights(tars, num_classes: int) -> list[float] | None:
    """The manifest's per-class target weights (`shards --target-weights idf`), or None (1/k targets)."""
    folder = Path(tars[0]).parent
    try:
        weights = read_manifest(folder).get("class_weights")
    except (FileNotFoundError, ValueError):
        return None
    if weights is None:
        return None
    ok = isinstance(weights, list) and len(weights) == num_classes and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf") for w in weights)
    if not ok:
        raise DataError(f"{folder / 'manifest.json'}: class_weights must be {num_classes} finite numbers >= 0")
    return weights


def train_loader(shards, batch_size, rank=0, world_size=1, device="cuda", image_size=224, seed=0,
                 num_threads=4, num_classes=None, **kw) -> DaliLoader:
    """Training batches (images, SparseTargets) from webdataset shards (a folder or a list of .tar).
    An ImageFolder tree (no shards in it) gives (images, int64 classes) instead, for fine-tuning."""
    return make_loader("train", shards, batch_size, rank, world_size, device, image_size, kw.pop("resize_size", None),
                       seed, num_threads, num_classes, **kw)


def eval_loader(shards_or_folder, batch_size, rank=0, world_size=1, device="cuda", image_size=224,
                resize_size=256, seed=0, num_threads=4, num_classes=None, **kw) -> DaliLoader:
    """Eval batches: resize the shorter side to resize_size, center crop image_size. An ImageFolder tree
    gives int64 class targets (`.classes` holds the names); shards give SparseTargets."""
    return make_loader("eval", shards_or_folder, batch_size, rank, world_size, device, image_size, resize_size,
                       seed, num_threads, num_classes, **kw)
