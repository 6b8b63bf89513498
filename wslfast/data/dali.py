"""DALI loaders: webdataset shards (or an ImageFolder tree) -> normalized NCHW channels_last batches.

Train: fn.readers.webdataset sharded by global rank (stick_to_shard, local shuffle buffer), decode with a
random crop (area 8-100%, aspect 3/4-4/3: random-resized-crop), resize to image_size, random flip,
ImageNet mean/std; targets are SparseTargets (1/k over an image's k labels), built on the device: DALI
pads each batch's label lists to [B, K_max] with -1 and moves them with the images, torch makes the
CSR. Eval: decode, resize the shorter side to resize_size, center crop image_size; targets are int64
classes (ImageFolder) or SparseTargets (shards). device="cuda" decodes with nvJPEG ("mixed") and returns bf16; device="cpu" runs
the same graph with CPU operators (device_id=None) and returns float32.

Epochs: with pad_last_batch DALI pads every rank's part to the same number of batches, B_run =
ceil(ceil(N/W)/B). Train yields floor(floor(N/W)/B) full batches a rank (equal on all ranks, as DDP needs)
and runs the rest without yielding them; eval yields every real sample once (the padding is cut off).
Resume: the pipeline has enable_checkpointing=True; state_dict() holds pipe.checkpoint() (reader position
and every RNG, for the outputs already returned) and our epoch/batch counters, so load_state_dict()
continues the exact sequence of batches.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

import torch

from ..errors import DataError
from ..sparse_targets import SparseTargets
from .dedup import IMAGE_EXTENSIONS
from .shards import list_shards, read_manifest

__all__ = ["train_loader", "eval_loader", "DaliLoader", "IMAGENET_MEAN", "IMAGENET_STD", "image_folder",
           "padded_to_targets", "verify_shard", "DataError"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATE_VERSION = 1
# What DALI's image decoders read (no GIF); anything else in an ImageFolder is skipped and counted.
DALI_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"}
SHOW_SKIPPED = 5  # how many skipped paths a loader names


def _resolve_device(device) -> tuple[torch.device, int | None]:
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, None
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' asked for but no CUDA device is available; use device='cpu'")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return torch.device("cuda", index), index


def _shard_files(shards) -> tuple[list[str], list[str], int | None]:
    """(tar paths, index paths, num_classes from the manifest or None)."""
    if isinstance(shards, (str, os.PathLike)) and Path(shards).is_dir():
        tars = list_shards(shards)
    elif isinstance(shards, (str, os.PathLike)):
        tars = [str(shards)]
    else:
        tars = [str(s) for s in shards]
    if not tars:
        raise FileNotFoundError(f"no whole shards found in {shards!r}")
    for t in tars:
        if not Path(t).is_file():
            raise FileNotFoundError(f"shard {t} does not exist")
    idx = [str(Path(t).with_suffix(".idx")) for t in tars]
    missing = [i for i in idx if not Path(i).is_file()]
    if missing:
        raise FileNotFoundError(f"shard index files missing: {missing[:3]} (write shards with wslfast.data)")
    for t, i in zip(tars, idx):
        verify_shard(t, i)
    try:
        num_classes = int(read_manifest(Path(tars[0]).parent)["num_classes"])
    except (FileNotFoundError, ValueError, KeyError):
        num_classes = None
    return tars, idx, num_classes


def _last_line(path: str, chunk: int = 4096) -> str:
    """The last non-empty line of a text file, read from its end (index files can be large)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = pos = f.tell()
        tail = b""
        while pos > 0:
            pos = max(0, pos - chunk)
            f.seek(pos)
            tail = f.read(end - pos)
            lines = [line for line in tail.splitlines() if line.strip()]
            if len(lines) >= 2 or (pos == 0 and lines):
                return lines[-1].decode("utf-8", "replace")
        return ""


