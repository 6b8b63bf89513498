"""What SWAG's transfer adds to the train/ scripts: weight EMA, mixup with soft-target CE and label
smoothing, and zero-shot classification through the hashtag head and WordNet. One job per module."""
from .ema import ModelEMA
from .mixup import mixup_batch, mixup_cross_entropy
from .zeroshot import (POOLINGS, class_hashtag_sets, load_vocabulary, parse_synset_id, read_class_map,
                       resolve_class_synsets, zeroshot_evaluate, zeroshot_scores)

__all__ = ["ModelEMA", "mixup_batch", "mixup_cross_entropy", "POOLINGS", "class_hashtag_sets", "load_vocabulary",
           "parse_synset_id", "read_class_map", "resolve_class_synsets", "zeroshot_evaluate", "zeroshot_scores"]
