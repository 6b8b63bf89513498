"""Text -> WordNet synsets -> label ids: the WordNet files for nltk (wordnet.py), the hashtag vocabulary
(vocab.py: normalization, noun canonicalization, one label per synset, save/load), the sense tagger for
captions and tag lists (senses.py, with reading.py, lexicon.py, text.py and cooccur.py), caption
vocabularies and IDF weights (vocabulary.py), the audit score (audit.py) and the `label` command
(label_cli.py)."""
from .vocab import HashtagVocabulary, NounIndex, noun_index, normalize_hashtag
from .wordnet import ensure_wordnet, get_wordnet, wordnet_available

__all__ = ["HashtagVocabulary", "NounIndex", "noun_index", "normalize_hashtag", "ensure_wordnet", "get_wordnet",
           "wordnet_available"]
