"""The shard build: images + TAGS -> shards in the format of ../format.py, streaming, on any engine.

driver.py (`write_shards`: the order of passes, resume, manifest), publish.py (version folders, the manifest
swap, the lock), passes.py (the per-block steps), engines.py (in-process or a process pool), ray_engine.py
(Ray Data, when asked), targets.py (label noise, resampling), dedup.py (pHash, HashIndex), images.py (one
sample's image under one guard: read, check, pHash, re-encode).
"""
from .driver import dataset_name, write_shards

__all__ = ["write_shards", "dataset_name"]