def verify_shard(tar: str, idx: str) -> None:
    """DataError unless the .tar holds what its .idx promises: long enough for the last member the index
    names, with that member's tar header in place (a truncated or replaced shard fails here, at open, not
    as a DALI error mid-run). Reads a few KB per shard."""
    fix = (f"write the shards again (`python -m wslfast.data shards ...`), or remove {Path(tar).name} and "
           f"its .idx")
    try:
        with open(idx, encoding="utf-8") as f:
            head = f.readline().split()
        last = _last_line(idx).split()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"shard index {idx} is unreadable ({e}); {fix}") from None
    if len(head) != 2 or not head[0].startswith("v") or not head[1].isdigit():
        raise DataError(f"shard index {idx} is not a webdataset index (first line {' '.join(head)!r}); {fix}")
    if int(head[1]) == 0:
        return
    # a sample line: "ext offset size name" per component, in file order
    if len(last) < 4 or len(last) % 4 or not all(x.isdigit() for x in last[1::4] + last[2::4]):
        raise DataError(f"shard index {idx}: its last line is not 'ext offset size name ...'; {fix}")
    parts = [(int(last[j + 1]), int(last[j + 2]), last[j + 3]) for j in range(0, len(last), 4)]
    offset, size, name = max(parts)
    have = os.path.getsize(tar)
    if have < offset + size:
        raise DataError(f"shard {tar} is truncated: {have:,} bytes, but its index places {name} at bytes "
                        f"{offset:,}-{offset + size:,}; {fix}")
    if offset >= 512 and len(name) <= 100:
        with open(tar, "rb") as f:
            f.seek(offset - 512)
            header = f.read(512)
        if header[:100].rstrip(b"\0").decode("utf-8", "replace") != name:
            raise DataError(f"shard {tar} does not match its index {Path(idx).name}: no tar member {name} at "
                            f"byte {offset - 512:,}; {fix}")


def _num_samples_from_index(idx_paths: list[str]) -> int:
    total = 0
    for p in idx_paths:
        with open(p, encoding="utf-8") as f:
            head = f.readline().split()
        if len(head) != 2 or not head[0].startswith("v"):
            raise ValueError(f"{p}: not a webdataset index (first line {' '.join(head)!r})")
        total += int(head[1])
    return total


def _decodes(path: str) -> str | None:
    """None if PIL decodes the whole file in a format DALI reads, else why not (a full decode, not a header
    check: a truncated JPEG has a whole header)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
    except Image.UnidentifiedImageError:
        return "not an image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"does not decode ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})"
    if fmt not in DALI_FORMATS:
        return f"{fmt} images are not read by DALI"
    return None


def image_folder(root, validate: bool = True, workers: int = 0) -> tuple[list[str], list[int], list[str], int]:
    """ImageFolder layout root/<class>/**/<image>: (files, labels, classes, skipped), sorted like
    torchvision. With validate, every file is decoded in full (DALI raises on undecodable data and cannot
    skip inside the pipeline); files that fail are skipped, counted, and the first few named on stderr."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected an ImageFolder tree root/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders (expected an ImageFolder tree root/<class>/<image>)")
    candidates = []
    for c, name in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(root / name)):
            for n in sorted(names):
                if Path(n).suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((str(Path(dirpath) / n), c))
    if not candidates:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its {len(classes)} class folders "
                        f"(expected root/<class>/<image>)")
    reasons = [None] * len(candidates)
    if validate:  # PIL releases the GIL while decoding: threads share the work
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            reasons = list(pool.map(_decodes, [p for p, _ in candidates], chunksize=64))
    files = [p for (p, _), r in zip(candidates, reasons) if r is None]
    labels = [c for (_, c), r in zip(candidates, reasons) if r is None]
    bad = [(p, r) for (p, _), r in zip(candidates, reasons) if r is not None]
    if bad:
        shown = "; ".join(f"{p}: {r}" for p, r in bad[:SHOW_SKIPPED])
        more = f"; and {len(bad) - SHOW_SKIPPED} more" if len(bad) > SHOW_SKIPPED else ""
        print(f"{root}: skipped {len(bad)} of {len(candidates)} files that DALI cannot use ({shown}{more})",
              file=sys.stderr, flush=True)
    if not files:
        raise DataError(f"{root}: none of its {len(candidates)} image files decodes (first: {bad[0][0]}: "
                        f"{bad[0][1]})")
    return files, labels, classes, len(bad)


