"""Co-occurrence counted over the corpus itself: which lexnames each word keeps company with in YOUR data.

WordNet's glosses already give every word lexname affinities (lexicon.class_pmi: 'roast' goes with food).
A corpus knows more ("construction" beside cranes that are machines, "fishing" beside bass that are fish). So
a first pass counts, for every word whose sense is not in doubt (one candidate, or a winner by at least
`margin`), its lexname against the stems of the other words of the same text; `stats()` turns the counts
into PMI affinities, and `SenseTagger(stats=...)` adds them to WordNet's in the second (labelling) pass.

```python
from wslfast.data.labels.cooccur import ContextCounter
counter = ContextCounter(SenseTagger(), kind="caption")
for text in captions:           # any iterable, streamed
    counter.add(text)
counter.save("stats.json")      # counts (mergeable: ContextCounter.merge, for per-worker passes)
tagger = SenseTagger(stats=counter.stats())
```
Memory: one row of 26 counts per distinct context stem, at most `max_words` rows (default 200,000, ~60 MB):
past that, the rows seen least are dropped (lossy counting: each prune raises the floor by one), so the rare
tail is forgotten and the frequent words, the ones that matter, are kept. Time: one tagging pass.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .lexicon import NOUN_LEXNAMES, class_pmi_from_counts

__all__ = ["ContextCounter", "ContextStats"]

_FORMAT = "wslfast-context-counts"


class ContextStats:
    """Corpus affinities: stem -> {lexname index: PMI} (what SenseTagger(stats=...) reads)."""

    def __init__(self, pmi: dict[str, dict[int, float]], texts: int = 0):
        self.pmi = pmi
        self.texts = texts

    def affinity(self, stem: str) -> dict[int, float] | None:
        return self.pmi.get(stem)

    def __repr__(self) -> str:
        return f"ContextStats({len(self.pmi)} stems from {self.texts} texts)"


class ContextCounter:
    """Streaming first pass (see the module docstring)."""

    def __init__(self, tagger, kind: str = "caption", margin: float = 2.0, max_words: int = 200_000):
        if kind not in ("caption", "tags"):
            raise ValueError(f"ContextCounter: kind must be 'caption' or 'tags', got {kind!r}")
        if max_words < 1:
            raise ValueError(f"ContextCounter: max_words must be >= 1, got {max_words}")
        self.tagger, self.kind, self.margin, self.max_words = tagger, kind, float(margin), int(max_words)
        self.rows: dict[str, list[int]] = {}
        self.class_n = [0] * len(NOUN_LEXNAMES)
        self.texts = 0
        self._floor = 0

    def add(self, text) -> None:
        """Count one caption (a str) or one image's tags (a list of str)."""
        units = self.tagger.context_units(text, self.kind, self.margin)
        self.texts += 1
        for k, (stem, lexname) in enumerate(units):
            if lexname is None:
                continue
            self.class_n[lexname] += 1
            for j, (other, _) in enumerate(units):
                if j != k and other:
                    row = self.rows.get(other)
                    if row is None:
                        if len(self.rows) >= self.max_words:
                            self._prune()
                        row = self.rows[other] = [0] * len(NOUN_LEXNAMES)
                    row[lexname] += 1

    def _prune(self) -> None:
        while len(self.rows) >= self.max_words:
            self._floor += 1
            self.rows = {w: r for w, r in self.rows.items() if sum(r) > self._floor}

    def merge(self, other: "ContextCounter") -> "ContextCounter":
        """Adds another counter's counts (a worker's pass) into this one."""
        for w, r in other.rows.items():
            mine = self.rows.get(w)
            if mine is None:
                if len(self.rows) >= self.max_words:
                    self._prune()
                self.rows[w] = list(r)
            else:
                for c, k in enumerate(r):
                    mine[c] += k
        self.class_n = [a + b for a, b in zip(self.class_n, other.class_n)]
        self.texts += other.texts
        return self

    def stats(self, alpha: float = 10.0, min_count: int = 5, min_pmi: float = 0.5) -> ContextStats:
        return ContextStats(class_pmi_from_counts(self.rows, self.class_n, alpha, min_count, min_pmi), self.texts)

    # ---- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"format": _FORMAT, "version": 1, "classes": NOUN_LEXNAMES, "kind": self.kind,
                                   "texts": self.texts, "class_n": self.class_n, "counts": self.rows}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, tagger, margin: float = 2.0, max_words: int = 200_000) -> "ContextCounter":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            if not isinstance(d, dict) or d.get("format") != _FORMAT:
                raise ValueError("missing format tag")
            if d["classes"] != NOUN_LEXNAMES:
                raise ValueError("lexname classes differ from this WordNet's")
            out = cls(tagger, d["kind"], margin, max_words)
            out.texts, out.class_n = int(d["texts"]), [int(x) for x in d["class_n"]]
            n = len(NOUN_LEXNAMES)
            for w, r in d["counts"].items():
                if not isinstance(w, str) or len(r) != n:
                    raise ValueError(f"bad row for {w!r}")
                out.rows[w] = [int(x) for x in r]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"context counts {str(path)!r} cannot be read ({e})") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{str(path)!r} is not a wslfast context-count file ({e})") from None
        return out
