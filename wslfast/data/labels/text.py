"""Text -> tokens, the way both captions and WordNet lemma names are cut, so a phrase matches a compound.

- `tokenize`: Unicode NFKC, lowercase, accents folded (WordNet is ASCII), possessive 's dropped, then the runs
  of letters and digits ("Men's red-crowned Cranes!" -> men, red, crowned, cranes). A WordNet lemma is cut
  the same way (fish_tank -> fish, tank; jack-o'-lantern -> jack, o, lantern), so phrase lookup is a join.
- `STOPWORDS`: function words, never labels and never context ("a", "in", "it", "may", ... all of which are
  also WordNet nouns: vitamin A, Indiana, information technology, the month of May).
- `MODALS`: can, will, may, might, must: nouns only right after a determiner ("a can of soda").
- `DETERMINERS`: words after which the next word is read as a noun (the part-of-speech cue of `text.noun_cue`).
- `MATERIAL_VERBS`, `MATERIAL_PREPOSITIONS`: "made of", "carved from", "covered in": the noun after them names
  the stuff a thing is made of (the material cue of reading.py).
- `Stemmer`: Porter stems with a bounded memo (the gloss-overlap signatures are sets of stems).
"""
from __future__ import annotations

import re
import unicodedata

__all__ = ["tokenize", "STOPWORDS", "MODALS", "DETERMINERS", "COUNT_WORDS", "VERB_CUES", "MATERIAL_VERBS",
           "MATERIAL_PREPOSITIONS", "COORDINATORS", "Stemmer"]

_TOKEN = re.compile(r"[a-z0-9]+")
_POSSESSIVE = re.compile(r"['\u2019]s\b")
_ASCII = re.compile(r"[\x00-\x7f]*")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens of `text` (see the module docstring); [] for text with no letters or digits."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    s = text.lower()
    if _ASCII.fullmatch(s) is None:  # only non-ASCII text pays for the Unicode folding
        s = unicodedata.normalize("NFKC", s)
        s = "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))
    return _TOKEN.findall(_POSSESSIVE.sub("", s))


# Function words (articles, pronouns, prepositions, conjunctions, auxiliaries, quantifiers, common adverbs).
STOPWORDS = frozenset("""
a an the this that these those my your his her its our their mine yours hers ours theirs
i me you he him she we us they them it itself myself yourself himself herself ourselves themselves
who whom whose which what where when why how whoever whatever
in on at of to for from by with without within into onto over under above below across along around
through between among against about after before behind beside besides beneath beyond during near
off out up down upon via per than as like unlike toward towards until till since inside outside
and or but nor so yet if then else because while although though unless whether either neither both
is are was were be been being am do does did doing done have has had having
would shall should could ought
not no nor only just very too also even still already again ever never always often sometimes
all any each every few many much more most other some such same own several
one two three four five six seven eight nine ten
there here now today tonight tomorrow yesterday
s t d ll m o re ve y
""".split())

# Modal verbs that are also nouns (a tin can, a last will, the month of May): nouns only after a determiner.
MODALS = frozenset("can will may might must".split())

# After these the next word is read as a noun ("a can", "the saw", "two glasses", "his bat").
DETERMINERS = frozenset("""
a an the this that these those my your his her its our their some any every each no another
two three four five six seven eight nine ten several many few of
""".split())

# Count words: the plural after them is a plural ("two glasses"), not a lemma of its own (glasses).
COUNT_WORDS = frozenset("two three four five six seven eight nine ten several many few both".split())

# Before a verb more often than before a noun ("to fly", "can swim", "is running").
VERB_CUES = frozenset("to will would can could may might must should shall is are was were be been "
                      "being am do does did don doesn didn he she they we i it who that".split())

# "<verb> of|from|in|with|out of <noun>": the noun is what the thing is made of or covered with ("a bridge made of
# steel", "a statue carved from marble", "covered in gold"), whatever the noun's other senses.
MATERIAL_VERBS = frozenset("""
made carved built cast crafted constructed forged woven knitted sculpted sculptured moulded molded hewn
fashioned formed covered wrapped coated plated clad paved lined upholstered framed
""".split())
MATERIAL_PREPOSITIONS = frozenset("of from in with".split())
COORDINATORS = frozenset("and or".split())  # "steel and glass tower": a word coordinated with a material is one


class Stemmer:
    """Porter stems (nltk's, a pure-Python rule set with no data files), memoized up to `max_memo` words."""

    def __init__(self, max_memo: int = 1_000_000):
        from nltk.stem.porter import PorterStemmer

        self._porter = PorterStemmer()
        self._memo: dict[str, str] = {}
        self._max = max_memo

    def __call__(self, word: str) -> str:
        s = self._memo.get(word)
        if s is None:
            s = self._porter.stem(word, to_lowercase=False)
            if len(self._memo) >= self._max:  # bounded: a corpus's long tail of forms does not grow it forever
                self._memo.clear()
            self._memo[word] = s
        return s