def padded_to_targets(padded: torch.Tensor, num_classes: int) -> SparseTargets:
    """[B, K] label ids padded with -1 (on any device) -> SparseTargets in CSR on that device."""
    mask = padded >= 0
    counts = mask.sum(1)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return SparseTargets(padded[mask], offsets, num_classes=num_classes)


def _shard_size(n: int, rank: int, world: int) -> int:
    """Samples of DALI shard `rank` (DALI splits at floor(n * i / world))."""
    return n * (rank + 1) // world - n * rank // world


class DaliLoader:
    """An iterable over one epoch per `iter()`; see the module docstring."""

    def __init__(self, *, kind: str, batch_size: int, rank: int, world_size: int, device, image_size: int,
                 resize_size: int, seed: int, num_threads: int, tars=None, idx=None, files=None, labels=None,
                 num_classes: int, num_samples: int, dtype=None, prefetch: int = 2, initial_fill: int = 1024,
                 random_area=(0.08, 1.0), random_aspect_ratio=(3 / 4, 4 / 3)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if image_size < 1 or resize_size < image_size:
            raise ValueError(f"need 1 <= image_size <= resize_size, got {image_size}, {resize_size}")
        if num_samples < world_size:
            raise DataError(f"{num_samples} samples cannot be split over {world_size} ranks")
        self.kind, self.batch_size, self.rank, self.world_size = kind, batch_size, rank, world_size
        self.device, self._device_id = _resolve_device(device)
        self.image_size, self.resize_size, self.seed, self.num_threads = image_size, resize_size, seed, num_threads
        self.num_classes, self.num_samples = num_classes, num_samples
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self._tars, self._idx, self._files, self._labels = tars, idx, files, labels
        self._prefetch, self._initial_fill = prefetch, initial_fill
        self._random_area, self._random_aspect = tuple(random_area), tuple(random_aspect_ratio)
        self._local = _shard_size(num_samples, rank, world_size)
        padded = -(-num_samples // world_size)
        self._runs_per_epoch = -(-padded // batch_size)
        if kind == "train":
            self._yield_per_epoch = (num_samples // world_size) // batch_size
            if self._yield_per_epoch == 0:
                source = self._source()
                raise DataError(f"batch_size {batch_size} is larger than the data: {source} holds {num_samples} "
                                f"samples, {num_samples // world_size} per rank over {world_size} rank(s); "
                                f"give a batch_size of at most {num_samples // world_size}")
        else:
            self._yield_per_epoch = -(-self._local // batch_size)
        self._pipe = None
        self.epoch, self._run_in_epoch = 0, 0

    def _source(self) -> str:
        files = self._tars or self._files or []
        folders = sorted({str(Path(f).parent) for f in files[:1000]})
        return folders[0] if len(folders) == 1 else f"{len(files)} files"

    # ---- pipeline -----------------------------------------------------------------------------
    def _build(self, checkpoint: str | None = None):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self._device_id is not None
        decoder, op = ("mixed", "gpu") if gpu else ("cpu", "cpu")
        hints = dict(device_memory_padding=211025920, host_memory_padding=140544512,
                     preallocate_width_hint=5980, preallocate_height_hint=6430) if gpu else {}
        s, train, folder = self.image_size, self.kind == "train", self._files is not None
        mean = [m * 255 for m in IMAGENET_MEAN]
        std = [v * 255 for v in IMAGENET_STD]

        @pipeline_def(enable_checkpointing=True)
        def graph():
            common = dict(shard_id=self.rank, num_shards=self.world_size, pad_last_batch=True,
                          stick_to_shard=True, random_shuffle=train, name="reader")
            if folder:
                jpegs, labels = fn.readers.file(files=self._files, labels=self._labels, **common)
            else:
                jpegs, labels = fn.readers.webdataset(
                    paths=self._tars, index_paths=self._idx, ext=["jpg", "labels"],
                    dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
                    initial_fill=min(self._initial_fill, max(self._local, 1)), **common)
            if train:
                images = fn.decoders.image_random_crop(
                    jpegs, device=decoder, output_type=types.RGB, random_area=list(self._random_area),
                    random_aspect_ratio=list(self._random_aspect), num_attempts=100, **hints)
                images = fn.resize(images, device=op, resize_x=s, resize_y=s, interp_type=types.INTERP_LINEAR,
                                   antialias=True)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **hints)
                images = fn.resize(images, device=op, resize_shorter=self.resize_size,
                                   interp_type=types.INTERP_LINEAR, antialias=True)
                mirror = 0
            images = fn.crop_mirror_normalize(images, device=op, dtype=types.FLOAT, output_layout="HWC",
                                              crop=(s, s), crop_pos_x=0.5, crop_pos_y=0.5, mean=mean, std=std,
                                              mirror=mirror)
            if not folder:  # ragged label lists -> one dense [B, K_max] batch padded with -1
                labels = fn.pad(labels, fill_value=-1)
            return images, labels.gpu() if gpu else labels

        kwargs = dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self._device_id,
                      seed=self.seed + self.rank, prefetch_queue_depth=self._prefetch)
        if checkpoint is not None:
            kwargs["checkpoint"] = checkpoint
        pipe = graph(**kwargs)
        pipe.build()
        self._pipe = pipe

    def _run(self):
        if self._pipe is None:
            self._build()
        try:
            return self._pipe.run()
        except RuntimeError as e:
            self._pipe = None  # DALI invalidates a pipeline after an error
            said = [line.strip() for line in str(e).splitlines() if line.strip()]
            # DALI's message is a stack dump; its first line says what failed (and names the file if it knows)
            first = next((line for line in said if "Error" in line or "error" in line), said[0] if said else "")
            raise DataError(f"DALI could not read or decode a sample from {self._source()}: {first[:300]} "
                            f"(shards are checked against their index when a loader opens them and their "
                            f"images when they are written; a file changed since?)") from e

    def _to_torch(self, images, labels, keep: int):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = images.as_tensor()
        out = torch.empty(tuple(tensor.shape()), dtype=torch.float32, device=self.device)
        if self.device.type == "cuda":
            feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            feed_ndarray(tensor, out)
        # [B, H, W, 3] memory viewed as [B, 3, H, W]: channels_last without a copy.
        x = out[:keep].permute(0, 3, 1, 2)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        lab = labels.as_tensor()
        y = torch.empty(tuple(lab.shape()), dtype=torch.int32, device=self.device)
        if self.device.type == "cuda":
            feed_ndarray(lab, y, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            feed_ndarray(lab, y)
        y = y[:keep].long()
        if self._files is not None:
            return x, y.reshape(keep)
        return x, padded_to_targets(y, self.num_classes)

    # ---- iteration ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._yield_per_epoch

    def __iter__(self):
        """The rest of the current epoch (all of it from a fresh start or an epoch boundary)."""
        while self._run_in_epoch < self._runs_per_epoch:
            run = self._run_in_epoch
            images, labels = self._run()
            self._run_in_epoch += 1
            if run < self._yield_per_epoch:
                keep = self.batch_size
                if self.kind == "eval":
                    keep = min(self.batch_size, self._local - run * self.batch_size)
                yield self._to_torch(images, labels, keep)
        self.epoch += 1
        self._run_in_epoch = 0

    # ---- resume -------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {"kind": self.kind, "batch_size": self.batch_size, "rank": self.rank, "world": self.world_size,
                "seed": self.seed, "image_size": self.image_size, "num_samples": self.num_samples}

    def state_dict(self) -> dict:
        if self._pipe is None:
            self._build()
        cpt = self._pipe.checkpoint()  # base64 text: fits JSON and torch.load(weights_only=True) alike
        cpt = base64.b64encode(cpt if isinstance(cpt, bytes) else cpt.encode()).decode("ascii")
        return {"version": _STATE_VERSION, "checkpoint": cpt, "epoch": self.epoch,
                "run_in_epoch": self._run_in_epoch, "config": self._config()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("DaliLoader.load_state_dict: not a state from DaliLoader.state_dict()")
        if state["config"] != self._config():
            raise ValueError(f"DaliLoader.load_state_dict: saved for {state['config']}, this loader is "
                             f"{self._config()}")
        self._build(base64.b64decode(state["checkpoint"]))
        self.epoch, self._run_in_epoch = int(state["epoch"]), int(state["run_in_epoch"])
        if self._run_in_epoch >= self._runs_per_epoch:
            self.epoch, self._run_in_epoch = self.epoch + 1, 0


def train_loader(shards, batch_size, rank=0, world_size=1, device="cuda", image_size=224, seed=0,
                 num_threads=4, num_classes=None, **kw) -> DaliLoader:
    """Training batches (images, SparseTargets) from webdataset shards (a folder or a list of .tar).
    An ImageFolder tree (no shards in it) gives (images, int64 classes) instead, for fine-tuning."""
    src = Path(shards) if isinstance(shards, (str, os.PathLike)) else None
    if src is not None and src.is_dir() and not list_shards(src):
        files, labels, classes, skipped = image_folder(src, validate=kw.pop("validate", True))
        loader = DaliLoader(kind="train", batch_size=batch_size, rank=rank, world_size=world_size,
                            device=device, image_size=image_size, resize_size=kw.pop("resize_size", image_size),
                            seed=seed, num_threads=num_threads, files=files, labels=labels,
                            num_classes=len(classes), num_samples=len(files), **kw)
        loader.classes, loader.skipped = classes, skipped
        return loader
    tars, idx, manifest_classes = _shard_files(shards)
    num_classes = num_classes or manifest_classes
    if num_classes is None:
        raise ValueError("train_loader: no manifest.json beside the shards; pass num_classes=")
    return DaliLoader(kind="train", batch_size=batch_size, rank=rank, world_size=world_size, device=device,
                      image_size=image_size, resize_size=kw.pop("resize_size", image_size), seed=seed,
                      num_threads=num_threads, tars=tars, idx=idx, num_classes=num_classes,
                      num_samples=_num_samples_from_index(idx), **kw)


def eval_loader(shards_or_folder, batch_size, rank=0, world_size=1, device="cuda", image_size=224,
                resize_size=256, seed=0, num_threads=4, num_classes=None, **kw) -> DaliLoader:
    """Eval batches: resize the shorter side to resize_size, center crop image_size. An ImageFolder tree
    gives int64 class targets (`.classes` holds the names); shards give SparseTargets."""
    src = Path(shards_or_folder) if isinstance(shards_or_folder, (str, os.PathLike)) else None
    if src is not None and src.is_dir() and not list_shards(src):
        files, labels, classes, skipped = image_folder(src, validate=kw.pop("validate", True))
        loader = DaliLoader(kind="eval", batch_size=batch_size, rank=rank, world_size=world_size, device=device,
                            image_size=image_size, resize_size=resize_size, seed=seed, num_threads=num_threads,
                            files=files, labels=labels, num_classes=len(classes), num_samples=len(files), **kw)
        loader.classes, loader.skipped = classes, skipped
        return loader
    tars, idx, manifest_classes = _shard_files(shards_or_folder)
    num_classes = num_classes or manifest_classes
    if num_classes is None:
        raise ValueError("eval_loader: no manifest.json beside the shards; pass num_classes=")
    return DaliLoader(kind="eval", batch_size=batch_size, rank=rank, world_size=world_size, device=device,
                      image_size=image_size, resize_size=resize_size, seed=seed, num_threads=num_threads,
                      tars=tars, idx=idx, num_classes=num_classes, num_samples=_num_samples_from_index(idx), **kw)
