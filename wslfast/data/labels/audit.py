"""Scoring a labeller against a sense audit set, and CatLIP's first-sense rule as the baseline.

An audit item (tests/data/sense_audit.jsonl, one JSON object a line):
    {"id": 7, "kind": "caption" | "tags", "text": "..." (a caption) or ["#tag", ...] (a tag list),
     "word": the word or compound judged, "accept": [acceptable synset names] ([] = the word must give no
     label), "split": "dev" | "holdout"}
An item is right when the labeller's synsets for the text (the `synsets` of `python -m wslfast.data label`)
contain an acceptable synset and no other noun sense of the word; for accept = [], when they contain no noun
sense of the word at all. The senses of the word are WordNet's for its lemma (the compound's, for a compound;
morphology for plurals; a hashtag's by vocab.normalize_hashtag and the plural rules).

`first_sense_labels` is CatLIP's rule (apple/corenet, wordnet_tagged_classification.py): each word is
lemmatized (WordNet's morphy), its first noun sense taken, and the word dropped when that synset's name is not
`<word>.n.01` (its first sense is headed by another lemma: kid -> child.n.01, photo -> photograph.n.01); no
compounds; no context. It is run here over the same tokens as ours.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from .vocab import normalize_hashtag
from .text import tokenize

__all__ = ["load_audit", "word_senses", "item_right", "score", "first_sense_labels"]


def load_audit(path: str | Path) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                it = json.loads(line)
                kind, text, word, accept = it["kind"], it["text"], it["word"], it["accept"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not an audit item ({e})") from None
            ok = (kind == "caption" and isinstance(text, str)) or (
                kind == "tags" and isinstance(text, list) and all(isinstance(t, str) for t in text))
            if not ok or not isinstance(word, str) or not isinstance(accept, list):
                raise ValueError(f"{path}:{n}: kind must be caption (text a string) or tags (text a list of "
                                 "strings), word a string, accept a list")
            items.append(it)
    return items


def word_senses(word: str, kind: str, wn) -> set[str]:
    """All noun synset names the judged word can stand for (see the module docstring)."""
    if kind == "tags":
        from .vocab import noun_index

        index = noun_index()
        return {index.synset(o).name() for o in index.senses(normalize_hashtag(word))}
    lemma = wn.morphy("_".join(tokenize(word)), "n")
    out = {s.name() for s in wn.synsets(lemma, "n")} if lemma else set()
    return out


def item_right(item: dict, synsets: Iterable[str], wn) -> bool:
    got = set(synsets)
    accept = set(item["accept"])
    wrong = word_senses(item["word"], item["kind"], wn) - accept
    if not accept:
        return not (got & wrong)
    return bool(got & accept) and not (got & wrong)


def score(items: list[dict], labeller: Callable[[dict], list[str]], wn) -> dict:
    """Share of items right, overall and per split; `wrong` lists (id, word, what the labeller said)."""
    per: dict[str, list[int]] = {}
    wrong = []
    for it in items:
        got = labeller(it)
        ok = item_right(it, got, wn)
        for key in ("all", it.get("split", "dev")):
            r = per.setdefault(key, [0, 0])
            r[0] += ok
            r[1] += 1
        if not ok:
            wrong.append((it.get("id"), it["word"], sorted(set(got) & (word_senses(it["word"], it["kind"], wn)
                                                                    | set(it["accept"])))))
    out = {k: {"right": r, "items": n, "accuracy": r / n} for k, (r, n) in per.items()}
    out["wrong"] = wrong
    return out


def first_sense_labels(text, kind: str, wn) -> list[str]:
    """CatLIP's caption -> synsets rule (see the module docstring); tags are read as words."""
    words = [normalize_hashtag(t) for t in text] if kind == "tags" else tokenize(text)
    out = []
    from nltk.corpus.reader.wordnet import WordNetError

    for w in words:
        forms = wn._morphy(w, "n") if w else []
        lemma = min(forms, key=len) if forms else w  # nltk's WordNetLemmatizer.lemmatize(w)
        try:
            synset = wn.synset(f"{lemma}.n.01")  # the lemma's first noun sense
        except (WordNetError, ValueError):
            continue
        if synset.name() == f"{lemma}.n.01" and synset.name() not in out:
            out.append(synset.name())
    return out
