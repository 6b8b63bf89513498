"""The built-in demo dataset in one call: synthetic corpus -> WordNet vocabulary -> shards.

    from wslfast.data.demo import prepare_demo
    d = prepare_demo("runs/demo")     # {"shards", "vocab", "target_train", "target_val", "num_classes", ...}

The one demo preparer: `python -m wslfast.data demo`, the training scripts (through
wslfast.engine.datasets, which names the folder from a run's config) and the benchmarks all use it. Layout of a demo folder: images/, tags.jsonl,
counts.tsv, target/{train,val} (the transfer task), vocab.json, shards/, and demo.json (written last: the
settings it was built with). Idempotent: a finished demo with the same settings is reused; anything else is
rebuilt. A new folder is built beside its final place and renamed into it when whole, so concurrent
builders (one per machine) never see half a corpus. The vocabulary comes from WordNet (see
wslfast.data.labels.wordnet); without it, with a warning, from the synthetic concepts' built-in table (same
synsets, minus the filler noun #love).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

__all__ = ["prepare_demo", "demo_folder_name"]

_VERSION = 2


def _build(root: Path, final: Path, settings: dict, num_images, seed, image_size, num_target_classes, min_count,
           shard_size, sampling, label_noise) -> dict:
    from ..errors import WordNetMissingError
    from .build import write_shards
    from .format import read_counts
    from .labels import HashtagVocabulary
    from .synthetic import concept_vocabulary, make_synthetic_corpus

    corpus = make_synthetic_corpus(root, num_images=num_images, seed=seed, image_size=image_size,
                                   num_target_classes=num_target_classes)
    try:
        vocab = HashtagVocabulary.from_counts(read_counts(corpus["counts"]), min_count=min_count)
    except WordNetMissingError as e:  # still usable: the concepts' own vocabulary (no filler tags)
        warnings.warn(f"{e}; using the synthetic concepts' built-in vocabulary instead")
        vocab = concept_vocabulary()
    vocab.save(root / "vocab.json")
    manifest = write_shards(root / "images", root / "tags.jsonl", vocab, root / "shards", shard_size=shard_size,
                            sampling=sampling, label_noise=label_noise, seed=seed, role="train", source="demo")
    info = {"shards": str(final / "shards"), "vocab": str(final / "vocab.json"),
            "target_train": str(final / "target" / "train"), "target_val": str(final / "target" / "val"),
            "num_classes": len(vocab), "num_samples": manifest["num_samples"], "name": manifest["name"],
            "target_classes": corpus["target_classes"], "settings": settings}
    tmp = root / "demo.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, root / "demo.json")
    return info


def prepare_demo(root, num_images: int = 2000, seed: int = 0, image_size: int = 64, num_target_classes: int = 10,
                 min_count: int = 5, shard_size: int = 500, sampling: str = "natural",
                 label_noise: float = 0.0) -> dict:
    root = Path(root).absolute()
    settings = {"num_images": num_images, "seed": seed, "image_size": image_size, "min_count": min_count,
                "num_target_classes": num_target_classes, "shard_size": shard_size, "sampling": sampling,
                "label_noise": label_noise, "version": _VERSION}
    args = (settings, num_images, seed, image_size, num_target_classes, min_count, shard_size, sampling,
            label_noise)
    done = root / "demo.json"
    if done.is_file():
        try:
            info = json.loads(done.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("settings") == settings and (Path(info["shards"]) / "manifest.json").is_file():
            return info
    if root.is_dir() and any(root.iterdir()):
        return _build(root, root, *args)  # an older or unfinished demo: rebuilt in place (shards resume)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    info = _build(tmp, root, *args)
    try:
        if root.is_dir():
            root.rmdir()  # an empty folder (raises if another builder filled it meanwhile)
        os.replace(tmp, root)
    except OSError:  # another process finished the same demo first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return json.loads(done.read_text())
    return info


def demo_folder_name(num_images: int, num_classes: int, image_size: int, seed: int, sampling: str) -> str:
    """The cache folder name of a demo corpus, from the parameters it is built with."""
    return f"synthetic-n{num_images}-c{num_classes}-px{image_size}-s{seed}-{sampling}"
