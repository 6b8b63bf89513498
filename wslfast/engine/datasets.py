"""The shards a training run reads, from its config: a folder the user names, or the built-in demo corpus
built on first use (wslfast.data.demo). Run plumbing, so it lives beside the scripts' other shared steps:
it reads the run's config and distributed state, which the data package never does.

    shards = prepare_shards(cfg, info)    # cfg.data: "synthetic" or a folder; info: DistInfo
"""
from __future__ import annotations

import os

from ..data.demo import demo_folder_name, prepare_demo
from ..data.format import list_shards
from ..errors import DataError

__all__ = ["prepare_shards", "cache_root", "demo_corpus_dir"]


def cache_root(cfg) -> str:
    """$WSLFAST_CACHE, else ~/.cache/wslfast, unless the config names cache_dir."""
    return cfg.get("cache_dir") or os.environ.get("WSLFAST_CACHE") or os.path.join(os.path.expanduser("~"),
                                                                                   ".cache", "wslfast")


def demo_corpus_dir(cfg) -> str:
    """The demo folder of a training config (named by its parameters); its target/ is the transfer task."""
    return os.path.join(cache_root(cfg), demo_folder_name(cfg.synthetic_images, cfg.synthetic_classes,
                                                          cfg.image_size, cfg.seed, cfg.sampling))


def prepare_shards(cfg, info) -> str:
    """The folder of shards to train on (shards + manifest.json). For data=synthetic, local rank 0 of each
    machine builds the demo (prepare_demo) if it is not cached yet while the other ranks wait. cfg needs
    data, and for the demo cache_dir, synthetic_images, synthetic_classes, image_size, seed and sampling."""
    if cfg.data != "synthetic":
        if not os.path.isdir(cfg.data):
            raise DataError(f"data: {cfg.data!r} is neither 'synthetic' nor a folder of shards")
        folder = cfg.data
    else:
        corpus = demo_corpus_dir(cfg)
        if info.local_rank == 0:
            if not os.path.isfile(os.path.join(corpus, "demo.json")):
                print(f"demo data: building the synthetic corpus in {corpus} (once)", flush=True)
            prepare_demo(corpus, num_images=cfg.synthetic_images, seed=cfg.seed, image_size=cfg.image_size,
                         num_target_classes=cfg.synthetic_classes, min_count=1, shard_size=1000,
                         sampling=cfg.sampling)
        if info.enabled:
            import torch.distributed as dist

            dist.barrier()
        folder = os.path.join(corpus, "shards")
    if not list_shards(folder):
        raise DataError(f"data: no shards in {folder}")
    return folder
