import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wslfast.data.synthetic import CONCEPTS, FILLER_TAGS, concept_vocabulary, make_synthetic_corpus


def _tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_layout_and_determinism(tmp_path):
    kw = dict(num_images=30, image_size=32, num_target_classes=3, target_train_per_class=2,
              target_val_per_class=1)
    a = make_synthetic_corpus(tmp_path / "a", seed=3, **kw)
    make_synthetic_corpus(tmp_path / "b", seed=3, **kw)
    make_synthetic_corpus(tmp_path / "c", seed=4, **kw)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert _tree_bytes(tmp_path / "a") != _tree_bytes(tmp_path / "c")
    lines = [json.loads(x) for x in Path(a["tags"]).read_text().splitlines()]
    assert len(lines) == 30 == a["num_images"]
    for rec in lines:
        with Image.open(Path(a["images"]) / rec["image"]) as im:
            assert im.format == "JPEG" and im.size == (32, 32)
        assert all(isinstance(t, str) for t in rec["tags"])
    classes = sorted(p.name for p in Path(a["target_train"]).iterdir())
    assert classes == sorted(a["target_classes"]) and len(classes) == 3
    assert all(len(list((Path(a["target_val"]) / k).iterdir())) == 1 for k in classes)
    counts = dict(line.split("\t") for line in Path(a["counts"]).read_text().splitlines())
    assert sum(map(int, counts.values())) == sum(len(r["tags"]) for r in lines)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_corpus(tmp_path, num_images=0)
    with pytest.raises(ValueError, match="num_target_classes"):
        make_synthetic_corpus(tmp_path, num_target_classes=len(CONCEPTS) + 1)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_corpus(tmp_path, image_size=8)


def test_hashtags_are_wordnet_nouns_of_their_synset(wordnet):
    from wslfast.data.labels.vocab import noun_index

    index = noun_index()
    for forms, synset, wnid in CONCEPTS:
        assert wnid == f"n{wordnet.synset(synset).offset():08d}"
        for form in forms:
            senses = index.senses(form.lower())
            assert senses and index.synset(senses[0]).name() == synset, form
    assert [f for f in FILLER_TAGS if index.senses(f)] == ["love"]


def test_concept_vocabulary_agrees_with_wordnet(wordnet):
    from wslfast.data import HashtagVocabulary

    cv = concept_vocabulary()
    assert len(cv) == len(CONCEPTS) and cv.label_of("#instagood") is None and cv.label_of("love") is None
    wv = HashtagVocabulary.from_counts({f: 1 for forms, _, _ in CONCEPTS for f in forms})
    for forms, synset, _ in CONCEPTS:
        for f in forms:
            assert cv.name_of(cv.label_of(f)) == wv.name_of(wv.label_of(f)) == synset


def test_target_task_is_learnable_from_pixels(corpus):
    """Nearest class mean on gradient-orientation histograms beats chance by far: the target classes
    (same colour, different shapes for the first 8) differ in visual structure, not in colour alone."""
    def feats(split):
        X, y = [], []
        for c, name in enumerate(sorted(p.name for p in Path(corpus[split]).iterdir())):
            for f in sorted((Path(corpus[split]) / name).iterdir()):
                g = np.asarray(Image.open(f).convert("L"), dtype=float)
                gy, gx = np.gradient(g)
                mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
                h = np.bincount((ang / np.pi * 8).astype(int).clip(0, 7).ravel(), weights=mag.ravel(), minlength=8)
                X.append(np.concatenate([h / h.sum(), [mag.mean() / 50]]))
                y.append(c)
        return np.array(X), np.array(y)
    Xt, yt = feats("target_train")
    Xv, yv = feats("target_val")
    means = np.stack([Xt[yt == c].mean(0) for c in np.unique(yt)])
    pred = np.argmin(((Xv[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred == yv).mean() >= 2.0 / len(means)
