"""Hashtag data: WordNet vocabularies, webdataset shards, and the DALI loaders (see issue 4)."""
from .vocab import HashtagVocabulary, normalize_hashtag

__all__ = ["HashtagVocabulary", "normalize_hashtag"]
