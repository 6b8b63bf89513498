"""Hashtag vocabularies: hashtags canonicalized to WordNet noun synsets, one label per synset.

Rules (what `label_of` and `from_counts` do):
- Normalization: Unicode NFKC, strip whitespace and leading '#', lowercase, fold accents (café -> cafe, as
  WordNet is ASCII), then drop every character that is not a letter or digit ('#Brown_Bear' ->
  'brownbear'). WordNet noun lemmas get the same treatment, so a hashtag matches a lemma with its separators removed (brown_bear, ursus_arctos, jack-o'-lantern).
- Plurals: a key that is no lemma goes through WordNet's noun morphology: the exception list (noun.exc,
  mice -> mouse) and then the detachment rules (-s, -ses, -xes, -zes, -ches, -shes, -men, -ies -> -y).
- Several lemmas with one key (rare): the one-word lemma first, then the alphabetically first.
- Several senses: the most frequent sense, i.e. WordNet's sense 1 (index.noun lists senses by their
  frequency in the semantically tagged corpora). In a vocabulary, a hashtag goes to its most frequent sense
  AMONG THE VOCABULARY'S SYNSETS, so '#crane' in the ImageNet-1k vocabulary means the first-ranked of the
  two crane synsets that ImageNet has. Synonyms thus merge: #brownbear and #ursusarctos -> brown_bear.n.01.
- A saved vocabulary maps every lemma of its synsets and every hashtag it was built from, so `label_of`
  needs no WordNet; for other tags it tries the plural rules against that table.
"""
from __future__ import annotations

import functools
import json
import os
import unicodedata
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

from ...errors import DataError

__all__ = ["HashtagVocabulary", "normalize_hashtag", "NounIndex", "noun_index", "check_schema"]

_FORMAT = "wslfast-hashtag-vocabulary"
# WordNet's noun detachment rules (morph(7WN)), in its order.
_NOUN_SUFFIX_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                      ("men", "man"), ("ies", "y"))


def normalize_hashtag(tag: str) -> str:
    """'#Brown_Bear' -> 'brownbear' (see the module docstring); '' for a tag with no letters or digits."""
    if not isinstance(tag, str):
        raise TypeError(f"hashtag must be a str, got {type(tag).__name__}")
    s = unicodedata.normalize("NFKC", tag).strip().lstrip("#").lower()
    s = "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))
    return "".join(ch for ch in unicodedata.normalize("NFC", s) if ch.isalnum())


def _depluralize(key: str, known) -> list[str]:
    """Base forms of `key` by the detachment rules that land on a key in `known`."""
    out = []
    for suffix, repl in _NOUN_SUFFIX_RULES:
        if key.endswith(suffix) and len(key) > len(suffix):
            base = key[: len(key) - len(suffix)] + repl
            if base in known and base not in out:
                out.append(base)
    return out


