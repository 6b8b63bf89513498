"""Caption vocabularies the way CatLIP builds them, and IDF target weights (SuperClass).

```python
from wslfast.data.labels.senses import SenseTagger
from wslfast.data.labels.vocabulary import count_synsets, caption_vocabulary, idf_weights
tagger = SenseTagger()
counts = count_synsets(captions, tagger)                    # Counter: synset name -> texts that have it
vocab = caption_vocabulary(counts, top=25_000, min_count=5)  # a HashtagVocabulary (same file format)
vocab.save("vocab.json")
ids = SenseTagger(vocab=vocab).caption_labels(text)          # a caption's label ids
w = idf_weights(ids, df, num_docs)                           # per-label target weights, summing to 1
```
- `count_synsets` streams: memory = the distinct synsets seen (at most WordNet's 82k), not the texts; each
  text counts once per synset (document frequency, which is also what `idf_weights` needs). Counters from
  several workers add (`Counter.update`).
- `caption_vocabulary`: the synsets with >= min_count texts, the `top` most frequent (CatLIP: top-N by count
  with a minimum count), labels ordered by count (ties by synset offset), saved counts = those document
  frequencies. It is a normal HashtagVocabulary (source 'wordnet-captions'): its table maps every lemma of
  its synsets, so hashtags map too; use SenseTagger(vocab=...) to label text with it.
- `idf_weights` (SuperClass, NeurIPS 2024): w_j proportional to ln(N / df_j), normalized per sample to sum to
  1, in place of 1/k, so a rare label weighs more than 'man' or 'day'. A label in every document has weight
  0; when all of a sample's labels do, the weights fall back to 1/k.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

__all__ = ["count_synsets", "caption_vocabulary", "document_frequencies", "idf_weights"]


def count_synsets(texts: Iterable, tagger, kind: str = "caption") -> Counter:
    """Synset name -> number of texts (captions, or tag lists with kind='tags') that have it; streaming."""
    if kind not in ("caption", "tags"):
        raise ValueError(f"count_synsets: kind must be 'caption' or 'tags', got {kind!r}")
    names = tagger.lex.names
    counts: Counter = Counter()
    for text in texts:
        counts.update(tagger.synset_ids(text, kind))
    return Counter({names[sid]: n for sid, n in counts.items()})


def caption_vocabulary(counts: Mapping[str, int], top: int | None = None, min_count: int = 1,
                       nltk_data_dir=None, source: str = "wordnet-captions"):
    """A HashtagVocabulary over the synsets with >= min_count texts, the `top` most frequent (see above).
    source: "wordnet-captions", or "wordnet-nouns" for synsets counted from hashtags in context."""
    from .vocab import HashtagVocabulary, noun_index
    from .lexicon import get_lexicon

    if top is not None and top < 1:
        raise ValueError(f"caption_vocabulary: top must be >= 1 or None, got {top}")
    if min_count < 1:
        raise ValueError(f"caption_vocabulary: min_count must be >= 1, got {min_count}")
    lex = get_lexicon(nltk_data_dir)
    per_offset: dict[int, int] = {}
    for name, n in counts.items():
        sid = lex.sid_of_name.get(name)
        if sid is None:
            raise ValueError(f"caption_vocabulary: {name!r} is not a WordNet noun synset")
        if int(n) < 0:
            raise ValueError(f"caption_vocabulary: negative count {n} for {name!r}")
        per_offset[lex.offsets[sid]] = per_offset.get(lex.offsets[sid], 0) + int(n)
    kept = sorted((o for o, n in per_offset.items() if n >= min_count), key=lambda o: (-per_offset[o], o))
    kept = kept[:top] if top is not None else kept
    if not kept:
        raise ValueError(f"caption_vocabulary: no synset has {min_count} or more texts "
                         f"({len(per_offset)} distinct synsets)")
    return HashtagVocabulary.from_synsets(kept, noun_index(nltk_data_dir), [per_offset[o] for o in kept],
                                          source=source)


def document_frequencies(label_lists: Iterable[Sequence[int]]) -> tuple[Counter, int]:
    """(label -> number of samples that have it, number of samples), streaming."""
    df: Counter = Counter()
    n = 0
    for labels in label_lists:
        df.update(set(labels))
        n += 1
    return df, n


def idf_weights(labels: Sequence[int], df: Mapping[int, int] | Sequence[int], num_docs: int) -> list[float]:
    """Per-label target weights of one sample: ln(N / df_j), normalized to sum to 1 (see above)."""
    if num_docs < 1:
        raise ValueError(f"idf_weights: num_docs must be >= 1, got {num_docs}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"idf_weights: labels must be distinct, got {list(labels)}")
    raw = []
    for j in labels:
        try:
            d = df[j]
        except (KeyError, IndexError):
            raise ValueError(f"idf_weights: no document frequency for label {j}") from None
        if not 1 <= d <= num_docs:
            raise ValueError(f"idf_weights: document frequency {d} of label {j} outside [1, {num_docs}]")
        raw.append(math.log(num_docs / d))
    total = sum(raw)
    if not labels:
        return []
    if total <= 0.0:
        return [1.0 / len(labels)] * len(labels)
    return [r / total for r in raw]
