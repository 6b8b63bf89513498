"""WordNet's nouns as flat tables for the sense chooser: built once from the database files, cached on disk.

Labelling makes no nltk call: everything it needs is here, read from WordNet's own files (data.noun,
index.noun, index.sense, the exception lists) by this module.
- per synset: its name as nltk spells it (first lemma + sense number of that lemma), offset, lexname, whether
  it is a named instance (Stephen Crane, the Orange River), the stems of its lemma names and of its gloss
  (definition and examples), and its pointers (hypernyms, hyponyms, holonyms and meronyms, topic domains);
- per lemma (cut into tokens by text.tokenize, so "fish tank" and "jack o lantern" are keys): its senses in
  WordNet's order with their SemCor tag counts; multi-word lemmas also go into a phrase table keyed by their
  first token; every lemma also under its hashtag key (vocab.normalize_hashtag: "fishtank");
- per word of the other parts of speech: the SemCor counts of its verb, adjective and adverb senses, and the
  verb and adjective exception lists (ran -> run, better -> good), for the noun cue of senses.py;
- class affinities: per stem, the lexnames whose synsets mention it (their glosses and lemma names) more often
  than chance (PMI; 'roast' goes with noun.food, 'perched' with noun.animal: a class-level Lesk);
- idf of every stem over the synsets' signatures (so a stem that every synset under 'artifact' inherits
  counts for little).
From those, `signature(sid)` (extended Lesk: own words, gloss, hypernyms to 3 levels, up to 50 direct
hyponyms, holonyms, meronyms, topic domain) and `sense_bag(sid)` (what a word meaning sid brings as context:
the synset's words, its hypernyms' to 2 levels, its gloss) are made on first use and kept (memory grows with
the distinct synsets seen, at most WordNet's 82k).

Building takes ~30 s on one core; the result is cached as JSON in ~/.cache/wslfast/labels (or
$WSLFAST_LABELS_CACHE), ~5.5 MB gzipped, and loads in ~2-4 s; the cache is keyed by the WordNet files' sizes
and times and this module's table version, and is rebuilt when either changes.
"""
from __future__ import annotations

import functools
import gzip
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from .vocab import normalize_hashtag
from .wordnet import _LEXNAMES, ensure_wordnet
from .text import STOPWORDS, Stemmer, tokenize

__all__ = ["Lexicon", "get_lexicon", "NOUN_LEXNAMES", "class_pmi", "class_pmi_from_counts"]

TABLE_VERSION = 5
NOUN_LEXNAMES = [n for n in _LEXNAMES if n.startswith("noun.")]
_NOUN_FILE0 = _LEXNAMES.index("noun.Tops")
# WordNet's detachment rules (morph(7WN)) for nouns, verbs and adjectives.
NOUN_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
              ("men", "man"), ("ies", "y"))
VERB_RULES = (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""))
ADJ_RULES = (("er", ""), ("est", ""), ("er", "e"), ("est", "e"))
_HYPER, _HYPO = ("@", "@i"), ("~", "~i")
_PARTS = ("#m", "#s", "#p", "%m", "%s", "%p")
_DOMAIN = (";c",)
_MAX_HYPONYMS = 50


# Gloss boilerplate: words that say how a definition is phrased, not what the thing is.
GLOSS_FILLER = frozenset("""
use used uses using usually especially something someone somebody anything often various variety typically
typical consisting consists consist made make makes making having has include includes including found
called known certain particular resembling resembles relating related etc esp e g i ie sometimes usual
another whose without within small large kind type form forms part parts one ones way ways thing things
""".split())


def _content_stems(text: str, stem) -> list[str]:
    return [stem(w) for w in tokenize(text)
            if len(w) > 1 and w not in STOPWORDS and w not in GLOSS_FILLER and not w.isdigit()]