class NounIndex:
    """WordNet's noun lemmas keyed by normalized form, with their senses (offsets) in frequency order."""

    def __init__(self, corpus_dir: str | os.PathLike):
        corpus = Path(corpus_dir)
        self._senses: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)
        with open(corpus / "index.noun", encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):  # the license header
                    continue
                parts = line.split()
                lemma, n_synsets, n_ptrs = parts[0], int(parts[2]), int(parts[3])
                offsets = [int(x) for x in parts[6 + n_ptrs: 6 + n_ptrs + n_synsets]]
                self._senses[normalize_hashtag(lemma.replace("_", " "))].append((lemma, offsets))
        for entries in self._senses.values():  # one-word lemma first, then alphabetical
            entries.sort(key=lambda e: ("_" in e[0] or "-" in e[0], e[0]))
        self._exceptions: dict[str, list[str]] = defaultdict(list)
        with open(corpus / "noun.exc", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    self._exceptions[normalize_hashtag(parts[0])] += [normalize_hashtag(p) for p in parts[1:]]
        self._wn_corpus = str(corpus)

    def base_keys(self, key: str) -> list[str]:
        """The lemma keys a normalized hashtag stands for: itself if a lemma, else its morphological bases."""
        if key in self._senses:
            return [key]
        bases = [b for b in self._exceptions.get(key, []) if b in self._senses]
        return bases or _depluralize(key, self._senses)

    def senses(self, key: str) -> list[int]:
        """Noun synset offsets of a normalized hashtag, most frequent first (empty if not a noun)."""
        out: list[int] = []
        for base in self.base_keys(key):
            for _, offsets in self._senses[base]:
                out += [o for o in offsets if o not in out]
        return out

    def __contains__(self, key: str) -> bool:
        return bool(self.base_keys(key))

    def synset(self, offset: int):
        from .wordnet import _reader

        return _reader(self._wn_corpus).synset_from_pos_and_offset("n", offset)


def check_schema(d) -> None:
    """ValueError naming the first field of a saved vocabulary (`HashtagVocabulary.to_dict()`) that is
    wrong: the format tag and version; `synsets` and `wnids` non-empty lists of distinct non-empty strings,
    one wnid per synset; `hashtags` a non-empty object {hashtag: label} with integer labels (not booleans,
    floats or strings) in [0, len(synsets)); `counts` null or one non-negative integer per label; `source`
    a string. Time and memory: one pass over the table."""
    if not isinstance(d, dict) or d.get("format") != _FORMAT:
        raise ValueError(f"not a wslfast hashtag vocabulary (missing format tag {_FORMAT!r})")
    if d.get("version", 1) != 1:
        raise ValueError(f"vocabulary version {d.get('version')!r} is not 1, the version this wslfast reads")
    for key in ("synsets", "wnids", "hashtags"):
        if key not in d:
            raise ValueError(f"field {key!r} is missing")
    labels = _distinct_names(d["synsets"], "synsets")
    if len(_distinct_names(d["wnids"], "wnids")) != len(labels):
        raise ValueError(f"'wnids' has {len(d['wnids'])} entries, 'synsets' {len(labels)}: one wnid per synset")
    table = d["hashtags"]
    if not isinstance(table, dict) or not table:
        raise ValueError(f"'hashtags' must be a non-empty object {{hashtag: label}}, got {_kind(table)}")
    for tag, label in table.items():
        if not tag:
            raise ValueError("'hashtags' has an empty hashtag")
        if not _is_int(label) or not 0 <= label < len(labels):
            raise ValueError(f"hashtag {tag!r} has label {label!r}: labels are integers in [0, {len(labels)})")
    counts = d.get("counts")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(labels)
                               or not all(_is_int(n) and n >= 0 for n in counts)):
        raise ValueError(f"'counts' must be null or {len(labels)} non-negative integers (one per label), got "
                         f"{_kind(counts)}")
    if not isinstance(d.get("source", ""), str):
        raise ValueError(f"'source' must be a string, got {_kind(d['source'])}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is no label


def _kind(v) -> str:
    """How a wrong JSON value is named in a message: short, whatever its size."""
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return f"an object of {len(v)} keys"
    return f"{type(v).__name__} {v!r}"[:80]


def _distinct_names(v, key: str) -> list:
    if not isinstance(v, list) or not v:
        raise ValueError(f"{key!r} must be a non-empty list of strings, got {_kind(v)}")
    first: dict = {}
    for i, name in enumerate(v):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{key!r}[{i}] must be a non-empty string, got {_kind(name)}")
        if name in first:
            raise ValueError(f"{key!r} lists {name!r} twice (labels {first[name]} and {i})")
        first[name] = i
    return v


@functools.lru_cache(maxsize=None)
def _noun_index(corpus: str) -> NounIndex:
    return NounIndex(corpus)


def noun_index(nltk_data_dir=None) -> NounIndex:
    from .wordnet import ensure_wordnet

    return _noun_index(str(ensure_wordnet(nltk_data_dir)))


@functools.lru_cache(maxsize=1)
def _never_labelled() -> tuple[frozenset, frozenset]:
    """(hashtag keys, lexnames) that the sense tagger never turns into a label (visual_priors.json)."""
    priors = json.loads(resources.files("wslfast.data.labels").joinpath("visual_priors.json").read_text())
    return (frozenset(normalize_hashtag(w) for w in priors["meta_words"]) - {""},
            frozenset(priors["drop_lexnames"]))


class HashtagVocabulary:
    """Labels 0..L-1, each a WordNet noun synset, and the normalized hashtags that map to each."""

    def __init__(self, synsets: list[str], wnids: list[str], hashtags: Mapping[str, int],
                 counts: list[int] | None = None, source: str = "wordnet-nouns"):
        if len(synsets) != len(wnids) or len(set(synsets)) != len(synsets):
            raise ValueError("HashtagVocabulary: synsets must be unique and match wnids one to one")
        if counts is not None and len(counts) != len(synsets):
            raise ValueError("HashtagVocabulary: counts must have one entry per label")
        for tag, label in hashtags.items():
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(synsets):
                raise ValueError(f"HashtagVocabulary: hashtag {tag!r} has label {label!r} outside [0, {len(synsets)})")
        self.synsets, self.wnids, self.source = list(synsets), list(wnids), source
        self.counts = list(counts) if counts is not None else None
        self._tag_to_label = dict(hashtags)
        self._label_to_tags: list[list[str]] = [[] for _ in synsets]
        for tag, label in sorted(self._tag_to_label.items()):
            self._label_to_tags[label].append(tag)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_synsets(cls, offsets: list[int], index: NounIndex, counts: list[int] | None = None,
                     extra_tags: Iterable[str] = (), source: str = "wordnet-nouns") -> "HashtagVocabulary":
        """A vocabulary over the given noun synsets (label = position); tags = their lemmas + extra_tags."""
        synsets = [index.synset(o) for o in offsets]
        label_of_offset = {o: i for i, o in enumerate(offsets)}
        keys = set(extra_tags)
        for s in synsets:
            keys.update(normalize_hashtag(name.replace("_", " ")) for name in s.lemma_names())
        table = {}
        for key in sorted(keys):
            # the tag's most frequent sense among this vocabulary's synsets
            label = next((label_of_offset[o] for o in index.senses(key) if o in label_of_offset), None)
            if label is not None:
                table[key] = label
        return cls([s.name() for s in synsets], [f"n{o:08d}" for o in offsets], table, counts, source)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int] | Iterable[tuple[str, int]], source: str = "wordnet-nouns",
                    min_count: int = 1, top: int | None = None, nltk_data_dir=None) -> "HashtagVocabulary":
        """Hashtag counts -> the synsets whose summed count is >= min_count, the `top` most frequent.

        Each hashtag counts toward its most frequent noun sense; labels are ordered by count (descending),
        ties by synset offset. Tags that are no WordNet noun are left out, and so is what the build's sense
        tagger never labels (labels/senses.py): hashtags that are words about the picture itself (#photo,
        #picture: `meta_words` of visual_priors.json) and synsets that name nothing visible (feelings,
        motives, relations, quantities: its `drop_lexnames`), so no label of the vocabulary is one that no
        image can get (#love beside a dog gives no label, hence no love.n.01 class).
        """
        if source != "wordnet-nouns":
            raise ValueError(f"HashtagVocabulary.from_counts: unknown source {source!r} (use 'wordnet-nouns')")
        if top is not None and top < 1:
            raise ValueError(f"HashtagVocabulary.from_counts: top must be >= 1 or None, got {top}")
        index = noun_index(nltk_data_dir)
        items = counts.items() if isinstance(counts, Mapping) else counts
        per_key: dict[str, int] = defaultdict(int)
        for tag, n in items:
            if int(n) < 0:
                raise ValueError(f"HashtagVocabulary.from_counts: negative count {n} for {tag!r}")
            key = normalize_hashtag(tag)
            if key:
                per_key[key] += int(n)
        meta_keys, drop_lexnames = _never_labelled()
        per_synset: dict[int, int] = defaultdict(int)
        observed = []
        for key, n in per_key.items():
            senses = [] if key in meta_keys else index.senses(key)
            if senses and index.synset(senses[0]).lexname() not in drop_lexnames:
                per_synset[senses[0]] += n
                observed.append(key)
        kept = sorted((o for o, n in per_synset.items() if n >= min_count), key=lambda o: (-per_synset[o], o))
        kept = kept[:top] if top is not None else kept
        if not kept:
            raise DataError("HashtagVocabulary.from_counts: no hashtag is a WordNet noun with enough counts "
                             f"(min_count={min_count}, {len(per_key)} distinct tags)")
        return cls.from_synsets(kept, index, [per_synset[o] for o in kept], observed, source)

    @classmethod
    def imagenet1k(cls, nltk_data_dir=None) -> "HashtagVocabulary":
        """The 1,000 ImageNet-1k synsets, labels in the usual sorted-wnid order, tags = their lemmas."""
        text = resources.files("wslfast.data.labels").joinpath("imagenet1k_wnids.txt").read_text()
        offsets = [int(w[1:]) for w in text.split()]
        return cls.from_synsets(offsets, noun_index(nltk_data_dir), source="imagenet1k")

    # ---- lookups ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.synsets)

    @property
    def num_hashtags(self) -> int:
        return len(self._tag_to_label)

    def label_of(self, tag: str) -> int | None:
        key = normalize_hashtag(tag)
        label = self._tag_to_label.get(key)
        if label is None and key:
            bases = _depluralize(key, self._tag_to_label)
            label = self._tag_to_label[bases[0]] if bases else None
        return label

    def labels_of(self, tags: Iterable[str]) -> list[int]:
        """The distinct labels of an image's tags, in first-seen order (tags outside are dropped)."""
        out: list[int] = []
        for t in tags:
            label = self.label_of(t)
            if label is not None and label not in out:
                out.append(label)
        return out

    def _check(self, label: int) -> int:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(self):
            raise IndexError(f"label {label!r} outside [0, {len(self)})")
        return label

    def name_of(self, label: int) -> str:
        return self.synsets[self._check(label)]

    def wnid_of(self, label: int) -> str:
        return self.wnids[self._check(label)]

    def hashtags_of(self, label: int) -> list[str]:
        return list(self._label_to_tags[self._check(label)])

    # ---- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": 1, "source": self.source, "synsets": self.synsets,
                "wnids": self.wnids, "counts": self.counts, "hashtags": self._tag_to_label}

    @classmethod
    def from_dict(cls, d: dict) -> "HashtagVocabulary":
        """The vocabulary of a `to_dict()` (a saved vocab.json, a manifest's "vocab"); ValueError naming the
        first field that breaks the schema (`check_schema`)."""
        check_schema(d)
        return cls(d["synsets"], d["wnids"], d["hashtags"], d.get("counts"), d.get("source", "wordnet-nouns"))

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HashtagVocabulary":
        """A saved vocabulary; DataError (one line naming the file and the field) for anything else: a
        folder, a file that is not JSON, or JSON that breaks the schema (`check_schema`)."""
        if os.path.isdir(path):
            raise DataError(f"vocabulary {str(path)!r} is a folder, not a vocabulary file (from `python -m "
                            f"wslfast.data vocab --out FILE`)")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:  # name the file, not just the parser's line
                raise DataError(f"vocabulary {str(path)!r} is not a JSON vocabulary file ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise DataError(f"vocabulary {str(path)!r} is not a wslfast vocabulary (from `python -m "
                            f"wslfast.data vocab`): {e}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, HashtagVocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"HashtagVocabulary({len(self)} labels, {self.num_hashtags} hashtags, source={self.source!r})"
