"""The target task of a transfer run: an ImageFolder tree (train/ and val/, a folder per class), listed and
checked once, and what zero-shot needs from the pretraining run (its vocabulary, its label counts, the demo
task's own class map: zeroshot_classes). Run plumbing: it reads the pretraining config, as wslfast.engine.datasets does.

    task = load_task(root, image_size=224, resize_size=256, info=info, cache_dir=run_folder)
    task.train, task.val        # FolderListings (files that decode, their labels, the classes)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..engine.datasets import demo_corpus_dir
from ..engine.distributed import DistInfo, gather_objects
from ..errors import ConfigError, DataError, UserError

__all__ = ["Task", "load_task", "demo_class_map", "vocabulary_path_of", "pretraining_label_counts", "zeroshot_classes"]

SPLITS = ("train", "val")


@dataclass
class Task:
    """The target task: its folder, class names, listings of both splits and the eval transform's sizes."""
    root: str
    classes: list
    image_size: int
    resize_size: int
    demo: bool  # the demo corpus's own task (its classes have a built-in synset map)
    train: object = None  # FolderListing
    val: object = None    # FolderListing


def check_task_root(root: str) -> None:
    for split in SPLITS:
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError(f"data: {root!r} needs {split}/ with one folder per class")
    train = os.path.join(root, "train")
    if len([d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d))]) < 2:
        raise DataError(f"data: {root}/train must hold at least 2 class folders")


def load_task(root: str, image_size: int, resize_size: int, demo: bool, info: DistInfo, cache_dir: str | None = None,
              validate: bool = True) -> Task:
    """Both splits listed; every image decoded once to check it, the work split over the ranks and the
    result kept in cache_dir (checked-<split>.json) for the next run over the same files."""
    from ..data.loaders import list_image_folder

    check_task_root(root)
    listings = {}
    for split in SPLITS:
        cache = os.path.join(cache_dir, f"checked-{split}.json") if cache_dir else None
        listings[split] = list_image_folder(os.path.join(root, split), validate=validate,
                                            part=(info.rank, info.world_size),
                                            gather=lambda obj: gather_objects(info, obj),
                                            check_cache=cache, verbose=info.is_main)
    classes = listings["train"].classes
    if listings["val"].classes != classes:
        extra = sorted(set(listings["val"].classes) ^ set(classes))
        raise DataError(f"data: {root}/val and {root}/train must hold the same class folders (differ: "
                        f"{', '.join(extra[:5])})")
    if len(classes) < 2:
        raise DataError(f"data: {root}/train must hold at least 2 class folders")
    return Task(root, classes, image_size, resize_size, demo, listings["train"], listings["val"])


def demo_class_map(classes) -> dict[str, str]:
    """The demo target task's classes (folders named by each concept's first spelling, e.g. 'dog') -> their
    wnids, from the demo corpus's concept table."""
    from ..data.synthetic import CONCEPTS

    table = {forms[0]: wnid for forms, _, wnid in CONCEPTS}
    return {c: table[c] for c in classes if c in table}


def vocabulary_path_of(pre_cfg) -> str:
    """The pretraining vocabulary: the demo corpus's vocab.json, else the shards' manifest.json."""
    if pre_cfg.get("data") == "synthetic":
        return os.path.join(demo_corpus_dir(pre_cfg), "vocab.json")
    if pre_cfg.get("data") and os.path.isfile(os.path.join(pre_cfg["data"], "manifest.json")):
        return os.path.join(pre_cfg["data"], "manifest.json")
    raise ConfigError("zeroshot: cannot find the pretraining vocabulary: give --vocab (vocab.json or manifest.json)")


def pretraining_label_counts(pre_cfg, vocab_path: str, vocab) -> tuple[list, str]:
    """(per-label counts of the pretraining data, where from): the shards' manifest label_counts (what the
    model saw, after resampling) when it can be found, else the vocabulary's tag counts."""
    candidates = [vocab_path]
    if pre_cfg.get("data") == "synthetic":
        candidates.insert(0, os.path.join(demo_corpus_dir(pre_cfg), "shards", "manifest.json"))
    elif pre_cfg.get("data"):
        candidates.insert(0, os.path.join(pre_cfg["data"], "manifest.json"))
    for path in candidates:
        try:
            with open(path, encoding="utf-8") as f:
                counts = json.load(f).get("label_counts")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(counts, list) and len(counts) == len(vocab):
            return counts, f"{path} label_counts"
    if vocab.counts is not None and len(vocab.counts) == len(vocab):
        return vocab.counts, f"{vocab_path} counts"
    raise ConfigError("zeroshot_prior: no label counts of the pretraining data found (the shards' manifest.json "
                      "label_counts or the vocabulary's counts); give --vocab a manifest.json, or "
                      "--zeroshot-prior 0")


def zeroshot_classes(cfg, pre_cfg, task: Task, say):
    """(vocabulary, each class's hashtag labels, the log label prior or None) for zero-shot: a class's labels
    are its WordNet synset's and (hyponyms) those of the synsets under it; the prior only when the config's
    zeroshot_prior asks for it. say(text) prints (rank 0's)."""
    from .zeroshot import class_hashtag_sets, load_vocabulary, log_label_prior, read_class_map, resolve_class_synsets

    vocab_path = cfg.vocab or vocabulary_path_of(pre_cfg)
    try:
        vocab = load_vocabulary(vocab_path)
        class_map = (read_class_map(cfg.class_map) if cfg.class_map else
                     demo_class_map(task.classes) if task.demo and pre_cfg.get("data") == "synthetic" else None)
        class_sets = class_hashtag_sets(resolve_class_synsets(task.classes, class_map), vocab, hyponyms=cfg.hyponyms)
        prior, prior_from = None, None
        if cfg.zeroshot_prior > 0:
            counts, prior_from = pretraining_label_counts(pre_cfg, vocab_path, vocab)
            prior = log_label_prior(counts)
    except UserError:  # WordNet missing (its message says how to install it), ...
        raise
    except (OSError, ValueError) as e:  # a class map or vocabulary that cannot be used
        raise DataError(str(e)) from None
    covered = sum(1 for s in class_sets if s)
    say(f"zeroshot: {covered}/{len(task.classes)} classes have hashtags in {vocab_path} ({len(vocab)} labels); "
        f"pooling {cfg.pooling}; chance top-1 {100.0 / len(task.classes):.1f}%")
    if cfg.zeroshot_prior > 0 or cfg.zeroshot_temperature != 1:
        say(f"zeroshot: calibrated: temperature {cfg.zeroshot_temperature:g}, prior^{cfg.zeroshot_prior:g} divided "
            f"out" + (f" (from {prior_from})" if prior_from else ""))
    return vocab, class_sets, prior