def _parse_data_noun(path: Path, stem):
    """data.noun -> per synset: offset, lexname id, lemma names, pointers by kind, gloss stems."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            p = head.split()
            offset, lex_file, n_words = int(p[0]), int(p[1]), int(p[3], 16)
            words = [p[4 + 2 * i] for i in range(n_words)]
            i = 4 + 2 * n_words
            n_ptrs = int(p[i])
            ptrs = defaultdict(list)
            for k in range(n_ptrs):
                sym, off, pos = p[i + 1 + 4 * k], int(p[i + 2 + 4 * k]), p[i + 3 + 4 * k]
                if pos == "n":
                    ptrs[sym].append(off)
            rows.append((offset, lex_file - _NOUN_FILE0, words, ptrs, _content_stems(gloss, stem)))
    return rows


def _parse_index(path: Path) -> dict[str, list[int]]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            p = line.split()
            n_syn, n_ptr = int(p[2]), int(p[3])
            out[p[0]] = [int(x) for x in p[6 + n_ptr: 6 + n_ptr + n_syn]]
    return out


def _parse_exc(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.split()
            if len(p) >= 2:
                out[p[0]] += p[1:]
    return dict(out)


def build_tables(corpus: Path) -> dict:
    """The cached tables (plain lists and dicts) from the WordNet files in `corpus`."""
    stem = Stemmer()
    rows = _parse_data_noun(corpus / "data.noun", stem)
    index = _parse_index(corpus / "index.noun")
    sid_of = {r[0]: i for i, r in enumerate(rows)}
    noun_counts: dict[tuple[str, int], int] = {}
    other: dict[str, list[int]] = {}  # lemma -> tag counts and sense numbers as a verb, adjective, adverb
    with open(corpus / "index.sense", encoding="utf-8") as f:
        for line in f:
            key, off, _, cnt = line.split()
            lemma, _, rest = key.partition("%")
            if rest[0] == "1":
                noun_counts[(lemma, int(off))] = int(cnt)
            else:  # [verb count, verb senses, adjective count, adj senses, adverb count, adv senses]
                o = other.setdefault(lemma, [0, 0, 0, 0, 0, 0])
                slot = {"2": 0, "3": 2, "5": 2, "4": 4}[rest[0]]
                o[slot] += int(cnt)
                o[slot + 1] += 1
    names, lexes, inst, words, gloss, ptrs = [], [], [], [], [], []
    for offset, lex, lemma_words, p, g in rows:
        first = lemma_words[0].lower()
        first = first[: first.index("(")] if "(" in first else first
        names.append(f"{first}.n.{index[first].index(offset) + 1:02d}")
        lexes.append(lex)
        inst.append(1 if "@i" in p else 0)
        ws = {stem(t) for w in lemma_words for t in tokenize(w.replace("_", " ")) if t not in STOPWORDS}
        words.append(" ".join(sorted(ws)))
        gloss.append(" ".join(g))
        ptrs.append({k: [sid_of[o] for o in v if o in sid_of] for k, v in p.items()
                     if k in _HYPER + _HYPO + _PARTS + _DOMAIN})
    senses: dict[str, list[list[int]]] = {}
    keys: dict[str, list[str]] = defaultdict(list)
    for lemma, offsets in index.items():
        key = " ".join(tokenize(lemma.replace("_", " ")))
        if not key:
            continue
        entry = senses.setdefault(key, [])
        seen = {e[0] for e in entry}
        entry += [[sid_of[o], noun_counts.get((lemma, o), 0)] for o in offsets if sid_of[o] not in seen]
        hk = normalize_hashtag(lemma.replace("_", " "))
        if key not in keys[hk]:
            keys[hk].append(key)
    for ks in keys.values():  # one-word lemma first, then alphabetical (as vocab.NounIndex orders them)
        ks.sort(key=lambda k: (" " in k, k))
    tables = {"version": TABLE_VERSION, "names": names, "offsets": [r[0] for r in rows], "lex": lexes,
              "inst": inst, "words": words, "gloss": gloss, "ptrs": ptrs, "senses": senses, "keys": dict(keys),
              "noun_exc": _parse_exc(corpus / "noun.exc"), "verb_exc": _parse_exc(corpus / "verb.exc"),
              "adj_exc": _parse_exc(corpus / "adj.exc"), "other": other, "idf": {}, "class_pmi": {}}
    # idf over the signatures themselves: a stem every synset under 'artifact' inherits is no evidence
    lex = Lexicon(tables)
    df: dict[str, int] = defaultdict(int)
    for sid in range(len(rows)):
        for w in lex.signature(sid):
            df[w] += 1
    n = len(rows)
    tables["idf"] = {w: round(math.log(n / (1 + c)), 3) for w, c in df.items()}
    tables["class_pmi"] = class_pmi(
        ((lex.lexname[sid], set(words[sid].split()) | set(gloss[sid].split())) for sid in range(n)),
        len(NOUN_LEXNAMES))
    return tables


def class_pmi(labelled, n_classes: int, alpha: float = 10.0, min_count: int = 5, min_pmi: float = 0.5) -> dict:
    """stem -> {class: PMI} from (class, stems) pairs: which lexnames a word keeps company with.

    From WordNet (each synset's lexname with its lemma words and gloss) in build_tables; cooccur.py counts
    the same from a corpus. Memory: the distinct stems x the classes."""
    rows: dict[str, list[int]] = {}
    class_n = [0] * n_classes
    for c, stems in labelled:
        class_n[c] += 1
        for w in stems:
            row = rows.get(w)
            if row is None:
                row = rows[w] = [0] * n_classes
            row[c] += 1
    return class_pmi_from_counts(rows, class_n, alpha, min_count, min_pmi)


def class_pmi_from_counts(rows: dict[str, list[int]], class_n: list[int], alpha: float = 10.0,
                          min_count: int = 5, min_pmi: float = 0.5) -> dict[str, dict[int, float]]:
    """PMI(w, c) = ln((n(w, c) + alpha P(c)) / ((n(w) + alpha) P(c))), smoothed toward 0 for rare stems; kept
    for stems seen >= min_count times and associations above min_pmi."""
    total = sum(class_n) or 1
    prior = [max(k, 1) / total for k in class_n]
    out = {}
    for w, row in rows.items():
        nw = sum(row)
        if nw < min_count:
            continue
        assoc = {}
        for c, k in enumerate(row):
            pmi = math.log((k + alpha * prior[c]) / ((nw + alpha) * prior[c]))
            if pmi > min_pmi:
                assoc[c] = round(pmi, 2)
        if assoc:
            out[w] = assoc
    return out


class Lexicon:
    """The tables of `build_tables`, with the lookups senses.py makes per word (all plain dict access)."""

    def __init__(self, tables: dict):
        self.names: list[str] = tables["names"]
        self.offsets: list[int] = tables["offsets"]
        self.lexname: list[int] = tables["lex"]  # index into NOUN_LEXNAMES
        self.instance: list[int] = tables["inst"]
        self._words: list[str] = tables["words"]
        self._gloss: list[str] = tables["gloss"]
        self._ptrs: list[dict] = tables["ptrs"]
        self.senses: dict[str, list[list[int]]] = tables["senses"]  # lemma -> [[sid, tag count], ...]
        self.keys: dict[str, list[str]] = tables["keys"]  # hashtag key -> lemmas
        self.noun_exc: dict[str, list[str]] = tables["noun_exc"]
        self.verb_exc: dict[str, list[str]] = tables["verb_exc"]
        self.adj_exc: dict[str, list[str]] = tables["adj_exc"]
        self.other: dict[str, list[int]] = tables["other"]
        self.idf: dict[str, float] = tables["idf"]
        # stem -> {lexname index: PMI}; json turns the int keys into strings
        self.class_pmi: dict[str, dict[int, float]] = {
            w: {int(c): v for c, v in a.items()} for w, a in tables["class_pmi"].items()}
        self.sid_of_name = {name: i for i, name in enumerate(self.names)}
        # phrase table: first token -> the longest multi-word lemma starting with it (in tokens)
        self.phrase_len: dict[str, int] = {}
        for key in self.senses:
            toks = key.split(" ")
            if len(toks) > 1 and len(toks) > self.phrase_len.get(toks[0], 1):
                self.phrase_len[toks[0]] = len(toks)
        self._sig: dict[int, frozenset] = {}
        self._bag: dict[int, frozenset] = {}

    # ---- morphology -------------------------------------------------------------------------------
    def noun_bases(self, word: str) -> list[str]:
        """The noun lemmas a single token stands for: itself if a lemma, then its morphological bases."""
        out = [word] if word in self.senses else []
        for b in self.noun_exc.get(word, ()):
            if b in self.senses and b not in out:
                out.append(b)
        if len(out) <= 1:
            for suffix, repl in NOUN_RULES:
                if word.endswith(suffix) and len(word) > len(suffix) + 1:
                    b = word[: len(word) - len(suffix)] + repl
                    if b in self.senses and b not in out:
                        out.append(b)
        return out

    def other_pos_count(self, word: str) -> tuple[int, int]:
        """(SemCor tag count, number of senses) of `word` as a verb, adjective or adverb: the largest over
        its bases by each part of speech's own rules ('shorts' is no form of the adjective 'short')."""
        count = n = 0
        for slot, exc, rules in ((0, self.verb_exc, VERB_RULES), (2, self.adj_exc, ADJ_RULES), (4, {}, ())):
            bases = {word, *exc.get(word, ())}
            for suffix, repl in rules:
                if word.endswith(suffix) and len(word) > len(suffix) + 1:
                    bases.add(word[: len(word) - len(suffix)] + repl)
            for b in bases:
                o = self.other.get(b)
                if o is not None and o[slot + 1]:
                    count, n = max(count, o[slot]), max(n, o[slot + 1])
        return count, n

    # ---- signatures -------------------------------------------------------------------------------
    def _closure(self, sid: int, kinds, depth: int) -> list[int]:
        out, frontier = [], [sid]
        for _ in range(depth):
            frontier = [t for s in frontier for k in kinds for t in self._ptrs[s].get(k, ())]
            out += frontier
        return out

    def signature(self, sid: int) -> frozenset:
        """Stems describing synset `sid` (extended Lesk; see the module docstring)."""
        sig = self._sig.get(sid)
        if sig is None:
            p = self._ptrs[sid]
            related = self._closure(sid, _HYPER, 3) + [t for k in _HYPO for t in p.get(k, ())][:_MAX_HYPONYMS]
            related += [t for k in _PARTS + _DOMAIN for t in p.get(k, ())]
            parts = [self._words[sid], self._gloss[sid]] + [self._words[t] for t in related]
            sig = self._sig[sid] = frozenset(" ".join(parts).split())
        return sig

    def sense_bag(self, sid: int) -> frozenset:
        """Stems a word brings as context when it means synset `sid`: the synset's lemma words, its
        hypernyms' to 2 levels, its gloss."""
        bag = self._bag.get(sid)
        if bag is None:
            parts = [self._words[sid], self._gloss[sid]] + [self._words[t] for t in self._closure(sid, _HYPER, 2)]
            bag = self._bag[sid] = frozenset(" ".join(parts).split())
        return bag

    def gloss_stems(self, sid: int) -> str:
        return self._gloss[sid]

    def hypernyms(self, sid: int, depth: int = 1) -> list[int]:
        return self._closure(sid, _HYPER, depth)

    def lexname_of(self, sid: int) -> str:
        return NOUN_LEXNAMES[self.lexname[sid]]


def _cache_dir() -> Path:
    env = os.environ.get("WSLFAST_LABELS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wslfast" / "labels"


def _fingerprint(corpus: Path) -> str:
    parts = [f"v{TABLE_VERSION}"]
    for name in ("data.noun", "index.noun", "index.sense", "noun.exc", "verb.exc", "adj.exc"):
        st = (corpus / name).stat()
        parts.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


@functools.lru_cache(maxsize=None)
def _load(corpus: str, cache_dir: str) -> Lexicon:
    corpus_p, cache = Path(corpus), Path(cache_dir)
    fp = _fingerprint(corpus_p)
    path = cache / f"lexicon-v{TABLE_VERSION}.json.gz"
    tables = None
    if path.is_file():
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and data.get("fingerprint") == fp:
                tables = data["tables"]
        except (OSError, ValueError, KeyError, EOFError):  # a damaged cache is rebuilt, never trusted
            tables = None
    if tables is None:
        tables = build_tables(corpus_p)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
                json.dump({"fingerprint": fp, "tables": tables}, f, separators=(",", ":"))
            os.replace(tmp, path)
            for old in cache.glob("lexicon-v*.json.gz"):  # tables of other versions are dead weight
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError:  # a read-only home still labels; it just builds the tables each run
            pass
    return Lexicon(tables)


def get_lexicon(nltk_data_dir=None, cache_dir: str | os.PathLike | None = None) -> Lexicon:
    """The Lexicon of the local WordNet copy (built and cached on first use; see the module docstring)."""
    corpus = ensure_wordnet(nltk_data_dir)
    return _load(str(corpus), str(cache_dir) if cache_dir is not None else str(_cache_dir()))
