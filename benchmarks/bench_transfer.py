"""Fine-tuning throughput and memory: wslfast's fine-tuning step on its DALI training pipeline against a
plain PyTorch fine-tuning loop over the same data, and the peak memory of train/transfer.py against the
size of the training split.

speed (bench "transfer_finetune", mode "step"): the same ImageFolder (made here: smooth random "photos",
default 10 classes x 64 images of 320x240), the same model (--arch, fresh head), the same augmentation
(random-resized crop to --image-size, area 8-100%, aspect 3/4-4/3, horizontal flip, ImageNet mean/std), the
same batch, SGD with momentum and plain cross-entropy:
  wslfast:     make_loader("train", ImageFolder) (DALI, CPU operators or nvJPEG) + wslfast.transfer.finetune's
               train_step on the fused model (conv+BN+ReLU op), --workers DALI threads;
  torchvision: torchvision.datasets.ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor +
               Normalize in a DataLoader with --workers worker processes, the model with stock PyTorch layers
               (fused=False), loss.backward(); optimizer.step().
Each runs in its own process; per-step wall times (data wait included) after --warmup steps give p20/p50/p80
and images/s; peak memory is the largest PSS summed over the process and its children (DataLoader workers),
sampled every 0.1 s.
memory (bench "transfer_finetune_memory", mode "run"): `train/transfer.py --mode finetune --steps S` on
training splits of N, 10N (and 100N with --sizes) images: the peak summed PSS of the run (it must not grow
with N: the pipeline streams).

    python benchmarks/bench_transfer.py                     # CPU, both parts; records to benchmarks/results/cpu.json
    python benchmarks/bench_transfer.py --device cuda --workers 8 --arch regnet_y_16gf --image-size 224

Timings taken on a shared machine are noisy: the records carry the machine's load average (load_avg).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import append_results, record, run_measured  # noqa: E402


def make_image_folder(root: Path, classes: int, per_class: int, width: int, height: int, seed: int = 0) -> Path:
    """root/train/c<k>/<i>.jpg (and a small val/): smooth random 'photos', JPEG quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for split, n in (("train", per_class), ("val", 2)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.zeros((height, width, 3), np.float32) + rng.uniform(40, 200, 3).astype(np.float32)
                for _ in range(3):
                    f, ph, amp = rng.uniform(0.002, 0.05, 2), rng.uniform(0, 6.3), rng.uniform(10, 60, 3)
                    img += np.sin(f[0] * xx + f[1] * yy + ph)[..., None] * amp.astype(np.float32)
                img += rng.normal(0, 12, img.shape).astype(np.float32)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def measured(cmd: list) -> tuple[str, int, float]:
    """(stdout, peak PSS summed over the process tree, seconds) of a command, sampled every 0.1 s."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    secs, peak, out = run_measured(cmd, env, ROOT, interval=0.1)
    return out, peak, secs


# ---------------------------------------------------------------- the two fine-tuning loops (child processes)
def timed_steps(loader, step, args, device: torch.device) -> list[float]:
    """ms per step(i, images, labels) over epochs of the loader (data wait included), the first --warmup
    steps dropped."""
    times, t0 = [], time.perf_counter()
    while len(times) < args.warmup + args.steps:
        for images, labels in loader:
            step(len(times), images, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            t0 = t1
            if len(times) == args.warmup + args.steps:
                break
    return times[args.warmup:]


def wslfast_steps(data: Path, args) -> list[float]:
    from wslfast.data.loaders import list_image_folder, make_loader
    from wslfast.engine import DistInfo, NonFiniteGuard, build_optimizer
    from wslfast.models import create_model
    from wslfast.transfer.finetune import head_lr_groups, train_step

    device = torch.device(args.device)
    info = DistInfo(0, 1, 0, device, None)
    listing = list_image_folder(data / "train", verbose=False)
    loader = make_loader("train", listing, args.batch_size, device=device.type, image_size=args.image_size,
                         num_threads=args.workers, validate=False)
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=len(listing.classes), fused=True, zero_init_residual=False,
                         image_size=args.image_size).to(device, memory_format=torch.channels_last).train()
    optimizer = head_lr_groups(build_optimizer(model, "sgd", 0.01, 1e-4, momentum=0.9, nesterov=False), model, 1.0)
    guard = NonFiniteGuard(model)

    def step(i, images, labels):
        train_step(model, optimizer, guard, images.float(), labels, 0.01, len(listing.classes), info, i)

    return timed_steps(loader, step, args, device)


def torchvision_steps(data: Path, args) -> list[float]:
    import torch.nn.functional as F
    import torchvision
    from torchvision import transforms as T

    from wslfast.data.loaders import IMAGENET_MEAN, IMAGENET_STD
    from wslfast.models import create_model

    device = torch.device(args.device)
    tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = torchvision.datasets.ImageFolder(str(data / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=len(ds.classes), fused=False, zero_init_residual=False,
                         image_size=args.image_size).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(i, images, labels):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(images), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the same one host sync a step as train_step's flag

    return timed_steps(loader, step, args, device)


# ---------------------------------------------------------------- the driver
def speed(args, data: Path, device: torch.device, load: float) -> list[dict]:
    records, per = [], {}
    for impl in ("wslfast", "torchvision"):
        cmd = [sys.executable, __file__, "--_child", f"{impl},{data}"] + [
            f"--{k}={v}" for k, v in (("device", args.device), ("workers", args.workers), ("arch", args.arch),
                                      ("batch-size", args.batch_size), ("image-size", args.image_size),
                                      ("steps", args.steps), ("warmup", args.warmup))]
        try:
            out, peak, _ = measured(cmd)
        except RuntimeError as e:
            print(f"{impl}: skipped ({str(e)[-400:]})")
            continue
        t = np.array(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
        case = {"arch": args.arch, "batch_size": args.batch_size, "image_size": args.image_size,
                "source_size": args.source_size, "workers": args.workers, "num_images": args.classes * args.per_class}
        q = tuple(float(np.percentile(t, p)) for p in (20, 50, 80))
        rec = record("transfer_finetune", case, impl, "step", q, peak, device,
                     images_per_s=float(len(t) * args.batch_size / (t.sum() / 1e3)), load_avg=load,
                     peak_mem="sum of PSS over the process tree", note=args.note)
        per[impl] = rec
        records.append(rec)
        print(f"{impl:12s} p50 {rec['ms_p50']:8.1f} ms/step  {rec['images_per_s']:7.1f} img/s  "
              f"peak {peak / 2**20:6.0f} MiB")
    if len(per) == 2:
        print(f"wslfast / torchvision fine-tuning throughput: "
              f"{per['wslfast']['images_per_s'] / per['torchvision']['images_per_s']:.2f}x")
    return records


def memory(args, tmp: Path, device: torch.device, load: float) -> list[dict]:
    from wslfast.models import create_model

    weights = tmp / f"{args.arch}.pth"
    torch.save(create_model(args.arch, num_classes=5, image_size=args.image_size).state_dict(), weights)
    records = []
    for per_class in (int(s) for s in args.sizes.split(",")):
        data = tmp / f"mem{per_class}"
        if not (data / "train").is_dir():
            make_image_folder(data, args.classes, per_class, *(int(v) for v in args.source_size.split("x")))
        out, peak, secs = measured([sys.executable, ROOT / "train" / "transfer.py", "--checkpoint", weights,
                                        "--arch", args.arch, "--data", data, "--mode", "finetune", "--baseline",
                                        "false", "--steps", args.steps, "--batch-size", args.batch_size,
                                        "--image-size", args.image_size, "--device", args.device,
                                        "--num-threads", args.workers, "--out", tmp / f"run{per_class}"])
        n = args.classes * per_class
        case = {"arch": args.arch, "num_images": n, "steps": args.steps, "batch_size": args.batch_size,
                "image_size": args.image_size, "source_size": args.source_size}
        records.append(record("transfer_finetune_memory", case, "wslfast", "run", None, peak, device,
                              seconds=round(secs, 1), load_avg=load, peak_mem="sum of PSS over the process tree",
                              note=args.note))
        print(f"train/transfer.py finetune, {n:7,} training images, {args.steps} steps: peak {peak / 2**20:6.0f} MiB "
              f"(PSS, process tree), {secs:.0f} s")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--parts", default="speed,memory")
    ap.add_argument("--arch", default="resnext_tiny")
    ap.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader worker processes")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=64, help="speed: training images per class")
    ap.add_argument("--sizes", default="20,200", help="memory: training images per class, one run each")
    ap.add_argument("--source-size", default="320x240", help="WxH of the generated JPEGs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--data", default=None, help="keep the generated folders here")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/<device>.json)")
    ap.add_argument("--note", default="", help="stored with each record (e.g. that the machine was shared)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:  # one fine-tuning loop in this fresh process; its per-step times as JSON
        impl, data = args._child.split(",", 1)
        times = (wslfast_steps if impl == "wslfast" else torchvision_steps)(Path(data), args)
        print("RESULT " + json.dumps(times))
        return

    tmp = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="wslfast_bench_transfer_"))
    device = torch.device(args.device)
    load = round(os.getloadavg()[0], 2)
    records = []
    if "speed" in args.parts:
        data = tmp / "speed"
        if not (data / "train").is_dir():
            make_image_folder(data, args.classes, args.per_class, *(int(v) for v in args.source_size.split("x")))
        records += speed(args, data, device, load)
    if "memory" in args.parts:
        records += memory(args, tmp, device, load)
    path = append_results(records, args.out, device)
    print(f"appended {len(records)} records to {path} (load average {load} when it started)")


if __name__ == "__main__":
    main()
