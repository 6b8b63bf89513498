"""Labels from text: captions and hashtags -> WordNet noun synsets, with the sense that fits the picture.

```python
from wslfast.data.labels.senses import SenseTagger
tagger = SenseTagger()          # WordNet tables: built once (~30 s), then loaded from the cache (~2-4 s)
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
   two words whose concatenation is a one-word lemma join ("cell phone" -> cellphone) when that lemma is about
   them ("leather jacket" is no leatherjacket, a fish: reading.py). Lemmas that begin or
   end with a stopword are not matched.
2. Nouns only. Stopwords never. A single word counts as a noun when its SemCor noun tag count outweighs its
   verb/adjective/adverb counts (log-odds + 0.5 > -1), with cues from its neighbours: right after a
   determiner or at the start, +1 (when the counts are close); the last word of a phrase opened by a
   determiner or by the start, +2 ("a white top": top); after "to"/"is"/a pronoun -2, before "a"/"the"/"his"
   -1.5 ("swings his bat"), an -ing word right after another word -2 ("crane wading"); a word more often an
   adjective than a noun right before a sure noun is a modifier ("a red car": no 'red'). can/will/may/might/
   must are nouns only after a determiner ("a can of soda"). After a count word a plural that is also a lemma
   of its own reads as the plural ("two glasses" of wine are glasses, not spectacles).
3. Words that name no visible thing give no label, on purpose: words about the picture itself and fillers
   (photo, image, picture, view, background, illustration, vector, stock, closeup, shot, day, time, ... and
   phrases such as "royalty free", "close up": `meta_words` / `meta_phrases` in visual_priors.json), and any
   chosen sense whose lexname is in `drop_lexnames` (noun.feeling, noun.motive, noun.relation, noun.quantity).
4. The sense. Each noun sense s of the word's lemmas scores
      prior(s)   = 0.6 ln(1 + SemCor count) - 0.25 min(rank in WordNet's order, 2) (WordNet orders the senses
                   nobody counted arbitrarily) - 1.5 for the senses of a base form found by morphology
                 + the lexname's visual weight (animal 2.2, artifact, food, plant 2, object, person, location
                   1.8 ... cognition -2, feeling -3), or a hypernym's where higher (sports are noun.act, and
                   visible) + an instance penalty (a named person -3, another named thing -1.5: 'crane' is
                   not the writer) + the sense bias of visual_priors.json (a bare 'bike' is a bicycle);
      lesk(s)    = 1.5 ln(1 + G / 3), G = sum over the stems shared by s's signature (gloss, lemma names,
                   hypernyms to 3 levels, hyponyms, parts, topic: lexicon.py) and the context bags of the
                   text's OTHER words of (idf - 3), capped at 40; stems every candidate shares do not count;
      class(s)   = 0.5 min(A, 4), A = the summed affinity of the other words for s's lexname (lexicon.
                   class_pmi from WordNet's glosses, plus the corpus's counts of cooccur.py when given);
   the best prior + lesk + class wins. Only the 4 best senses whose prior is within the most context can
   add (1.5 ln(1 + 40/3)) are scored on context. A word used as a material ("steel bridge", "made of
   marble": the material cue of reading.py) takes the best of its material senses among those candidates
   whose prior is within 1.5 of the best ('hair salon' is no haircloth).
5. Synonyms merge: one synset is one label however many words led to it; labels keep first-seen order.

Audit (tests/data/sense_audit.jsonl, 259 items; test_label_audit.py prints it): 88.0% right (dev 89.0%,
held-out 86.0%) against 34.0% for CatLIP's first-sense rule. Known misses: fine distinctions that the glosses
do not tie to the context words (a pen for pigs, a pot for geraniums, a diamond ring), an animal against its
meat where the cooking words are absent.

Hashtags: each tag is normalized as HashtagVocabulary normalizes it (vocab.normalize_hashtag: '#Fish_Tank' ->
'fishtank') and found among the lemmas by that key (then noun.exc and the detachment rules: '#kitties'),
and its sense is chosen as above with the image's other tags as the context (#kitty beside #cat is a kitten,
#crane beside #construction the machine). No part-of-speech cues: a hashtag is meant as a label.

Cost: per word, dict and set lookups on tables made once (lexicon.py): no nltk call while labelling; what a
distinct word or hashtag needs (lemmas, noun log-odds, context bag, candidates with their inverted signatures)
is computed on its first sight and memoized. Time grows linearly with the text; ~20,000 captions/s of CPU
time on one core (benchmarks/bench_labels.py). Memory: the tables (~250 MB) plus memos that grow with the
distinct words seen, each cleared past 500,000 entries.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .vocab import normalize_hashtag
from .lexicon import NOUN_LEXNAMES, NOUN_RULES, Lexicon, get_lexicon
from .reading import CaptionReader, remember as _remember
from .text import COUNT_WORDS, STOPWORDS, Stemmer, tokenize

__all__ = ["SenseTagger", "Unit", "load_priors"]

_EMPTY: frozenset = frozenset()

PRIORS_FILE = Path(__file__).with_name("visual_priors.json")
COUNT_W, RANK_W, MAX_RANK, BASE_RANK, BAG_MARGIN = 0.6, 0.25, 2, 1.5, 1.0
LESK_W, LESK_SCALE, IDF_FLOOR, MAX_GAIN, MAX_CANDS = 1.5, 3.0, 3.0, 40.0, 4
PRUNE = LESK_W * math.log1p(MAX_GAIN / LESK_SCALE)  # the most context can add: senses further behind cannot win
CLASS_W, CLASS_CAP = 0.5, 4.0
MATERIAL_MARGIN = 1.5  # a material sense taken on the material cue: prior at most this far behind the best


def load_priors(path: str | Path = PRIORS_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        p = json.load(f)
    missing = {"lexname_weight", "hypernym_weight", "drop_lexnames", "instance_penalty", "meta_words", "meta_phrases",
               "sense_bias", "material_lexnames", "material_hypernyms", "material_hypernyms_excluded"} - set(p)
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


class SenseTagger(CaptionReader):
    """Text -> WordNet noun synset names, the sense chosen from the context (see the module docstring)."""

    def __init__(self, vocab=None, stats=None, lexicon: Lexicon | None = None, priors: dict | None = None,
                 nltk_data_dir=None):
        self.lex = lex = lexicon if lexicon is not None else get_lexicon(nltk_data_dir)
        self.stats = stats
        p = priors if priors is not None else load_priors()
        lw = p["lexname_weight"]
        self._lex_weight = [float(lw.get(name, 0.0)) for name in NOUN_LEXNAMES]
        self._drop = {NOUN_LEXNAMES.index(n) for n in p["drop_lexnames"]}
        ip = p["instance_penalty"]
        self._inst_pen = [float(ip.get(name if name == "noun.person" else "other", 0.0)) for name in NOUN_LEXNAMES]
        self._meta = {" ".join(tokenize(w)) for w in p["meta_words"]}
        self._meta_keys = {normalize_hashtag(w) for w in p["meta_words"]}
        self._meta_phrases: dict[str, list[tuple[str, ...]]] = {}
        for ph in p["meta_phrases"]:
            toks = tuple(tokenize(ph))
            self._meta_phrases.setdefault(toks[0], []).append(toks)
        self._hyper_weight = {lex.sid_of_name[n]: float(w) for n, w in p["hypernym_weight"].items()}
        self._bias = {" ".join(tokenize(k)): {lex.sid_of_name[n]: float(b) for n, b in v.items()}
                      for k, v in p["sense_bias"].items()}
        self._material_lexnames = {NOUN_LEXNAMES.index(n) for n in p["material_lexnames"]}
        self._material_roots = {lex.sid_of_name[n] for n in p["material_hypernyms"]}
        self._material_not = {lex.sid_of_name[n] for n in p["material_hypernyms_excluded"]}
        self.vocab = vocab
        self._vocab_label: dict[int, int] | None = None
        if vocab is not None:
            self._vocab_label = {lex.sid_of_name[n]: i for i, n in enumerate(vocab.synsets) if n in lex.sid_of_name}
        self.stem = Stemmer()
        self._stem_weight = {w: v - IDF_FLOOR for w, v in lex.idf.items() if v > IDF_FLOOR}
        # memos, each bounded (cleared past _MEMO entries) and each growing with the distinct words seen
        self._choice_memo: dict[tuple[str, ...], tuple] = {}  # lemmas -> (candidates, inverted signatures, keys)
        self._priors: dict[tuple[str, ...], list[tuple[int, float]]] = {}  # lemmas -> all senses' priors
        self._bags: dict[tuple[str, ...], frozenset] = {}
        self._tok: dict[str, tuple] = {}
        self._phrases: dict[str, str | None] = {}
        self._joins: dict[str, bool] = {}
        self._material: dict[int, bool] = {}  # sid -> names a material
        self._material_word: dict[str, bool] = {}  # token -> has a material sense in its singular form
        self._tag_memo: dict[str, tuple] = {}

    # ---- public API -----------------------------------------------------------------------------
    def caption(self, text: str) -> list[str]:
        """Synset names of a caption (title, description), first-seen order, synonyms merged."""
        return self._names(self._caption(text, None))

    def tags(self, tags: Iterable[str]) -> list[str]:
        """Synset names of an image's hashtags, each sense chosen with the other tags as context."""
        return self._names(self._tags(tags, None))

    def explain_caption(self, text: str) -> list[Unit]:
        """What became of each word of a caption (spans in text order)."""
        detail: list[Unit] = []
        self._caption(text, detail)
        return detail

    def explain_tags(self, tags: Iterable[str]) -> list[Unit]:
        detail: list[Unit] = []
        self._tags(tags, detail)
        return detail

    def caption_labels(self, text: str) -> list[int]:
        """Vocabulary ids of a caption (needs SenseTagger(vocab=...))."""
        return self._labels(self._caption(text, None))

    def tag_labels(self, tags: Iterable[str]) -> list[int]:
        return self._labels(self._tags(tags, None))

    def synset_ids(self, text_or_tags, kind: str = "caption") -> list[int]:
        """Lexicon rows of the synsets of a text (distinct, first-seen order), for counting passes."""
        sids = self._caption(text_or_tags, None) if kind == "caption" else self._tags(text_or_tags, None)
        return list(dict.fromkeys(sids))

    def label_ids(self, sids: list[int]) -> list[int]:
        """Vocabulary ids of synset ids from `synset_ids` (needs SenseTagger(vocab=...))."""
        return self._labels(sids)

    def _names(self, sids: list[int]) -> list[str]:
        names = self.lex.names
        return [names[s] for s in dict.fromkeys(sids)]

    def _labels(self, sids: list[int]) -> list[int]:
        if self._vocab_label is None:
            raise ValueError("SenseTagger: labels need a vocabulary (SenseTagger(vocab=...))")
        return list(dict.fromkeys(self._vocab_label[s] for s in sids))

    # ---- captions -------------------------------------------------------------------------------
    def _caption(self, text: str, detail: list[Unit] | None, probe: dict | None = None) -> list[int]:
        toks = tokenize(text)
        n = len(toks)
        choice = self._segment(toks) if n > 1 else None
        material = self._material_cues(toks, choice) if n > 1 else _EMPTY
        targets = []  # (unit index, lemmas, span, used as a material)
        bags: list[frozenset] = []
        classes: list[dict | None] = []  # per unit: its word's lexname affinities (lexicon.class_pmi)
        i = 0
        while i < n:
            ch = choice[i] if choice is not None else None
            if probe is not None:  # the word of this unit (its last word for a compound), for cooccur.py
                w = toks[i + (ch[0] - 1 if ch is not None else 0)]
                probe["stems"].append(self.stem(w) if w not in STOPWORDS else "")
            if ch is None:  # a single token
                lemmas, score, noun_bag, stem_bag, meta, affinity = self._token(toks[i])
                if len(lemmas) > 1 and i > 0 and toks[i - 1] in COUNT_WORDS and lemmas[0] == toks[i]:
                    lemmas = lemmas[1:] + lemmas[:1]  # "two glasses": the plural of glass before the lemma glasses
                    noun_bag = self._bag(lemmas)
                classes.append(None if meta else affinity)
                if not lemmas or meta or not self._is_noun(toks, i, score):
                    bags.append(_EMPTY if meta else stem_bag)
                    if detail is not None and toks[i] not in STOPWORDS:
                        why = "meta" if meta else "not a noun" if lemmas else "unknown"
                        detail.append(Unit(toks[i], list(lemmas), dropped=why))
                else:
                    targets.append((len(bags), lemmas, toks[i], i in material))
                    bags.append(noun_bag)
                i += 1
                continue
            L, lemma, meta = ch
            span = " ".join(toks[i:i + L])
            meta = meta or lemma in self._meta
            classes.append(None if meta else self._token(toks[i + L - 1])[5])  # the head word's
            if meta:
                bags.append(_EMPTY)
                if detail is not None:
                    detail.append(Unit(span, [lemma] if lemma else [], dropped="meta"))
            else:
                targets.append((len(bags), (lemma,), span, False))
                bags.append(self._bag((lemma,)))
            i += L
        return self._choose(targets, bags, classes, detail, probe)

    # ---- hashtags -------------------------------------------------------------------------------
    def _tags(self, tags: Iterable[str], detail: list[Unit] | None, probe: dict | None = None) -> list[int]:
        if isinstance(tags, str):
            raise TypeError("tags must be a list of hashtags, not one string (split it first)")
        targets, bags, classes = [], [], []
        for tag in tags:
            if not isinstance(tag, str):
                raise TypeError(f"a hashtag must be a str, got {type(tag).__name__}")
            info = self._tag_memo.get(tag)
            if info is None:
                info = _remember(self._tag_memo, tag, self._tag_info(tag))
            lemmas, bag, affinity, stem, why = info
            bags.append(bag)
            classes.append(affinity)
            if probe is not None:
                probe["stems"].append(stem)
            if lemmas:
                targets.append((len(bags) - 1, lemmas, tag, False))
            elif detail is not None and why:
                detail.append(Unit(tag, [], dropped=why))
        return self._choose(targets, bags, classes, detail, probe)

    def _tag_info(self, tag: str) -> tuple:
        """Per distinct hashtag, once: (lemmas, context bag, lexname affinity, stem, why it gives no label)."""
        key = normalize_hashtag(tag)
        if not key or key in self._meta_keys:
            return (), _EMPTY, None, "", "meta" if key else None
        lemmas = self._tag_lemmas(key)
        stem = self.stem(key)
        stem_bag = self._keep(frozenset((stem,)))
        affinity = self._affinity(self.stem(lemmas[0].split(" ")[-1]) if lemmas else stem)
        if not lemmas:
            return (), stem_bag, affinity, stem, "unknown"
        return lemmas, self._bag(lemmas) | stem_bag, affinity, stem, None

    def _tag_lemmas(self, key: str) -> tuple[str, ...]:
        """Lemmas of a hashtag key: the key itself, else noun.exc, else the detachment rules."""
        keys = self.lex.keys
        if key in keys:
            return tuple(keys[key])
        out: list[str] = []
        for b in self.lex.noun_exc.get(key, ()):
            out += [lm for lm in keys.get(b, ()) if lm not in out]
        if not out:
            for suffix, repl in NOUN_RULES:
                if key.endswith(suffix) and len(key) > len(suffix) + 1:
                    out += [lm for lm in keys.get(key[: len(key) - len(suffix)] + repl, ()) if lm not in out]
        return tuple(out)

    # ---- the sense --------------------------------------------------------------------------------
    def _affinity(self, stem: str) -> dict | None:
        """Lexname affinities of a context word: WordNet's (lexicon.class_pmi) plus the corpus's (stats)."""
        a = self.lex.class_pmi.get(stem)
        if self.stats is not None:
            b = self.stats.affinity(stem)
            if b:
                a = dict(a or {})
                for c, v in b.items():
                    a[c] = a.get(c, 0.0) + v
        return a

    def context_units(self, text, kind: str = "caption", margin: float = 2.0) -> list[tuple[str, int | None]]:
        """Per unit of a text: (stem of its word, lexname index of its sense when the sense is not in doubt:
        one candidate, or a winner by >= margin; else None). The counting pass of cooccur.py."""
        probe: dict = {"stems": [], "confident": {}, "margin": margin}
        if kind == "caption":
            self._caption(text, None, probe)
        else:
            self._tags(text, None, probe)
        return [(s, probe["confident"].get(k)) for k, s in enumerate(probe["stems"])]

    def _keep(self, stems: frozenset) -> frozenset:
        """Only the stems rare enough to be evidence (idf > IDF_FLOOR)."""
        w = self._stem_weight
        return frozenset(s for s in stems if s in w)

    def _sense_priors(self, lemmas: tuple[str, ...], restrict: bool) -> list[tuple[int, float]]:
        """(sid, prior) of every sense of the lemmas, best first (step 4); only the vocabulary's synsets
        when `restrict`."""
        lex, seen, out = self.lex, set(), []
        for li, lemma in enumerate(lemmas):
            bias = self._bias.get(lemma, {})
            for rank, (sid, count) in enumerate(lex.senses[lemma]):
                if sid in seen or (restrict and sid not in self._vocab_label):
                    continue
                seen.add(sid)
                ln = lex.lexname[sid]
                visual = self._lex_weight[ln]
                if self._hyper_weight:
                    visual = max([visual] + [self._hyper_weight[h] for h in lex.hypernyms(sid, 12)
                                             if h in self._hyper_weight])
                out.append((sid, COUNT_W * math.log1p(count) - RANK_W * min(rank, MAX_RANK) - BASE_RANK * (li > 0)
                            + visual + (self._inst_pen[ln] if lex.instance[sid] else 0.0) + bias.get(sid, 0.0)))
        out.sort(key=lambda e: -e[1])
        return out

    def _choices(self, lemmas: tuple[str, ...]) -> tuple:
        """Per lemma tuple, once: (candidates [(sid, prior)] within PRUNE of the best, at most MAX_CANDS;
        stem -> [(candidate index, weight)] over their signatures less the stems all of them share; the
        set of those stems)."""
        ch = self._choice_memo.get(lemmas)
        if ch is None:
            cands = self._sense_priors(lemmas, self._vocab_label is not None)
            cands = [c for c in cands if c[1] > cands[0][1] - PRUNE][:MAX_CANDS] if cands else []
            inv: dict[str, list[tuple[int, float]]] = {}
            if len(cands) > 1:
                sigs = [self._keep(self.lex.signature(sid)) for sid, _ in cands]
                common = frozenset.intersection(*sigs)
                for ci, sig in enumerate(sigs):
                    for w in sig - common:
                        inv.setdefault(w, []).append((ci, self._stem_weight[w]))
            ch = _remember(self._choice_memo, lemmas, (cands, inv, frozenset(inv)))
        return ch

    def _bag(self, lemmas: tuple[str, ...]) -> frozenset:
        """What a noun brings as context: its likely senses' bags (prior within BAG_MARGIN of the best, at
        most 2; a word's rare senses would only add noise) and the stems of its lemmas."""
        bag = self._bags.get(lemmas)
        if bag is None:
            priors = self._sense_priors(lemmas, restrict=False)
            top = [sid for sid, prior in priors[:2] if prior > priors[0][1] - BAG_MARGIN] if priors else []
            words = {self.stem(w) for lm in lemmas for w in lm.split(" ") if w not in STOPWORDS}
            bag = _remember(self._bags, lemmas,
                            self._keep(frozenset(words).union(*(self.lex.sense_bag(sid) for sid in top))))
        return bag

    def _choose(self, targets, bags: list[frozenset], classes: list, detail: list[Unit] | None,
                probe: dict | None = None) -> list[int]:
        """The sense of each target (unit index, lemmas, span, used as a material) given the other units' bags
        and lexname affinities (steps 4-5)."""
        out: list[int] = []
        lex = self.lex
        affinity = None  # summed over the text's words: lexname -> PMI
        for k, lemmas, span, as_material in targets:
            cands, inv, keys = self._choices(lemmas)
            if not cands:
                if detail is not None:
                    detail.append(Unit(span, list(lemmas), dropped="not in vocabulary"))
                continue
            scored = cands
            if len(cands) > 1:
                hits = keys.intersection(_EMPTY.union(*bags[:k], *bags[k + 1:]))  # the OTHER words' stems
                if affinity is None:
                    affinity = {}
                    for a in classes:
                        if a:
                            for c, v in a.items():
                                affinity[c] = affinity.get(c, 0.0) + v
                own = classes[k] or {}
                gains = [0.0] * len(cands)
                for w in hits:
                    for ci, weight in inv[w]:
                        gains[ci] += weight
                scored = []
                for (sid, prior), gain in zip(cands, gains):
                    c = lex.lexname[sid]
                    total = prior + LESK_W * math.log1p(min(gain, MAX_GAIN) / LESK_SCALE) if gain else prior
                    coh = affinity.get(c, 0.0) - own.get(c, 0.0)
                    if coh > 0:
                        total += CLASS_W * min(coh, CLASS_CAP)
                    scored.append((sid, total))
                scored.sort(key=lambda e: -e[1])
                if as_material:  # its best material sense, if one is a common enough reading of the word
                    near = {sid for sid, prior in cands
                            if prior >= cands[0][1] - MATERIAL_MARGIN and self.is_material(sid)}
                    if near:
                        scored.sort(key=lambda e: e[0] not in near)
            sid = scored[0][0]
            dropped = "non-visual" if lex.lexname[sid] in self._drop else None
            if dropped is None:
                out.append(sid)
                if probe is not None and (len(scored) == 1 or scored[0][1] - scored[1][1] >= probe["margin"]):
                    probe["confident"][k] = lex.lexname[sid]
            if detail is not None:
                detail.append(Unit(span, list(lemmas), lex.names[sid], dropped,
                                   [(lex.names[s], t) for s, t in scored[:5]]))
        return out
