"""Zero-shot transfer through the hashtag head and WordNet (SWAG Sec. 5: no training on the target task).

A target class that is a WordNet noun synset is scored from the pretrained hashtag classifier: its
"hashtag set" S(c) is every vocabulary label whose synset is c itself or one of c's hyponyms (transitively,
instance hyponyms included; a vocabulary label IS a synset, see wslfast.data.labels.vocab). The pooling is

    score_c(x) = log sum_{j in S(c)} softmax(z(x))_j  =  logsumexp_{j in S(c)} log_softmax(z(x))_j

the log of the probability the hashtag model gives to c's part of the WordNet tree (#dog, #puppy, #beagle,
... all count for dog.n.01); "max" (the single best hashtag of the set) is the alternative. The argmax over
classes is the prediction. A class with an empty set cannot be predicted (score -inf); it is reported.

Calibration (optional, label-free): the hashtag softmax is the pretraining data's posterior, so frequent
hashtags win a priori. Two knobs adjust it before the pooling:

    log p'(j | x) = log_softmax(z(x) / T)_j  -  tau * log prior_j

T (temperature, default 1) flattens (T > 1) or sharpens (T < 1, towards max pooling) the softmax; tau in
[0, 1] (default 0: off) divides out the pretraining label prior (the shards' label counts, Laplace-smoothed):
at tau = 1, p(j | x) / p(j) is proportional to p(x | j), the posterior under a uniform prior over the
hashtags, so each target class's hashtags compete as equally likely a priori (Bayes' rule for a change of
label prior: Saerens et al. 2002; logit adjustment, Menon et al. 2021).

    sets = class_hashtag_sets(["n02084071", "kitten.n.01"], vocab)          # label ids per class
    scores = zeroshot_scores(hashtag_logits, sets)                         # [B, C]

Class names: wnids ("n02084071") or synset names ("dog.n.01"); for folders named otherwise a class map
{class: synset} is passed in: `read_class_map` reads one from a `class<TAB>synset` file (a dataset's own
map, such as the demo task's, comes from its caller).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import torch

__all__ = ["POOLINGS", "parse_synset_id", "read_class_map", "load_vocabulary", "resolve_class_synsets",
           "class_hashtag_sets", "zeroshot_scores", "zeroshot_evaluate", "log_label_prior"]

POOLINGS = ("logsumexp", "max")
_WNID = re.compile(r"^n\d{8}$")
_SYNSET_NAME = re.compile(r"^.+\.n\.\d{2}$")


def parse_synset_id(name: str) -> str | None:
    """'n02084071' or 'dog.n.01' -> itself (a synset id we accept); anything else -> None."""
    name = name.strip()
    return name if _WNID.match(name) or _SYNSET_NAME.match(name) else None


def read_class_map(path: str) -> dict[str, str]:
    """A `class<TAB or spaces>synset` file (synset: wnid or name; '#' starts a comment) -> {class: synset}."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parse_synset_id(parts[1]) is None:
                raise ValueError(f"{path}:{n}: expected `class<TAB>synset` (synset a wnid like n02084071 or a "
                                 f"name like dog.n.01), got {line!r}")
            if parts[0] in out and out[parts[0]] != parts[1]:
                raise ValueError(f"{path}:{n}: class {parts[0]!r} mapped twice")
            out[parts[0]] = parts[1]
    return out


def load_vocabulary(path: str):
    """A HashtagVocabulary from a saved vocab.json or from a shards folder's manifest.json (its "vocab")."""
    import json

    from ..data.labels import HashtagVocabulary

    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return HashtagVocabulary.from_dict(d["vocab"] if isinstance(d, dict) and "vocab" in d else d)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"zero-shot: cannot read a hashtag vocabulary from {path!r} ({e})") from None


def resolve_class_synsets(classes: Sequence[str], class_map: dict[str, str] | None = None) -> list[str]:
    """The synset of each class: from class_map when given, else the class name itself (wnid or synset name)."""
    out, bad = [], []
    for c in classes:
        s = class_map.get(c) if class_map is not None else parse_synset_id(c)
        (out if s is not None else bad).append(s if s is not None else c)
    if bad:
        hint = "missing from the class map" if class_map is not None else \
            "not a WordNet synset (name folders by wnid, e.g. n02084071, or give a class map)"
        raise ValueError(f"zero-shot: {len(bad)} class(es) {hint}: {', '.join(bad[:5])}")
    return out


def _synset_of(wn, ident: str):
    if _WNID.match(ident):
        return wn.synset_from_pos_and_offset("n", int(ident[1:]))
    return wn.synset(ident)


