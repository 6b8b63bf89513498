"""Labels from text: captions and hashtags -> WordNet noun synsets, with the sense that fits the picture.

```python
from wslfast.data.labels.senses import SenseTagger
tagger = SenseTagger()          # WordNet tables: built once (~15 s), then loaded from the cache (~2 s)
tagger.caption("a crane wading through the marsh")   # ['crane.n.05', 'marsh.n.01']
tagger.tags(["#kitty", "#cat", "#cute"])               # ['kitten.n.01', 'cat.n.01']
tagger.explain_caption("bass player on stage")         # per word: span, lemma, synset, scores, why dropped
SenseTagger(vocab=v).caption_labels(text)              # ids of a HashtagVocabulary; senses limited to its synsets
SenseTagger(stats=s)                                   # + co-occurrence counted over the corpus (cooccur.py)
```
From the shell: `python -m wslfast.data label --kind caption|tags FILE` (label_cli.py).

How a caption is read:
1. Tokens (text.tokenize), then compounds first: the tokens are cut into WordNet lemmas by a dynamic
   programme that maximises the summed squared length of the multi-word lemmas taken, so the longest win;
   between equals the later one wins, as English compounds are head-final ("red fire hydrant" -> red +
   fire_hydrant, "nuclear power plant" -> nuclear + power_plant). The last word may be plural ("sea lions");
   two words whose concatenation is a one-word lemma join ("cell phone" -> cellphone). Lemmas that begin or
   end with a stopword are not matched.
2. Nouns only. Stopwords never. A single word counts as a noun when its SemCor noun tag count outweighs its
   verb/adjective/adverb counts, with cues from its neighbours: the last word of a phrase opened by a
   determiner (or by the caption's start) leans noun ("a white top": top), a word after "to"/"is"/a pronoun or
   before "a"/"the"/"his" leans verb ("swings his bat"). can/will/may/might/must are nouns only after a
   determiner ("a can of soda").
3. Words that name no visible thing give no label, on purpose: words about the picture itself and fillers
   (photo, image, picture, view, background, illustration, vector, stock, closeup, shot, day, time, ... and
   phrases such as "royalty free", "close up": `meta_words` / `meta_phrases` in visual_priors.json), and any
   sense whose lexname is in `drop_lexnames` (noun.feeling, noun.motive, noun.relation, noun.quantity).
4. The sense. Each noun sense s of the word's lemmas scores
      prior(s)   = 0.6 ln(1 + SemCor count) - 0.25 rank in WordNet's order (senses of a base form found by
                   morphology rank after the word's own lemma's)
                 + the lexname's visual weight (animal, artifact, food, plant +2 ... cognition -2, feeling -3)
                 + an instance penalty (a named person -3, another named thing -1.5: 'crane' is not the writer)
                 + the sense bias of visual_priors.json (a bare 'bike' is a bicycle);
      context(s) = 0.35 x the idf-weighted count of stems shared by s's signature (its gloss, lemma names,
                   hypernyms to 3 levels, hyponyms, parts, topic: lexicon.py) and the context bags of the
                   caption's OTHER words (extended Lesk), capped at 3
                 + the co-occurrence term of cooccur.py when corpus statistics are given;
   the best sum wins. Senses whose prior is 5 or more below the best prior are not scored on context.
5. Synonyms merge: one synset is one label however many words led to it; labels keep first-seen order.

Hashtags: each tag is normalized as HashtagVocabulary normalizes it (vocab.normalize_hashtag: '#Fish_Tank' ->
'fishtank') and found among the lemmas by that key (then noun.exc and the detachment rules: '#kitties'),
and its sense is chosen as above with the image's other tags as the context (#kitty beside #cat is a kitten,
#crane beside #construction the machine). No part-of-speech cues: a hashtag is meant as a label.

Cost: per word, dict and set lookups on tables made once (lexicon.py): no nltk call while labelling. Memory:
the tables (~250 MB) plus memos that grow with the distinct words seen (bounded by WordNet's size).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..vocab import normalize_hashtag
from .lexicon import NOUN_LEXNAMES, Lexicon, get_lexicon
from .text import DETERMINERS, MODALS, STOPWORDS, VERB_CUES, Stemmer, tokenize

__all__ = ["SenseTagger", "Unit", "load_priors"]

PRIORS_FILE = Path(__file__).with_name("visual_priors.json")
COUNT_W, RANK_W, MAX_RANK, BASE_RANK, BAG_MARGIN = 0.6, 0.25, 2, 1.5, 1.0
LESK_W, LESK_SCALE, IDF_FLOOR, PRUNE = 1.5, 3.0, 2.0, 6.0
NOUN_PRIOR, NOUN_MIN = 0.5, -1.0  # noun cue: prior log-odds toward nouns, threshold; see _is_noun


def load_priors(path: str | Path = PRIORS_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        p = json.load(f)
    missing = {"lexname_weight", "drop_lexnames", "instance_penalty", "meta_words", "meta_phrases",
               "sense_bias"} - set(p)
    if missing:
        raise ValueError(f"{path}: visual priors lack {sorted(missing)}")
    return p


@dataclass
class Unit:
    """One word or compound of a text and what became of it (the per-word detail of `explain_*`)."""
    span: str
    lemmas: list[str]
    synset: str | None = None
    dropped: str | None = None  # 'meta', 'non-visual', 'not a noun', 'not in vocabulary', 'unknown'
    candidates: list[tuple[str, float]] = field(default_factory=list)  # best first: (synset, total score)

    def to_dict(self) -> dict:
        return {"span": self.span, "lemmas": self.lemmas, "synset": self.synset, "dropped": self.dropped,
                "candidates": [[n, round(s, 3)] for n, s in self.candidates]}


class SenseTagger:
    """Text -> WordNet noun synset names, the sense chosen from the context (see the module docstring)."""

    def __init__(self, vocab=None, stats=None, lexicon: Lexicon | None = None, priors: dict | None = None,
                 nltk_data_dir=None):
        self.lex = lexicon if lexicon is not None else get_lexicon(nltk_data_dir)
        self.stats = stats
        p = priors if priors is not None else load_priors()
        lw = p["lexname_weight"]
        self._lex_weight = [float(lw.get(name, 0.0)) for name in NOUN_LEXNAMES]
        self._drop = {NOUN_LEXNAMES.index(n) for n in p["drop_lexnames"]}
        person = NOUN_LEXNAMES.index("noun.person")
        ip = p["instance_penalty"]
        self._inst_pen = [float(ip.get("noun.person" if i == person else "other", 0.0)) for i in range(len(NOUN_LEXNAMES))]
        self._meta = {" ".join(tokenize(w)) for w in p["meta_words"]}
        self._meta_keys = {normalize_hashtag(w) for w in p["meta_words"]}
        self._meta_phrases: dict[str, list[tuple[str, ...]]] = {}
        for ph in p["meta_phrases"]:
            toks = tuple(tokenize(ph))
            self._meta_phrases.setdefault(toks[0], []).append(toks)
        self._bias = {" ".join(tokenize(k)): {self.lex.sid_of_name[n]: float(b) for n, b in v.items()}
                      for k, v in p["sense_bias"].items()}
        self.vocab = vocab
        self._vocab_label: dict[int, int] | None = None
        if vocab is not None:
            sid = self.lex.sid_of_name
            self._vocab_label = {sid[name]: i for i, name in enumerate(vocab.synsets) if name in sid}
        self.stem = Stemmer()
        self._cands: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        self._cands_all: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        self._bags: dict[tuple[str, ...], frozenset] = {}
        self._noun_memo: dict[str, tuple[float, bool]] = {}

    # ---- public API -----------------------------------------------------------------------------
    def caption(self, text: str) -> list[str]:
        """Synset names of a caption (title, description), first-seen order, synonyms merged."""
        return self._names(self._caption_units(text, None))

    def tags(self, tags: Iterable[str]) -> list[str]:
        """Synset names of an image's hashtags, each sense chosen with the other tags as context."""
        return self._names(self._tag_units(tags, None))

    def explain_caption(self, text: str) -> list[Unit]:
        detail: list[Unit] = []
        self._caption_units(text, detail)
        return detail

    def explain_tags(self, tags: Iterable[str]) -> list[Unit]:
        detail: list[Unit] = []
        self._tag_units(tags, detail)
        return detail

    def caption_labels(self, text: str) -> list[int]:
        return self._labels(self._caption_units(text, None))

    def tag_labels(self, tags: Iterable[str]) -> list[int]:
        return self._labels(self._tag_units(tags, None))

    def synset_ids(self, text_or_tags, kind: str = "caption") -> list[int]:
        """Internal synset ids (lexicon rows) of a text, for counting passes (cooccur.py, vocabulary.py)."""
        sids = self._caption_units(text_or_tags, None) if kind == "caption" else self._tag_units(text_or_tags, None)
        return list(dict.fromkeys(sids))

    def _names(self, sids: list[int]) -> list[str]:
        names = self.lex.names
        return [names[s] for s in dict.fromkeys(sids)]

    def _labels(self, sids: list[int]) -> list[int]:
        if self._vocab_label is None:
            raise ValueError("SenseTagger: labels need a vocabulary (SenseTagger(vocab=...))")
        return list(dict.fromkeys(self._vocab_label[s] for s in sids))

    # ---- captions -------------------------------------------------------------------------------
    def _segment(self, toks: list[str]) -> list[tuple[int, int, str | None, bool]]:
        """(start, end, multi-word lemma or None, is_meta_phrase) units covering toks (module docstring, 1)."""
        n, lex = len(toks), self.lex
        best = [0] * (n + 1)
        choice: list[tuple[int, str | None, bool]] = [(1, None, False)] * n
        for i in range(n - 1, -1, -1):
            t = toks[i]
            b, ch = best[i + 1], (1, None, False)
            for ph in self._meta_phrases.get(t, ()):
                L = len(ph)
                if tuple(toks[i:i + L]) == ph and L * L + 1 + best[i + L] > b:
                    b, ch = L * L + 1 + best[i + L], (L, None, True)
            if t not in STOPWORDS:
                for L in range(min(lex.phrase_len.get(t, 1), n - i), 1, -1):
                    if toks[i + L - 1] in STOPWORDS:
                        continue
                    lemma = self._phrase(toks, i, L)
                    if lemma is not None and L * L + best[i + L] > b:
                        b, ch = L * L + best[i + L], (L, lemma, False)
                if i + 1 < n:
                    u = toks[i + 1]
                    if len(t) > 2 and len(u) > 2 and u not in STOPWORDS and 4 + best[i + 2] > b:
                        joined = t + u
                        if joined in lex.senses and t not in lex.keys.get(joined, ()):
                            b, ch = 4 + best[i + 2], (2, joined, False)
            best[i], choice[i] = b, ch
        units, i = [], 0
        while i < n:
            L, lemma, meta = choice[i]
            units.append((i, i + L, lemma, meta))
            i += L
        return units

    def _phrase(self, toks: list[str], i: int, L: int) -> str | None:
        key = " ".join(toks[i:i + L])
        senses = self.lex.senses
        if key in senses:
            return key
        head = " ".join(toks[i:i + L - 1])
        for base in self.lex.noun_bases(toks[i + L - 1]):
            if base != toks[i + L - 1] and f"{head} {base}" in senses:
                return f"{head} {base}"
        return None

    def _noun_score(self, tok: str, lemmas: list[str]) -> float:
        """Log-odds that `tok` is used as a noun, from SemCor counts alone (memoized per token)."""
        memo = self._noun_memo.get(tok)
        if memo is None:
            c_other, k_other = self.lex.other_pos_count(tok)
            n_noun = sum(c for lemma in lemmas for _, c in self.lex.senses[lemma])
            score = 99.0 if k_other == 0 else math.log((n_noun + 1) / (c_other + 1))
            if len(self._noun_memo) > 500_000:
                self._noun_memo.clear()
            memo = self._noun_memo[tok] = (score, False)
        return memo[0]

    def _is_noun(self, toks: list[str], i: int, lemmas: list[str]) -> bool:
        tok = toks[i]
        prev = toks[i - 1] if i > 0 else None
        if tok in MODALS:
            return prev in DETERMINERS
        score = self._noun_score(tok, lemmas)
        if score > 50:
            return True
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if prev in DETERMINERS and score > -1.5:  # weak evidence either way: right after "a"/"the", a noun
            score += 1.0
        score += NOUN_PRIOR
        if nxt is None or nxt in STOPWORDS:  # last word of its phrase: does a determiner open the phrase?
            j = i - 1
            while j >= 0 and toks[j] not in STOPWORDS:
                j -= 1
            if j < 0 or toks[j] in DETERMINERS:
                score += 2.0
        if prev in VERB_CUES:
            score -= 2.0
        if nxt is not None and nxt != "of" and nxt in DETERMINERS:
            score -= 1.5
        return score > NOUN_MIN

    def _caption_units(self, text: str, detail: list[Unit] | None) -> list[int]:
        toks = tokenize(text)
        targets = []  # (unit index, lemmas)
        bags: list[frozenset] = []
        meta_units, spans = set(), []
        for k, (i, j, lemma, meta) in enumerate(self._segment(toks)):
            span = " ".join(toks[i:j])
            spans.append(span)
            if meta:
                meta_units.add(k)
                bags.append(frozenset())
                if detail is not None:
                    detail.append(Unit(span, [], dropped="meta"))
                continue
            lemmas = [lemma] if lemma is not None else self.lex.noun_bases(toks[i])
            if lemma is None and toks[i] in STOPWORDS:
                bags.append(frozenset())
                continue
            if span in self._meta or any(lm in self._meta for lm in lemmas):
                meta_units.add(k)
                bags.append(frozenset())
                if detail is not None:
                    detail.append(Unit(span, lemmas, dropped="meta"))
                continue
            noun = bool(lemmas) and (lemma is not None or self._is_noun(toks, i, lemmas))
            bags.append(self._bag(tuple(lemmas)) if noun else self._stem_bag(toks[i]))
            if noun:
                targets.append((k, lemmas))
            elif detail is not None:
                detail.append(Unit(span, lemmas, dropped="not a noun" if lemmas else "unknown"))
        return self._choose(targets, bags, spans, detail)

    def _stem_bag(self, tok: str) -> frozenset:
        key = (tok,)
        bag = self._bags.get(("", tok))
        if bag is None:
            bag = self._bags[("", tok)] = frozenset((self.stem(tok),)) if len(tok) > 1 else frozenset()
        return bag

    def _bag(self, lemmas: tuple[str, ...]) -> frozenset:
        """What a noun brings as context: its likely senses' bags (prior within BAG_MARGIN of the best, at
        most 2; a word's rare senses would only add noise) and the stems of its lemmas."""
        bag = self._bags.get(lemmas)
        if bag is None:
            cands = self._candidates(lemmas, restrict=False)
            top = [sid for sid, prior in cands[:2] if prior > cands[0][1] - BAG_MARGIN] if cands else []
            words = {self.stem(w) for lm in lemmas for w in lm.split(" ") if w not in STOPWORDS}
            bag = frozenset(words).union(*(self.lex.sense_bag(sid) for sid in top))
            self._bags[lemmas] = bag
        return bag

    # ---- hashtags -------------------------------------------------------------------------------
    def _tag_units(self, tags: Iterable[str], detail: list[Unit] | None) -> list[int]:
        if isinstance(tags, str):
            raise TypeError("tags must be a list of hashtags, not one string (split it first)")
        targets, bags, spans = [], [], []
        for tag in tags:
            key = normalize_hashtag(tag)
            spans.append(tag)
            if not key or key in self._meta_keys:
                bags.append(frozenset())
                if detail is not None and key:
                    detail.append(Unit(tag, [], dropped="meta"))
                continue
            lemmas = self._tag_lemmas(key)
            if lemmas:
                bags.append(self._bag(tuple(lemmas)) | self._stem_bag(key))
                targets.append((len(bags) - 1, lemmas))
            else:
                bags.append(self._stem_bag(key))
                if detail is not None:
                    detail.append(Unit(tag, [], dropped="unknown"))
        return self._choose(targets, bags, spans, detail)

    def _tag_lemmas(self, key: str) -> list[str]:
        keys = self.lex.keys
        if key in keys:
            return list(keys[key])
        out = []
        for b in self.lex.noun_exc.get(key, ()):
            out += [lm for lm in keys.get(b, ()) if lm not in out]
        if not out:
            for suffix, repl in (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                                 ("shes", "sh"), ("men", "man"), ("ies", "y")):
                if key.endswith(suffix) and len(key) > len(suffix) + 1:
                    out += [lm for lm in keys.get(key[: len(key) - len(suffix)] + repl, ()) if lm not in out]
        return out

    # ---- the sense --------------------------------------------------------------------------------
    def _candidates(self, lemmas: tuple[str, ...], restrict: bool = True) -> list[tuple[int, float]]:
        """(sid, prior) of every sense of the lemmas, best first; limited to the vocabulary when one is set
        (and `restrict`)."""
        restrict = restrict and self._vocab_label is not None
        memo = self._cands if restrict or self._vocab_label is None else self._cands_all
        c = memo.get(lemmas)
        if c is None:
            lex, seen, c = self.lex, set(), []
            for li, lemma in enumerate(lemmas):
                bias = self._bias.get(lemma, {})
                for rank, (sid, count) in enumerate(lex.senses[lemma]):
                    if sid in seen or (restrict and sid not in self._vocab_label):
                        continue
                    seen.add(sid)
                    ln = lex.lexname[sid]
                    prior = (COUNT_W * math.log1p(count) - RANK_W * min(rank, MAX_RANK) - BASE_RANK * (li > 0)
                             + self._lex_weight[ln] + (self._inst_pen[ln] if lex.instance[sid] else 0.0)
                             + bias.get(sid, 0.0))
                    c.append((sid, prior))
            c.sort(key=lambda e: -e[1])
            if c:
                c = [e for e in c if e[1] > c[0][1] - PRUNE]
            memo[lemmas] = c
        return c

    def _choose(self, targets, bags, spans, detail) -> list[int]:
        out: list[int] = []
        union = None
        lex, idf = self.lex, self.lex.idf
        for k, lemmas in targets:
            cands = self._candidates(tuple(lemmas))
            if not cands:
                if detail is not None:
                    detail.append(Unit(spans[k], list(lemmas), dropped="not in vocabulary"))
                continue
            scored = cands
            if len(cands) > 1:
                if union is None:
                    union = frozenset().union(*bags)
                own = bags[k]
                others = [b for m, b in enumerate(bags) if m != k and b]
                ctx_stats = self.stats.context(bags, k) if self.stats is not None else None
                shared = [lex.signature(sid) & union for sid, _ in cands]
                common = frozenset.intersection(*shared)  # in every candidate's signature: no evidence
                scored = []
                for (sid, prior), inter in zip(cands, shared):
                    gain = 0.0
                    for w in inter:
                        if w not in common and (w not in own or any(w in b for b in others)):
                            gain += max(0.0, idf.get(w, 0.0) - IDF_FLOOR)
                    total = prior + LESK_W * math.log1p(gain / LESK_SCALE)
                    if ctx_stats is not None:
                        total += self.stats.score(ctx_stats, lex.lexname[sid])
                    scored.append((sid, total))
                scored.sort(key=lambda e: -e[1])
            sid = scored[0][0]
            dropped = "non-visual" if lex.lexname[sid] in self._drop else None
            if dropped is None:
                out.append(sid)
            if detail is not None:
                detail.append(Unit(spans[k], list(lemmas), lex.names[sid], dropped,
                                   [(lex.names[s], t) for s, t in scored[:5]]))
        return out
