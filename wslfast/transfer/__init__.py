"""What transfer adds to the train/ scripts, one job per module: weight EMA and mixup with soft-target CE
(SWAG's fine-tuning), zero-shot classification through the hashtag head and WordNet (with its optional
calibration), and the linear probe at scale: features extracted once into a store on disk (features,
extract), the classifier fitted full-batch or streamed (probe), scores as counts that add up over ranks
(scoring)."""
from .ema import ModelEMA
from .features import FeatureReader, FeatureStore, merge_moments, part_moments
from .mixup import mixup_batch, mixup_cross_entropy
from .probe import (SOLVERS, choose_solver, feature_scaling, fit_lbfgs, fit_streamed, fold_standardisation,
                    probe_objective)
from .scoring import topk_hits, topk_percent
from .zeroshot import (POOLINGS, class_hashtag_sets, load_vocabulary, log_label_prior, parse_synset_id,
                       read_class_map, resolve_class_synsets, zeroshot_evaluate, zeroshot_scores)

__all__ = ["ModelEMA", "mixup_batch", "mixup_cross_entropy", "POOLINGS", "class_hashtag_sets", "load_vocabulary",
           "parse_synset_id", "read_class_map", "resolve_class_synsets", "zeroshot_evaluate", "zeroshot_scores",
           "log_label_prior", "FeatureStore", "FeatureReader", "merge_moments", "part_moments", "SOLVERS",
           "choose_solver", "feature_scaling", "fit_lbfgs", "fit_streamed", "fold_standardisation", "probe_objective",
           "topk_hits", "topk_percent", "extract_features"]


def __getattr__(name):  # the extraction step imports the DALI loaders: only when asked for
    if name == "extract_features":
        from .extract import extract_features
        return extract_features
    raise AttributeError(f"module 'wslfast.transfer' has no attribute {name!r}")
