"""What a record's text becomes in the build: label ids (check pass) and the counts a vocabulary is made of.

`RecordLabeller(vocab, kind, senses)` labels one `sources.Record`:
- kind "tags" (the default for TAGS files): its hashtags (`Record.tags`). With senses="context" (the default
  where the vocabulary allows it) through the SenseTagger's tags mode: each tag's sense is chosen among the
  vocabulary's synsets with the image's other tags as context (#kitty beside #cat is a kitten), and tags
  that name nothing visible give no label (#love, #photooftheday, #happy: meta words and feeling/motive/
  relation/quantity senses). senses="first" is the plain lookup (`HashtagVocabulary.label_of`: each tag's
  most frequent sense in the vocabulary), which is also what runs for a vocabulary the tagger cannot read
  (one not made from WordNet, e.g. the synthetic concepts'). Where the tagger chooses what the lookup
  chooses, the labels (so the shards' bytes) are the same.
- kind "caption" (the default for webdataset inputs): its text (`Record.meta["text"]`: a webdataset /
  img2dataset caption, YFCC titles and descriptions) through the SenseTagger's caption reader (compounds,
  nouns in context, senses among the vocabulary's synsets), then its hashtags, if any, as above; the labels
  in first-seen order, each once.
The tagger (WordNet tables, ~250 MB) is made on first use in each process and never pickled: the labeller
travels to the workers with the build's Job as its vocabulary and settings. Which reader runs is decided
once, by the driver (`RecordLabeller.mode`), and is part of the build's settings, so every worker and every
re-run labels alike.

`count_source(source, kind)`: document frequencies over a Source's usable records, streaming (memory: the
distinct synsets, or the distinct tags): synset name -> records (kind "caption": the caption's synsets and
its tags'; CatLIP's vocabulary counts) or hashtag -> records (kind "tags": the counts a hashtag vocabulary is
made of, as `vocab --tags` counts). Time: one tagging pass over the texts (~10^4 captions/s a core).
"""
from __future__ import annotations

from collections import Counter

__all__ = ["RecordLabeller", "KINDS", "SENSES", "count_source", "release_taggers", "tagger_reads"]

KINDS = ("tags", "caption")
SENSES = ("context", "first")
_TAGGER_SOURCES = ("wordnet-nouns", "wordnet-captions", "imagenet1k")  # vocabularies made from WordNet synsets
_TAGGERS: dict = {}  # per process: (vocabulary digest) -> SenseTagger


def _vocab_key(vocab) -> int:
    return hash((tuple(vocab.synsets), vocab.source))


class RecordLabeller:
    """Record -> label ids of `vocab` (see the module docstring)."""

    def __init__(self, vocab, kind: str = "tags", senses: str = "context"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if senses not in SENSES:
            raise ValueError(f"senses must be one of {SENSES}, got {senses!r}")
        self.vocab, self.kind = vocab, kind
        self.mode = "tagger" if kind == "caption" or (senses == "context" and tagger_reads(vocab)) else "lookup"
        if kind == "caption" and not tagger_reads(vocab):
            from ...errors import ConfigError

            raise ConfigError(f"caption labels need a vocabulary of WordNet synsets (from `vocab --kind caption` "
                              f"or `vocab --tags`); this one's source is {vocab.source!r}")
        if self.mode == "tagger":
            self.tagger()  # fail here, in the driver, if WordNet is missing, not in the middle of a pass

    def __getstate__(self):
        return {"vocab": self.vocab, "kind": self.kind, "mode": self.mode}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def describe(self) -> str:
        """What runs, for the settings and the manifest: 'caption+tags', 'tags-context' or 'tags-first'."""
        return "caption+tags" if self.kind == "caption" else ("tags-context" if self.mode == "tagger" else "tags-first")

    def tagger(self):
        key = _vocab_key(self.vocab)
        t = _TAGGERS.get(key)
        if t is None:
            from ..labels.senses import SenseTagger

            _TAGGERS.clear()  # one vocabulary per process at a time: the tables are shared, the memos are not
            t = _TAGGERS[key] = SenseTagger(vocab=self.vocab)
        return t

    def __call__(self, record) -> list[int]:
        if self.mode == "lookup":
            return self.vocab.labels_of(record.tags)
        t = self.tagger()
        if self.kind == "caption":
            text = record.meta.get("text")
            labels = t.caption_labels(text) if isinstance(text, str) and text else []
            if record.tags:
                labels = list(dict.fromkeys(labels + t.tag_labels(record.tags)))
            return labels
        return t.tag_labels(record.tags)


def release_taggers() -> None:
    """Drop this process's taggers and WordNet tables (~270 MB), e.g. when a build ends and training starts in
    the same process; a later labeller loads them again from the disk cache (~3 s)."""
    if _TAGGERS:
        from ..labels import lexicon

        _TAGGERS.clear()
        lexicon._load.cache_clear()


def tagger_reads(vocab) -> bool:
    """Can the SenseTagger label with this vocabulary (its synsets are WordNet's)?"""
    return getattr(vocab, "source", None) in _TAGGER_SOURCES


def count_source(source, kind: str, progress: bool = False, tag_senses: str = "first") -> tuple[Counter, int, dict]:
    """(counts, usable records, skips by reason) over a Source (see the module docstring). Counts of synset
    names for captions, and for hashtags with tag_senses="context" (each tag's sense from the record's other
    tags, as the build labels them); counts of the hashtags themselves with tag_senses="first"."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    counts: Counter = Counter()
    skipped: Counter = Counter()
    used = 0
    tagger = names = None
    if kind == "caption" or tag_senses == "context":
        from ..labels.senses import SenseTagger

        tagger = SenseTagger()
        names = tagger.lex.names
    blocks = (b for fi in range(len(source.paths)) for b in source.blocks(fi))
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, desc="count", unit="block", mininterval=2.0)
    for block in blocks:
        for _, r in source.records(block):
            if r.skip:
                skipped[r.skip] += 1
                continue
            used += 1
            if tagger is None:
                counts.update(set(r.tags))
                continue
            text = r.meta.get("text") if kind == "caption" else None
            sids = tagger.synset_ids(text, "caption") if isinstance(text, str) and text else []
            if r.tags:
                sids = sids + tagger.synset_ids(r.tags, "tags")
            counts.update(set(sids))
    if names is not None:
        counts = Counter({names[s]: n for s, n in counts.items()})
    return counts, used, dict(skipped)
