"""How a caption is cut into the words and compounds that may become labels (steps 1-2 of senses.py).

`CaptionReader` is the part of SenseTagger that reads: the compound segmentation (a dynamic programme over
WordNet's multi-word lemmas, the later compound winning ties), the per-token facts (noun lemmas by
morphology, SemCor noun log-odds, context bag, meta word, lexname affinity), the noun cues from a
word's neighbours, and the material cue. Each memo is bounded (`remember`).

Two words written apart join into a one-word lemma ("cell phone" -> cellphone) only when the joined word is
about them: one of its senses has either word in its signature (gloss, lemmas, hypernyms: a fireplace is
"where a fire can be burned"), or shares a lexname or a hypernym (2 levels) with a noun sense of the second
word (a ladybug is an animal as a bug is, an earring jewelry as a ring is). A leatherjacket, a fish, is
neither, so "leather jacket" stays leather + jacket.

The material cue (`_material_cues`): English names what a thing is made of with a bare singular noun, and a
material word's other senses are mostly things made of it (steel: a sword; iron: a golf club; glass: a
drinking glass; marble: a sculpture or a toy ball; bronze: a sculpture). So a single word that has a material
sense (`material_lexnames` / `material_hypernyms` of visual_priors.json: noun.substance, fabrics, building
materials; not pigments or chemical compounds, `material_hypernyms_excluded`: an "orange" or "lime" before a
noun is no pigment or calcium hydroxide) takes that sense when it is used as a material:
- as a modifier, in its singular form right before another noun ("steel bridge", "iron gate", "glass vase",
  "marble statue", "wood floor"; a plural is no modifier: "kids playing marbles");
- as the complement of a making verb: "made of steel", "carved from solid marble", "covered in gold"
  (text.MATERIAL_VERBS + of/from/in/with/out of, up to two adjectives between);
- coordinated with a word that has the cue ("steel and glass tower", "made of wood and glass").
senses._choose then picks the best-scoring of its material senses among the candidates whose prior is near
the best (the context still chooses between materials: cotton the fibre or the fabric); with no such sense,
nothing changes. Elsewhere ("a glass of wine", "the irons", "two glasses", a hashtag) the usual scores decide.
"""
from __future__ import annotations

import math

from .text import (COORDINATORS, DETERMINERS, MATERIAL_PREPOSITIONS, MATERIAL_VERBS, MODALS, STOPWORDS,
                   VERB_CUES)

__all__ = ["CaptionReader", "remember", "NOUN_PRIOR", "NOUN_MIN"]

NOUN_PRIOR, NOUN_MIN = 0.5, -1.0  # noun cue: prior log-odds toward nouns, threshold; see _is_noun
_EMPTY: frozenset = frozenset()
_MEMO = 500_000
_MAX_ADJECTIVES = 2  # "made of <adj> <adj> <material>"


def remember(memo: dict, key, value):
    """memo[key] = value, clearing the memo first past _MEMO entries (a corpus's long tail of forms does not
    grow it forever)."""
    if len(memo) >= _MEMO:
        memo.clear()
    memo[key] = value
    return value