def class_hashtag_sets(class_synsets: Sequence[str], vocab, hyponyms: bool = True, wordnet=None) -> list[list[int]]:
    """Vocabulary labels per class: the class's own synset and (hyponyms=True) all its hyponyms that are
    labels. Needs WordNet (wslfast.data.labels.wordnet.get_wordnet) for names and hyponyms; with hyponyms=False and
    wnids only, none."""
    wnid_to_label = {w: i for i, w in enumerate(vocab.wnids)}
    name_to_label = {s: i for i, s in enumerate(vocab.synsets)}
    need_wordnet = hyponyms or any(not _WNID.match(s) and s not in name_to_label for s in class_synsets)
    if need_wordnet and wordnet is None:
        from ..data.labels import get_wordnet

        wordnet = get_wordnet()
    sets = []
    for ident in class_synsets:
        if not hyponyms:
            label = wnid_to_label.get(ident) if _WNID.match(ident) else name_to_label.get(ident)
            sets.append([] if label is None else [label])
            continue
        try:
            root = _synset_of(wordnet, ident)
        except Exception as e:  # nltk raises WordNetError / ValueError for unknown ids
            raise ValueError(f"zero-shot: {ident!r} is not a WordNet noun synset ({e})") from None
        tree = [root, *root.closure(lambda s: s.hyponyms() + s.instance_hyponyms())]
        labels = {wnid_to_label[f"n{s.offset():08d}"] for s in tree if f"n{s.offset():08d}" in wnid_to_label}
        sets.append(sorted(labels))
    return sets


def log_label_prior(counts: Sequence[float]) -> torch.Tensor:
    """[V] log of the pretraining label prior from per-label counts, Laplace-smoothed ((n + 1) / (N + V)),
    so a label never seen still has a finite prior."""
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    if c.dim() != 1 or c.numel() == 0 or bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
        raise ValueError("zero-shot: label counts must be a non-empty list of finite numbers >= 0")
    return torch.log((c + 1) / (c.sum() + c.numel())).float()


def zeroshot_scores(hashtag_logits: torch.Tensor, class_sets: Sequence[Iterable[int]],
                    pooling: str = "logsumexp", temperature: float = 1.0, log_prior: torch.Tensor | None = None,
                    prior_strength: float = 0.0) -> torch.Tensor:
    """[B, V] hashtag logits -> [B, C] class scores (float32; -inf for a class with no hashtag), with the
    calibration of the module docstring (temperature T, prior_strength tau of the [V] log_prior)."""
    if pooling not in POOLINGS:
        raise ValueError(f"zero-shot: pooling must be one of {POOLINGS}, got {pooling!r}")
    if hashtag_logits.dim() != 2:
        raise ValueError(f"zero-shot: hashtag logits must be [B, V], got {tuple(hashtag_logits.shape)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"zero-shot: temperature must be a number > 0, got {temperature}")
    logp = torch.log_softmax(hashtag_logits.float() / temperature, dim=1)
    if prior_strength != 0.0:
        if log_prior is None or log_prior.shape != (logp.shape[1],):
            raise ValueError(f"zero-shot: prior_strength needs a log prior of {logp.shape[1]} labels, got "
                             f"{None if log_prior is None else tuple(log_prior.shape)}")
        logp = logp - prior_strength * log_prior.to(logp.device, logp.dtype)
    b, v = logp.shape
    out = logp.new_full((b, len(class_sets)), float("-inf"))
    for c, labels in enumerate(class_sets):
        idx = torch.as_tensor(list(labels), dtype=torch.long, device=logp.device)
        if idx.numel() == 0:
            continue
        if int(idx.min()) < 0 or int(idx.max()) >= v:
            raise ValueError(f"zero-shot: class {c} has a hashtag label outside [0, {v})")
        sel = logp.index_select(1, idx)
        out[:, c] = torch.logsumexp(sel, dim=1) if pooling == "logsumexp" else sel.max(dim=1).values
    return out


@torch.no_grad()
def zeroshot_evaluate(model, batches, class_sets: Sequence[Iterable[int]], pooling: str = "logsumexp",
                      **calibration):
    """Top-1 / top-5 (percent) of zero-shot prediction over (images, labels) batches, with the model's own
    hashtag head (model(images) -> [B, V] logits); calibration: zeroshot_scores' temperature, log_prior,
    prior_strength. Returns (top1, top5, scores [N, C], labels [N])."""
    model.eval()
    scores, labels = [], []
    for images, y in batches:
        scores.append(zeroshot_scores(model(images.float()), class_sets, pooling, **calibration).cpu())
        labels.append(y.cpu().long())
    if not scores:
        raise ValueError("zero-shot: no evaluation images")
    s, y = torch.cat(scores), torch.cat(labels)
    k = min(5, s.shape[1])
    best = s.topk(k, dim=1).indices
    return (100.0 * (best[:, 0] == y).float().mean().item(), 100.0 * (best == y[:, None]).any(1).float().mean().item(),
            s, y)
