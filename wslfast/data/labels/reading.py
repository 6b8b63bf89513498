"""How a caption is cut into the words and compounds that may become labels (steps 1-2 of senses.py).

`CaptionReader` is the part of SenseTagger that reads: the compound segmentation (a dynamic programme over
WordNet's multi-word lemmas, the later compound winning ties), the per-token facts (noun lemmas by
morphology, SemCor noun log-odds, context bag, meta word, lexname affinity), and the noun cues from a
word's neighbours. Each memo is bounded (`remember`).
"""
from __future__ import annotations

import math

from .text import DETERMINERS, MODALS, STOPWORDS, VERB_CUES

__all__ = ["CaptionReader", "remember", "NOUN_PRIOR", "NOUN_MIN"]

NOUN_PRIOR, NOUN_MIN = 0.5, -1.0  # noun cue: prior log-odds toward nouns, threshold; see _is_noun
_EMPTY: frozenset = frozenset()
_MEMO = 500_000


def remember(memo: dict, key, value):
    """memo[key] = value, clearing the memo first past _MEMO entries (a corpus's long tail of forms does not
    grow it forever)."""
    if len(memo) >= _MEMO:
        memo.clear()
    memo[key] = value
    return value


class CaptionReader:
    """Mixin of SenseTagger (which sets lex, stem, _meta, _meta_phrases, _tok, _phrases, _bag, _keep,
    _affinity)."""

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
                    if joined in senses and len(t) > 2 and len(u) > 2 and u not in STOPWORDS:
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