class CaptionReader:
    """Mixin of SenseTagger (which sets lex, stem, _meta, _meta_phrases, _tok, _phrases, _joins, _material,
    _material_word, _material_lexnames, _material_roots, _material_not, _bag, _keep, _affinity)."""

    def _segment(self, toks: list[str]) -> list[tuple[int, str | None, bool]] | None:
        """Per start position the unit taken there: (length, multi-word lemma, is a meta phrase); None when
        every unit is a single token (the common case, module docstring step 1)."""
        n, lex, senses = len(toks), self.lex, self.lex.senses
        best = [0] * (n + 1)
        choice: list = [None] * n
        found = False
        for i in range(n - 1, -1, -1):
            t = toks[i]
            b, ch = best[i + 1], None
            if t in self._meta_phrases:
                for ph in self._meta_phrases[t]:
                    L = len(ph)
                    if tuple(toks[i:i + L]) == ph and L * L + 1 + best[i + L] > b:
                        b, ch = L * L + 1 + best[i + L], (L, None, True)
            if t not in STOPWORDS:
                for L in range(min(lex.phrase_len.get(t, 1), n - i), 1, -1):
                    if toks[i + L - 1] not in STOPWORDS and L * L + best[i + L] > b:
                        lemma = self._phrase(toks, i, L)
                        if lemma is not None:
                            b, ch = L * L + best[i + L], (L, lemma, False)
                if i + 1 < n and 4 + best[i + 2] > b:
                    u = toks[i + 1]
                    joined = t + u
                    if joined in senses and len(t) > 2 and len(u) > 2 and u not in STOPWORDS \
                            and self._join_ok(t, u, joined):
                        b, ch = 4 + best[i + 2], (2, joined, False)
            best[i], choice[i] = b, ch
            found = found or ch is not None
        return choice if found else None

    def _phrase(self, toks: list[str], i: int, L: int) -> str | None:
        """The multi-word lemma toks[i:i+L] spell (the last word may be plural), or None; memoized."""
        key = " ".join(toks[i:i + L])
        found = self._phrases.get(key, 0)
        if found == 0:
            senses, found = self.lex.senses, None
            if key in senses:
                found = key
            else:
                head = " ".join(toks[i:i + L - 1])
                for base in self.lex.noun_bases(toks[i + L - 1]):
                    if base != toks[i + L - 1] and f"{head} {base}" in senses:
                        found = f"{head} {base}"
                        break
            remember(self._phrases, key, found)
        return found

    def _join_ok(self, first: str, head: str, joined: str) -> bool:
        """May `first head`, written apart, be the one-word lemma `joined`? (module docstring); memoized."""
        key = f"{first} {head}"
        ok = self._joins.get(key)
        if ok is None:
            lex = self.lex
            head_sids = [sid for base in lex.noun_bases(head) for sid, _ in lex.senses[base]]
            kinds = {lex.lexname[sid] for sid in head_sids}
            above = {h for sid in head_sids for h in (sid, *lex.hypernyms(sid, 2))}
            stems = {self.stem(first), self.stem(head)}
            ok = not head_sids or any(  # a second word that is no noun ("sun rise") says nothing against it
                not stems.isdisjoint(lex.signature(sid)) or lex.lexname[sid] in kinds
                or not above.isdisjoint((sid, *lex.hypernyms(sid, 2))) for sid, _ in lex.senses[joined])
            remember(self._joins, key, ok)
        return ok

    def is_material(self, sid: int) -> bool:
        """Does synset `sid` name a material (a substance, a fabric, a building material)? (module docstring)"""
        m = self._material.get(sid)
        if m is None:
            up = self.lex.hypernyms(sid, 12)
            m = (self.lex.lexname[sid] in self._material_lexnames or not self._material_roots.isdisjoint(up)) \
                and self._material_not.isdisjoint(up)
            remember(self._material, sid, m)
        return m

    def _material_cues(self, toks: list[str], choice) -> set[int]:
        """Positions of the single words used as a material here (module docstring): only words with a
        material sense in their singular form, so most captions pay one memo lookup per word."""
        n, memo = len(toks), self._material_word
        get = memo.get
        able = {i for i, tok in enumerate(toks) if get(tok) is not False}  # True, or not seen yet
        for i in list(able):
            tok = toks[i]
            if tok not in memo:
                lemmas = self._token(tok)[0]
                remember(memo, tok, bool(lemmas) and lemmas[0] == tok and any(
                    self.is_material(sid) for lm in lemmas for sid, _ in self.lex.senses[lm]))
            if not memo.get(tok) or (choice is not None and choice[i] is not None):
                able.discard(i)
        if not able:
            return able
        cues = {i for i in able if self._modifies_noun(toks, i, choice) or self._made_of(toks, i)}
        for _ in range(2):  # coordination, both ways: "steel and glass tower", "made of wood and glass"
            cues |= {i for i in able - cues if (i + 2 in cues and i + 1 < n and toks[i + 1] in COORDINATORS)
                     or (i - 2 in cues and toks[i - 1] in COORDINATORS)}
        return cues

    def _modifies_noun(self, toks: list[str], i: int, choice) -> bool:
        """Is toks[i] right before a noun (a compound, or a word read as a noun there)?"""
        if i + 1 >= len(toks) or toks[i + 1] in STOPWORDS:
            return False
        if choice is not None and choice[i + 1] is not None:
            return choice[i + 1][1] is not None  # a compound; a meta phrase ("close up") is none
        info = self._token(toks[i + 1])
        return bool(info[0]) and self._is_noun(toks, i + 1, info[1])

    def _made_of(self, toks: list[str], i: int) -> bool:
        """Is toks[i] the complement of a making verb ("made of [solid] gold", "carved out of marble")?"""
        j, skipped = i - 1, 0
        while j >= 0 and skipped < _MAX_ADJECTIVES and toks[j] not in STOPWORDS:
            info = self._token(toks[j])
            if info[0] and info[1] >= 0:  # a noun in between: toks[i] is not the complement
                return False
            j, skipped = j - 1, skipped + 1
        if j < 1 or toks[j] not in MATERIAL_PREPOSITIONS:
            return False
        verb = toks[j - 1] if toks[j - 1] != "out" else (toks[j - 2] if j >= 2 else "")
        return verb in MATERIAL_VERBS

    def _token(self, tok: str) -> tuple:
        """Per distinct token, once: (noun lemmas, SemCor noun log-odds (99: no other part of speech),
        context bag as a noun, context bag otherwise, is a meta word)."""
        info = self._tok.get(tok)
        if info is None:
            lemmas = tuple(self.lex.noun_bases(tok)) if tok not in STOPWORDS else ()
            score = 99.0
            if lemmas:
                c_other, k_other = self.lex.other_pos_count(tok)
                if k_other:
                    n_noun = sum(c for lemma in lemmas for _, c in self.lex.senses[lemma])
                    score = math.log((n_noun + 1) / (c_other + 1))
            stem_bag = self._keep(frozenset((self.stem(tok),))) if len(tok) > 1 and tok not in STOPWORDS else _EMPTY
            meta = tok in self._meta or any(lm in self._meta for lm in lemmas)
            affinity = self._affinity(self.stem(tok)) if tok not in STOPWORDS else None
            info = remember(self._tok, tok, (lemmas, score, self._bag(lemmas) if lemmas else stem_bag, stem_bag,
                                              meta, affinity))
        return info

    def _is_noun(self, toks: list[str], i: int, score: float) -> bool:
        """Is toks[i] used as a noun here? Its SemCor log-odds plus cues from its neighbours (step 2)."""
        tok = toks[i]
        prev = toks[i - 1] if i > 0 else None
        if tok in MODALS:
            return prev in DETERMINERS
        if score > 50:
            return True
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is not None and score < 0 and nxt not in STOPWORDS:  # "a red car": a modifier, not a noun,
            nxt_info = self._token(nxt)                               # when the next word is surely one
            if nxt_info[0] and nxt_info[1] >= 0:
                return False
        if (prev is None or prev in DETERMINERS) and score > -1.5:  # weak evidence: after "a"/"the"/the start
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
        elif prev is not None and tok.endswith("ing") and prev not in STOPWORDS:  # "crane wading": a participle
            score -= 2.0
        if nxt is not None and nxt != "of" and nxt in DETERMINERS:
            score -= 1.5
        return score > NOUN_MIN
