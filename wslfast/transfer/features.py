"""A frozen backbone's features on disk: extracted once, in parts, and read back in batches.

The linear probe at ImageNet scale cannot hold its features in memory (1.28M x 2,048 float64 is 21 GB;
RegNetY-128GF's 7,392 features, 75 GB), so they are written to a folder per split, one part file of
`part_size` images at a time, and read back part by part:

    store = FeatureStore(folder, key={...}, dim=2048, num_samples=n, part_size=8192, dtype="float32")
    for k in store.missing_parts(rank, world):  ...  store.write_part(k, x, y)     # extraction (resumable)
    reader = FeatureReader(folder)
    n, mean, var = reader.moments()                          # merged from each part's own (n, mean, M2)
    for x, y in reader.stream(batch_size=1024, rank=r, world=w, seed=0): ...       # endless, shuffled

Layout: index.json (what the features are of: `key`, plus dim, dtype, part_size, num_samples, the order
seed; written first), part-00000.npz ... (x [n, D] in float16 or float32, y [n] int64, and the part's
float64 moments: count, mean, M2), each written to a temporary name and renamed, so a part on disk is
whole. Resume: a part that exists is done; extraction does the others. A folder whose key differs (other
weights, image size, files, ...) is refused, never mixed.

The images are assigned to parts in a seeded random order (`order(seed, n)`), so every part is a uniform
sample of the split and a batch drawn from one part mixes all classes (an ImageFolder lists its files
class by class). Under torchrun rank r extracts parts r, r + W, ...; each rank then reads its own parts.

Time: one pass over the split to extract; a read of the store per probe epoch. Memory: one part (part_size x
D values) and one batch, whatever the split's size.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Iterator

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import DataError, RunFolderError

__all__ = ["FeatureStore", "FeatureReader", "merge_moments", "part_moments", "order", "DTYPES"]

DTYPES = {"float16": np.float16, "float32": np.float32}
INDEX = "index.json"
_VERSION = 1


def order(seed: int, n: int) -> np.ndarray:
    """The seeded permutation of 0..n-1 that assigns a split's images to parts (the same on every rank)."""
    return np.random.default_rng(seed).permutation(n)


def part_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2 = sum of squared deviations) of the rows of x, in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(0)
    return x64.shape[0], mean, ((x64 - mean) ** 2).sum(0)


def merge_moments(parts) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2) of the union from each part's (count, mean, M2): Chan et al.'s pairwise update,
    exact in float64 and free of the cancellation of sum(x^2) - n mean^2."""
    n, mean, m2 = 0, None, None
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        if mean is None:
            n, mean, m2 = nb, np.array(mb, dtype=np.float64), np.array(m2b, dtype=np.float64)
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta ** 2 * (n * nb / total)
        n = total
    if mean is None:
        raise DataError("feature store: no samples")
    return n, mean, m2


def _part_name(k: int) -> str:
    return f"part-{k:05d}.npz"


class FeatureStore:
    """The writing side: index.json first, then part files (see the module docstring)."""

    def __init__(self, folder: str, key: dict, dim: int, num_samples: int, part_size: int,
                 dtype: str = "float32", order_seed: int = 0, create: bool = True):
        if dtype not in DTYPES:
            raise ValueError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if part_size < 1 or num_samples < 1 or dim < 1:
            raise ValueError(f"FeatureStore: need part_size, num_samples, dim >= 1, got {part_size}, "
                             f"{num_samples}, {dim}")
        self.folder, self.dim, self.num_samples, self.part_size = folder, int(dim), int(num_samples), int(part_size)
        self.dtype, self.order_seed = dtype, int(order_seed)
        self.index = {"version": _VERSION, "key": key, "dim": self.dim, "dtype": dtype, "part_size": self.part_size,
                      "num_samples": self.num_samples, "order_seed": self.order_seed}
        path = os.path.join(folder, INDEX)
        if os.path.isfile(path):
            theirs = _read_index(folder)
            diff = [f"{k} {json.dumps(theirs.get(k))} there, {json.dumps(v)} here" for k, v in self.index.items()
                    if k != "key" and theirs.get(k) != v]
            diff += [f"{k} {json.dumps(theirs['key'].get(k))} there, {json.dumps(v)} here"
                     for k, v in key.items() if theirs.get("key", {}).get(k) != v]
            if diff:
                raise RunFolderError(f"{folder} holds features of another extraction ({'; '.join(diff[:3])}): "
                                     f"give a new --out, or remove that folder to extract again")
        elif create:
            os.makedirs(folder, exist_ok=True)
            _atomic_json(path, self.index)

    @property
    def num_parts(self) -> int:
        return math.ceil(self.num_samples / self.part_size)

    def part_range(self, k: int) -> tuple[int, int]:
        """[start, stop) positions (in the seeded order) of part k."""
        return k * self.part_size, min((k + 1) * self.part_size, self.num_samples)

    def done(self, k: int) -> bool:
        return os.path.isfile(os.path.join(self.folder, _part_name(k)))

    def missing_parts(self, rank: int = 0, world: int = 1) -> list[int]:
        """This rank's parts (k = rank, rank + world, ...) not yet on disk."""
        return [k for k in range(rank, self.num_parts, world) if not self.done(k)]

    def write_part(self, k: int, x, y) -> str:
        """Part k's features [n, D] and labels [n] (n = its size), written whole or not at all."""
        start, stop = self.part_range(k)
        x = np.asarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)
        y = np.asarray(y.cpu().numpy() if isinstance(y, torch.Tensor) else y, dtype=np.int64)
        if x.shape != (stop - start, self.dim) or y.shape != (stop - start,):
            raise ValueError(f"part {k}: expected features [{stop - start}, {self.dim}] and labels "
                             f"[{stop - start}], got {list(x.shape)} and {list(y.shape)}")
        if not np.isfinite(x).all():
            raise DataError(f"part {k}: the backbone gave non-finite features (inf/NaN); is the checkpoint "
                            f"whole?")
        with np.errstate(over="ignore"):  # checked just below
            stored = x.astype(DTYPES[self.dtype])
        if not np.isfinite(stored).all():  # float16 tops out at 65,504
            raise DataError(f"part {k}: features exceed the range of {self.dtype} (max |x| "
                            f"{float(np.abs(x).max()):.4g}): use --feature-dtype float32")
        count, mean, m2 = part_moments(stored)  # the moments of what is stored: what the probe reads
        path = os.path.join(self.folder, _part_name(k))
        with atomic_write(path) as f:
            np.savez(f, x=stored, y=y, count=np.int64(count), mean=mean, m2=m2)
        return path


