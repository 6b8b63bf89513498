"""A small demo corpus: images with noisy hashtags, and a target task that shares their visual structure.

Each of 24 concepts is a real WordNet noun (its hashtags are lemmas, synonyms and plurals of one synset,
so the vocabulary step merges them) drawn as one (shape, colour) pair: 8 shapes x 3 colours. An image shows
1-3 concepts on a smooth random background. Its hashtags are noisy as on Instagram: each shown concept is
tagged with probability 0.8 (in a random spelling: '#Dogs', 'domesticdog'), a concept not shown is added
with probability 0.1, and filler tags (#instagood, #love, ...) are sprinkled in, so a few images end with
no in-vocabulary tag at all.

The target task (an ImageFolder tree) has `num_target_classes` classes, class c = concept c drawn large,
with a small distractor concept beside it: a backbone pretrained on the hashtags has learnt exactly the
features that separate them. Everything is a pure function of the seed.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .format import write_counts

__all__ = ["CONCEPTS", "FILLER_TAGS", "make_synthetic_corpus", "concept_vocabulary"]

# (spellings of one WordNet noun synset, the synset, its wnid): tests check both against WordNet. Each
# synset is the first (most frequent) sense of its spellings, e.g. cake.n.01 is "a block of solid substance".
CONCEPTS = [
    (("brownbear", "ursusarctos", "BrownBear"), "brown_bear.n.01", "n02132136"),
    (("dog", "dogs", "domesticdog"), "dog.n.01", "n02084071"),
    (("car", "cars", "automobile", "motorcar"), "car.n.01", "n02958343"),
    (("bicycle", "bicycles"), "bicycle.n.01", "n02834778"),
    (("sunflower", "sunflowers", "helianthus"), "sunflower.n.01", "n11978233"),
    (("airplane", "aeroplane", "airplanes"), "airplane.n.01", "n02691156"),
    (("horse", "horses", "equuscaballus"), "horse.n.01", "n02374451"),
    (("pizza", "pizzas", "pizzapie"), "pizza.n.01", "n07873807"),
    (("guitar", "guitars"), "guitar.n.01", "n03467517"),
    (("lighthouse", "pharos"), "beacon.n.03", "n02814860"),
    (("butterfly", "butterflies"), "butterfly.n.01", "n02274259"),
    (("sunset", "sundown"), "sunset.n.01", "n15169248"),
    (("beach", "beaches"), "beach.n.01", "n09217230"),
    (("mountain", "mountains"), "mountain.n.01", "n09359803"),
    (("boat", "boats"), "boat.n.01", "n02858304"),
    (("train", "trains", "railroadtrain"), "train.n.01", "n04468005"),
    (("cake", "cakes"), "cake.n.01", "n02937469"),
    (("tulip", "tulips"), "tulip.n.01", "n12454159"),
    (("kitten", "kittens"), "kitten.n.01", "n02122948"),
    (("balloon", "balloons"), "balloon.n.01", "n02782093"),
    (("umbrella", "umbrellas"), "umbrella.n.01", "n04507155"),
    (("strawberry", "strawberries"), "strawberry.n.01", "n07745940"),
    (("owl", "owls"), "owl.n.01", "n01621127"),
    (("tree", "trees"), "tree.n.01", "n13104059"),
]
# Filler: no WordNet noun, except 'love' (a noun with no visual meaning, as on Instagram).
FILLER_TAGS = ("instagood", "nofilter", "photooftheday", "happy", "follow", "love")
_SHAPES = ("disc", "square", "diamond", "ring", "cross", "hstripes", "vstripes", "checker")
_COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 235]], dtype=np.float32)


def concept_vocabulary():
    """The 24 concepts as a HashtagVocabulary built without WordNet (label = concept index, tags = the
    normalized spellings): for tests and demos on machines without WordNet. Filler tags stay outside."""
    from .labels.vocab import HashtagVocabulary, normalize_hashtag

    tags = {normalize_hashtag(f): i for i, (forms, _, _) in enumerate(CONCEPTS) for f in forms}
    return HashtagVocabulary([c[1] for c in CONCEPTS], [c[2] for c in CONCEPTS], tags, source="synthetic-concepts")


def _concept_look(c: int) -> tuple[str, np.ndarray]:
    return _SHAPES[c % len(_SHAPES)], _COLOURS[c // len(_SHAPES)]


def _shape_mask(shape: str, yy, xx, cy, cx, r):
    dy, dx = yy - cy, xx - cx
    box = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "disc":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return box
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        w = max(r / 3.0, 1.5)
        return box & ((np.abs(dy) <= w) | (np.abs(dx) <= w))
    period = max(r / 2.0, 3.0)
    if shape == "hstripes":
        return box & (np.floor(dy / period * 2) % 2 == 0)
    if shape == "vstripes":
        return box & (np.floor(dx / period * 2) % 2 == 0)
    return box & ((np.floor(dy / period * 2) + np.floor(dx / period * 2)) % 2 == 0)  # checker


def _draw(rng, size: int, objects: list[tuple[int, float]]) -> np.ndarray:
    """A smooth random background with the given (concept, radius) objects at random places."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, size=(2, 3)).astype(np.float32)
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / (size * 1.5) + 0.25
    img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    for concept, r in objects:
        shape, colour = _concept_look(concept)
        cy, cx = rng.uniform(r, size - r, size=2)
        mask = _shape_mask(shape, yy, xx, cy, cx, r)
        img[mask] = colour * rng.uniform(0.8, 1.1) + rng.normal(0, 8, size=3)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _spelling(rng, concept: int) -> str:
    forms = CONCEPTS[concept][0]
    tag = forms[rng.integers(len(forms))]
    return ("#" if rng.random() < 0.7 else "") + (tag.capitalize() if rng.random() < 0.2 else tag)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_synthetic_corpus(out_dir, num_images: int = 2000, seed: int = 0, image_size: int = 64,
                          num_target_classes: int = 10, target_train_per_class: int = 30,
                          target_val_per_class: int = 10, quality: int = 90) -> dict:
    """Writes out_dir/images/**.jpg, tags.jsonl, counts.tsv, target/{train,val}/<class>/*.jpg.

    Returns {"root", "images", "tags", "counts", "target", "target_train", "target_val", "num_images",
    "concepts", "target_classes"} (paths as str).
    """
    if num_images < 1:
        raise ConfigError(f"make_synthetic_corpus: num_images must be >= 1, got {num_images}")
    if not 1 <= num_target_classes <= len(CONCEPTS):
        raise ConfigError(f"make_synthetic_corpus: num_target_classes must be in [1, {len(CONCEPTS)}]")
    if image_size < 16:
        raise ConfigError(f"make_synthetic_corpus: image_size must be >= 16, got {image_size}")
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_concepts, s = len(CONCEPTS), image_size
    tag_counts: Counter = Counter()
    lines = []
    for i in range(num_images):
        shown = rng.choice(n_concepts, size=int(rng.integers(1, 4)), replace=False)
        objects = [(int(c), float(rng.uniform(0.12, 0.25) * s)) for c in shown]
        rel = f"{i // 1000:03d}/{i:06d}.jpg"
        _write(root / "images" / rel, _jpeg(_draw(rng, s, objects), quality))
        tags = [_spelling(rng, int(c)) for c in shown if rng.random() < 0.8]
        if rng.random() < 0.1:
            tags.append(_spelling(rng, int(rng.integers(n_concepts))))
        tags += ["#" + FILLER_TAGS[j] for j in rng.choice(len(FILLER_TAGS), size=int(rng.integers(0, 3)),
                                                          replace=False)]
        tags = [tags[j] for j in rng.permutation(len(tags))]
        tag_counts.update(tags)
        lines.append(json.dumps({"image": rel, "tags": tags}))
    (root / "tags.jsonl").write_text("\n".join(lines) + "\n")
    write_counts(root / "counts.tsv", tag_counts)

    classes = [CONCEPTS[c][0][0] for c in range(num_target_classes)]
    for split, per_class in (("train", target_train_per_class), ("val", target_val_per_class)):
        for c, name in enumerate(classes):
            for j in range(per_class):
                other = int(rng.choice([k for k in range(n_concepts) if k != c]))
                objects = [(c, float(rng.uniform(0.22, 0.32) * s)), (other, float(rng.uniform(0.08, 0.12) * s))]
                _write(root / "target" / split / name / f"{j:05d}.jpg", _jpeg(_draw(rng, s, objects), quality))
    return {"root": str(root), "images": str(root / "images"), "tags": str(root / "tags.jsonl"),
            "counts": str(root / "counts.tsv"), "target": str(root / "target"),
            "target_train": str(root / "target" / "train"), "target_val": str(root / "target" / "val"),
            "num_images": num_images, "concepts": [c[1] for c in CONCEPTS], "target_classes": classes}
