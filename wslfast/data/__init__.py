"""wslfast.data: from images with hashtags or captions to training batches, by job (docs/data.md: the map).

    sources/   readers of each kind of input (TAGS files: JSONL, YFCC100M) behind one Source interface
    labels/    text -> WordNet synsets -> label ids (HashtagVocabulary; SenseTagger for captions)
    format.py  THE shard format: write, index, verify, manifest, COUNTS.tsv
    build/     the shard build (write_shards): per-block passes, engines, noise/resampling, dedup
    loaders/   DALI pipelines over the format (train_loader, eval_loader)
    synthetic.py, demo.py   the demo corpus

The names below are importable from here; each loads its module on first use (the loaders import DALI and
torch, the build numpy and PIL), so `import wslfast.data` stays cheap.
"""
from importlib import import_module

_PUBLIC = {
    "HashtagVocabulary": ".labels", "normalize_hashtag": ".labels",
    "write_shards": ".build", "list_shards": ".format", "read_manifest": ".format", "verify_shard": ".format",
    "train_loader": ".loaders", "eval_loader": ".loaders",
    "make_synthetic_corpus": ".synthetic", "prepare_demo": ".demo",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
