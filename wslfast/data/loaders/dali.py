"""DALI loaders: webdataset shards (or an ImageFolder tree) -> normalized NCHW channels_last batches.

Train: fn.readers.webdataset sharded by global rank (stick_to_shard, local shuffle buffer), decode with a
random crop (area 8-100%, aspect 3/4-4/3: random-resized-crop), resize to image_size, random flip,
ImageNet mean/std; targets are SparseTargets (1/k over an image's k labels), built on the device: DALI
pads each batch's label lists to [B, K_max] with -1 and moves them with the images, torch makes the
CSR. Train on an ImageFolder (fine-tuning): fn.readers.file over the file list with a fresh permutation of
the whole list every epoch (shuffle_after_epoch, one seed on every rank, so the ranks' shards partition
it): a tree listed class by class would otherwise give each rank a fixed block of classes and a shuffle
buffer only a few classes a batch; the same random-resized crop and flip, new draws every epoch; int64
classes. Eval: decode, resize the shorter side to resize_size, center crop image_size; targets are int64
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
from pathlib import Path

import torch

from ...errors import ConfigError, DataError
from ...sparse_targets import SparseTargets

__all__ = ["DaliLoader", "IMAGENET_MEAN", "IMAGENET_STD", "padded_to_targets"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATE_VERSION = 1


def _resolve_device(device) -> tuple[torch.device, int | None]:
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, None
    if dev.type != "cuda":
        raise ConfigError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' asked for but no CUDA device is available; use device='cpu'")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return torch.device("cuda", index), index


def padded_to_targets(padded: torch.Tensor, num_classes: int, class_weights: torch.Tensor | None = None
                      ) -> SparseTargets:
    """[B, K] label ids padded with -1 (on any device) -> SparseTargets in CSR on that device. Weights 1/k, or
    with class_weights ([num_classes], e.g. the manifest's IDF ln(N / df_j)) each label's class weight over
    its row's sum (1/k for a row whose class weights sum to 0)."""
    mask = padded >= 0
    counts = mask.sum(1)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    ids = padded[mask]
    weights = None
    if class_weights is not None and ids.numel():
        w = class_weights.to(ids.device, torch.float32)[ids.long().clamp(0, num_classes - 1)]
        row = torch.repeat_interleave(torch.arange(counts.numel(), device=ids.device), counts)
        sums = torch.zeros(counts.numel(), device=ids.device, dtype=torch.float32).index_add_(0, row, w)[row]
        k = counts.clamp(min=1).to(torch.float32)[row]
        weights = torch.where(sums > 0, w / sums.clamp(min=torch.finfo(torch.float32).tiny), 1.0 / k)
    return SparseTargets(ids, offsets, weights, num_classes=num_classes)


def _shard_size(n: int, rank: int, world: int) -> int:
    """Samples of DALI shard `rank` (DALI splits at floor(n * i / world))."""
    return n * (rank + 1) // world - n * rank // world


class DaliLoader:
    """An iterable over one epoch per `iter()`; see the module docstring."""

    def __init__(self, *, kind: str, batch_size: int, rank: int, world_size: int, device, image_size: int,
                 resize_size: int, seed: int, num_threads: int, tars=None, idx=None, files=None, labels=None,
                 num_classes: int, num_samples: int, dtype=None, prefetch: int = 2, initial_fill: int = 1024,
                 random_area=(0.08, 1.0), random_aspect_ratio=(3 / 4, 4 / 3), class_weights=None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if image_size < 1 or resize_size < image_size:
            raise ConfigError(f"need 1 <= image_size <= resize_size, got {image_size}, {resize_size}")
        if num_samples < world_size:
            raise DataError(f"{num_samples} samples cannot be split over {world_size} ranks")
        self.kind, self.batch_size, self.rank, self.world_size = kind, batch_size, rank, world_size
        self.device, self._device_id = _resolve_device(device)
        self.image_size, self.resize_size, self.seed, self.num_threads = image_size, resize_size, seed, num_threads
        self.num_classes, self.num_samples = num_classes, num_samples
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self._tars, self._idx, self._files, self._labels = tars, idx, files, labels
        # per-class target weights (the manifest's class_weights, IDF), on the device once; None: 1/k
        self._class_weights = None if class_weights is None else torch.as_tensor(
            class_weights, dtype=torch.float32, device=self.device)
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
            common = dict(shard_id=self.rank, num_shards=self.world_size, pad_last_batch=True, name="reader")
            if folder and train:  # a new global permutation each epoch, the same on every rank
                jpegs, labels = fn.readers.file(files=self._files, labels=self._labels, shuffle_after_epoch=True,
                                                shuffle_after_epoch_seed=self.seed % 2**31, **common)
            elif folder:
                jpegs, labels = fn.readers.file(files=self._files, labels=self._labels, stick_to_shard=True,
                                                **common)
            else:
                jpegs, labels = fn.readers.webdataset(
                    paths=self._tars, index_paths=self._idx, ext=["jpg", "labels"],
                    dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
                    initial_fill=min(self._initial_fill, max(self._local, 1)), stick_to_shard=True,
                    random_shuffle=train, **common)
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
        return x, padded_to_targets(y, self.num_classes, self._class_weights)

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
            raise ConfigError(f"DaliLoader.load_state_dict: saved for {state['config']}, this loader is "
                             f"{self._config()}")
        self._build(base64.b64decode(state["checkpoint"]))
        self.epoch, self._run_in_epoch = int(state["epoch"]), int(state["run_in_epoch"])
        if self._run_in_epoch >= self._runs_per_epoch:
            self.epoch, self._run_in_epoch = self.epoch + 1, 0
