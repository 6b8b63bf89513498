"""The built-in demo dataset in one call: synthetic corpus -> WordNet vocabulary -> shards.

    from wslfast.data.demo import prepare_demo
    d = prepare_demo("runs/demo")     # {"shards", "vocab", "target_train", "target_val", "num_classes", ...}

Idempotent: a finished demo with the same settings is reused (demo.json records them); anything else is
rebuilt. The vocabulary comes from WordNet (see wslfast.data.wordnet); without it, with a warning, from
the synthetic concepts' built-in table (same synsets, minus the filler noun #love).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

__all__ = ["prepare_demo"]


def prepare_demo(root, num_images: int = 2000, seed: int = 0, image_size: int = 64, num_target_classes: int = 10,
                 min_count: int = 5, shard_size: int = 500, sampling: str = "natural",
                 label_noise: float = 0.0) -> dict:
    from .shards import write_shards
    from .synthetic import concept_vocabulary, make_synthetic_corpus
    from .vocab import HashtagVocabulary
    from .wordnet import WordNetMissingError

    root = Path(root)
    settings = {"num_images": num_images, "seed": seed, "image_size": image_size, "min_count": min_count,
                "num_target_classes": num_target_classes, "shard_size": shard_size, "sampling": sampling,
                "label_noise": label_noise, "version": 1}
    done = root / "demo.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("settings") == settings and (Path(info["shards"]) / "manifest.json").is_file():
            return info
    corpus = make_synthetic_corpus(root / "corpus", num_images=num_images, seed=seed, image_size=image_size,
                                   num_target_classes=num_target_classes)
    counts: dict[str, int] = {}
    for line in Path(corpus["counts"]).read_text().splitlines():
        tag, n = line.split("\t")
        counts[tag] = int(n)
    try:
        vocab = HashtagVocabulary.from_counts(counts, min_count=min_count)
    except WordNetMissingError as e:  # still usable: the concepts' own vocabulary (no filler tags)
        warnings.warn(f"{e}; using the synthetic concepts' built-in vocabulary instead")
        vocab = concept_vocabulary()
    vocab.save(root / "vocab.json")
    manifest = write_shards(corpus["images"], corpus["tags"], vocab, root / "shards", shard_size=shard_size,
                            sampling=sampling, label_noise=label_noise, seed=seed, role="train", source="demo")
    info = {"shards": str(root / "shards"), "vocab": str(root / "vocab.json"),
            "target_train": corpus["target_train"], "target_val": corpus["target_val"],
            "num_classes": len(vocab), "num_samples": manifest["num_samples"], "name": manifest["name"],
            "target_classes": corpus["target_classes"], "settings": settings}
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, done)
    return info
