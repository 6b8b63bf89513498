"""Text -> WordNet synsets -> label ids: the WordNet files for nltk (wordnet.py) and the hashtag
vocabulary (vocab.py: normalization, noun canonicalization, one label per synset, save/load)."""
from .vocab import HashtagVocabulary, NounIndex, noun_index, normalize_hashtag
from .wordnet import ensure_wordnet, get_wordnet, wordnet_available

__all__ = ["HashtagVocabulary", "NounIndex", "noun_index", "normalize_hashtag", "ensure_wordnet", "get_wordnet",
           "wordnet_available"]
