"""Feature extraction for the linear probe: a split's images through a frozen backbone into a FeatureStore.

    written = extract_features(model, listing, store, batch_size=256, device=dev, image_size=224,
                               resize_size=256, rank=r, world=w, progress=print_line, stop=lambda: False)

Each rank extracts its missing parts (rank, rank + world, ...): the images of those parts, in the store's
seeded order, go through one evaluation pipeline (decode, resize the shorter side, centre crop), their
average-pooled features fill a buffer of one part, and each full part is written (atomically) before the
next starts. A killed or stopped run keeps every part it wrote; the next one does the rest.

Time: one forward pass per image, once. Memory: one part of features (part_size x D float32) and the
pipeline's batches, whatever the split's size.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np
import torch

from ..data.loaders import FolderListing, make_loader
from .features import FeatureStore, order

__all__ = ["extract_features", "ExtractionStopped"]


class ExtractionStopped(Exception):
    """A stop was asked for (SIGTERM/SIGUSR1) during extraction; the parts written so far are kept."""


@torch.no_grad()
def extract_features(model, listing: FolderListing, store: FeatureStore, batch_size: int, device, image_size: int,
                     resize_size: int, num_threads: int = 2, rank: int = 0, world: int = 1, autocast=None,
                     progress: Callable | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Writes this rank's missing parts of `store` from `listing` (the split); returns how many it wrote.
    progress(parts_done, parts_todo, images_per_s, eta_s) after each part; stop() polled between batches
    (True: raise ExtractionStopped)."""
    if len(listing) != store.num_samples:
        raise ValueError(f"extract_features: the listing has {len(listing)} images, the store {store.num_samples}")
    todo = store.missing_parts(rank, world)
    if not todo:
        return 0
    perm = order(store.order_seed, store.num_samples)
    positions = np.concatenate([perm[slice(*store.part_range(k))] for k in todo])
    sub = FolderListing(listing.root, [listing.files[i] for i in positions], [listing.labels[i] for i in positions],
                        listing.classes)
    loader = make_loader("eval", sub, batch_size, 0, 1, device=torch.device(device).type, image_size=image_size,
                         resize_size=resize_size, num_threads=num_threads, validate=False)
    model.eval()
    sizes = [store.part_range(k)[1] - store.part_range(k)[0] for k in todo]
    buf_x = np.empty((max(sizes), store.dim), dtype=np.float32)
    buf_y = np.empty(max(sizes), dtype=np.int64)
    part, fill, t0, done_images = 0, 0, time.perf_counter(), 0
    for images, labels in loader:
        if stop is not None and stop():
            raise ExtractionStopped(f"{part} of {len(todo)} parts written")
        with autocast if autocast is not None else contextlib.nullcontext():
            feats = model.forward_features(images.float() if autocast is None else images)
        feats = feats.float().cpu().numpy()
        labels = labels.cpu().numpy()
        i = 0
        while i < feats.shape[0]:
            take = min(sizes[part] - fill, feats.shape[0] - i)
            buf_x[fill:fill + take], buf_y[fill:fill + take] = feats[i:i + take], labels[i:i + take]
            fill, i = fill + take, i + take
            if fill == sizes[part]:
                store.write_part(todo[part], buf_x[:fill], buf_y[:fill])
                done_images += fill
                part, fill = part + 1, 0
                if progress is not None:
                    elapsed = time.perf_counter() - t0
                    rate = done_images / elapsed if elapsed > 0 else float("nan")
                    progress(part, len(todo), rate, (sum(sizes) - done_images) / rate if rate > 0 else float("nan"))
    if part != len(todo):  # the loader yields every image once: anything else is a bug, not bad data
        raise RuntimeError(f"extract_features: {part} of {len(todo)} parts filled")
    return part