def _atomic_json(path: str, data: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def _read_index(folder: str) -> dict:
    path = os.path.join(folder, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        if index.get("version") != _VERSION:
            raise ValueError(f"version {index.get('version')}, expected {_VERSION}")
        return index
    except FileNotFoundError:
        raise DataError(f"{folder}: no feature index ({INDEX}); features not extracted yet") from None
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path} is unreadable ({e}); remove the folder to extract again") from None


class FeatureReader:
    """The reading side of a whole store: moments, every part, or endless shuffled batches."""

    def __init__(self, folder: str):
        self.folder = folder
        self.index = _read_index(folder)
        self.dim, self.num_samples = int(self.index["dim"]), int(self.index["num_samples"])
        self.part_size = int(self.index["part_size"])
        self.num_parts = math.ceil(self.num_samples / self.part_size)
        missing = [k for k in range(self.num_parts) if not os.path.isfile(os.path.join(folder, _part_name(k)))]
        if missing:
            raise DataError(f"{folder}: {len(missing)} of {self.num_parts} feature parts missing (first "
                            f"{_part_name(missing[0])}); run the same command again to extract them")

    def _load(self, k: int, what=("x", "y")):
        path = os.path.join(self.folder, _part_name(k))
        try:
            with np.load(path) as z:
                return tuple(z[w] for w in what)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{path} is damaged ({type(e).__name__}: {e}); remove it and run again to "
                            f"extract it anew") from None

    def moments(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(count, mean, var) over the whole split, float64 (population variance), from the parts' moments."""
        n, mean, m2 = merge_moments((int(c), mu, m) for c, mu, m in
                                    (self._load(k, ("count", "mean", "m2")) for k in range(self.num_parts)))
        if n != self.num_samples:
            raise DataError(f"{self.folder}: parts hold {n} samples, the index says {self.num_samples}")
        return n, mean, m2 / n

    def part(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._load(k)
        return torch.from_numpy(x), torch.from_numpy(y)

    def parts(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Parts rank, rank + world, ... in order (for evaluation: each sample once over all ranks)."""
        for k in range(rank, self.num_parts, world):
            yield self.part(k)

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every feature and label in memory (small tasks only: the caller checks the size)."""
        xs, ys = zip(*(self.part(k) for k in range(self.num_parts)))
        return torch.cat(xs), torch.cat(ys)

    def stream(self, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches of batch_size (features in the stored dtype, labels int64), reshuffled every
        round: the parts in a new order, split over the ranks (part k of the round's order goes to rank
        k mod world; with fewer parts than ranks, each part's rows are split instead), the rows of each part
        in a new order. A batch can take rows from two parts; one part in memory at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng([seed, rank])
        shared = np.random.default_rng(seed)  # the same part order on every rank
        split_rows = self.num_parts < world
        carry_x = carry_y = None
        while True:
            parts = shared.permutation(self.num_parts)
            mine = parts if split_rows else parts[rank::world]
            rows_this_round = 0
            for k in mine:
                x, y = self._load(int(k))
                if split_rows:  # every rank draws the same permutation and keeps its share of it
                    rows = shared.permutation(x.shape[0])[rank::world]
                else:
                    rows = rng.permutation(x.shape[0])
                rows_this_round += len(rows)
                x, y = torch.from_numpy(x[rows]), torch.from_numpy(y[rows])
                if carry_x is not None:
                    x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
                full = x.shape[0] // batch_size * batch_size
                for i in range(0, full, batch_size):
                    yield x[i:i + batch_size], y[i:i + batch_size]
                carry_x, carry_y = (x[full:], y[full:]) if full < x.shape[0] else (None, None)
            if rows_this_round == 0:  # would loop for ever
                raise DataError(f"{self.folder}: rank {rank} of {world} gets none of its {self.num_samples} "
                                f"samples (parts of {self.part_size}); use fewer ranks or smaller parts")
