"""Where pretrain.py and transfer.py get their data: the built-in synthetic demo corpus (made once, cached)
or a folder of shards given with --data.

The demo corpus lives under cache_dir (default $WSLFAST_CACHE, else ~/.cache/wslfast) in a folder named by
its parameters, holding images/, tags.jsonl, the demo target task target/{train,val}, the vocabulary and
the shards. It is built in a temporary folder and renamed into place when whole, so an interrupted build
is simply redone and concurrent runs never see half a corpus.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter

import torch.distributed as dist

__all__ = ["cache_root", "demo_corpus_dir", "prepare_shards", "read_tag_counts"]


def cache_root(cfg) -> str:
    return cfg.cache_dir or os.environ.get("WSLFAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                            "wslfast")


def demo_corpus_dir(cfg) -> str:
    name = (f"synthetic-n{cfg.synthetic_images}-c{cfg.synthetic_classes}-px{cfg.image_size}"
            f"-s{cfg.seed}-{cfg.sampling}")
    return os.path.join(cache_root(cfg), name)


def read_tag_counts(counts_path: str) -> Counter:
    """Hashtag -> number of images carrying it, from the corpus's counts.tsv (`hashtag<TAB>count` a line)."""
    counts: Counter = Counter()
    with open(counts_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                tag, n = line.rstrip("\n").rsplit("\t", 1)
                counts[tag] += int(n)
    return counts


def _build_corpus(cfg, final_dir: str) -> None:
    from wslfast.data.shards import write_shards
    from wslfast.data.synthetic import make_synthetic_corpus
    from wslfast.data.vocab import HashtagVocabulary

    tmp = f"{final_dir}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    corpus = make_synthetic_corpus(tmp, num_images=cfg.synthetic_images, seed=cfg.seed,
                                   image_size=cfg.image_size, num_target_classes=cfg.synthetic_classes)
    vocab = HashtagVocabulary.from_counts(read_tag_counts(corpus["counts"]), source="wordnet-nouns", min_count=1)
    vocab.save(os.path.join(tmp, "vocab.json"))
    write_shards(corpus["images"], corpus["tags"], vocab, os.path.join(tmp, "shards"), sampling=cfg.sampling,
                 seed=cfg.seed)
    try:
        os.replace(tmp, final_dir)
    except OSError:  # another process finished the same corpus first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_shards(cfg, info) -> str:
    """The folder of shards to train on (shards + manifest.json). For data=synthetic, local rank 0 of each
    machine builds the corpus if it is not cached yet while the other ranks wait."""
    from wslfast.data.shards import list_shards

    if cfg.data != "synthetic":
        if not os.path.isdir(cfg.data):
            raise SystemExit(f"data: {cfg.data!r} is neither 'synthetic' nor a folder of shards")
        folder = cfg.data
    else:
        corpus = demo_corpus_dir(cfg)
        if info.local_rank == 0 and not os.path.isdir(corpus):
            os.makedirs(os.path.dirname(corpus), exist_ok=True)
            print(f"demo data: building the synthetic corpus in {corpus} (once)", flush=True)
            _build_corpus(cfg, corpus)
        if info.enabled:
            dist.barrier()
        folder = os.path.join(corpus, "shards")
    if not list_shards(folder):
        raise SystemExit(f"data: no shards in {folder}")
    return folder
