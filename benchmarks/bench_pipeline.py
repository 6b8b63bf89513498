"""Input pipeline throughput: wslfast's DALI loader vs a torchvision DataLoader (PIL decode), same shards.

Both sides read the same webdataset shards of ImageNet-sized JPEGs (made here, default 500x375) and apply
the same transforms: train = random-resized-crop 224 (area 8-100%, aspect 3/4-4/3) + flip + mean/std;
eval = resize shorter side 256 + center crop 224 + mean/std. Both produce float NCHW channels_last images
and SparseTargets. The DataLoader gets as many workers as DALI gets threads (--workers). Each impl runs in
its own subprocess (clean peak memory); per-batch times after warm-up give p20/p50/p80.

    python benchmarks/bench_pipeline.py                    # CPU: DALI CPU vs DataLoader, 2 workers
    python benchmarks/bench_pipeline.py --device cuda --workers 16   # DALI "mixed" vs DataLoader on a GPU box

Appends flat records to benchmarks/results/<cpu|h100|...>.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import append_results, record  # noqa: E402


def make_shards(out: Path, num_images: int, width: int, height: int, seed: int = 0) -> Path:
    """Smooth random 'photos' as JPEG (quality 90), 4 labels each from 100, written as shards."""
    from PIL import Image

    from wslfast.data.build import write_shards
    from wslfast.data.labels.vocab import HashtagVocabulary

    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    lines = []
    for i in range(num_images):
        img = np.zeros((height, width, 3), np.float32) + rng.uniform(40, 200, 3).astype(np.float32)
        for _ in range(4):
            f, ph, amp = rng.uniform(0.002, 0.05, 2), rng.uniform(0, 6.3), rng.uniform(10, 60, 3)
            img += np.sin(f[0] * xx + f[1] * yy + ph)[..., None] * amp.astype(np.float32)
        img += rng.normal(0, 12, img.shape).astype(np.float32)  # texture: JPEGs of realistic size
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(img_dir / f"{i:06d}.jpg", quality=90)
        lines.append(json.dumps({"image": f"{i:06d}.jpg", "tags": [f"t{k}" for k in rng.choice(100, 4, False)]}))
    (out / "tags.jsonl").write_text("\n".join(lines) + "\n")
    vocab = HashtagVocabulary([f"bench_{k}.n.01" for k in range(100)], [f"n{k:08d}" for k in range(100)],
                              {f"t{k}": k for k in range(100)}, source="bench")
    write_shards(img_dir, out / "tags.jsonl", vocab, out / "shards", shard_size=max(num_images // 8, 1))
    return out / "shards"


def torchvision_loader(shards: Path, mode: str, batch_size: int, workers: int, image_size: int):
    """webdataset + PIL + torchvision transforms in a DataLoader: the peer."""
    import webdataset as wds
    from torchvision import transforms as T

    from wslfast.data.loaders import IMAGENET_MEAN, IMAGENET_STD
    from wslfast.data.format import list_shards, read_manifest
    from wslfast.sparse_targets import SparseTargets

    num_classes = read_manifest(shards)["num_classes"]
    if mode == "train":
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    else:
        tf = T.Compose([T.Resize(256 * image_size // 224), T.CenterCrop(image_size), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def sample(s):
        return tf(s["jpg"].convert("RGB")), np.frombuffer(s["labels"], dtype="<i4").tolist()

    def collate(batch):
        x = torch.stack([b[0] for b in batch]).contiguous(memory_format=torch.channels_last)
        return x, SparseTargets.from_lists([b[1] for b in batch], num_classes)

    ds = (wds.WebDataset(list_shards(shards), shardshuffle=False, nodesplitter=None,
                         workersplitter=wds.split_by_worker, empty_check=False)
          .decode("pil").map(sample))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                       persistent_workers=workers > 0, prefetch_factor=2 if workers else None)


def dali_loader(shards: Path, mode: str, batch_size: int, workers: int, image_size: int, device: str):
    from wslfast.data import loaders as dali

    if mode == "train":
        return dali.train_loader(shards, batch_size, device=device, image_size=image_size, num_threads=workers)
    return dali.eval_loader(shards, batch_size, device=device, image_size=image_size,
                            resize_size=256 * image_size // 224, num_threads=workers)


def time_impl(impl: str, shards: Path, mode: str, batch_size: int, workers: int, image_size: int,
              device: str, epochs: int, warmup: int) -> dict:
    """Per-batch wall times (ms) over `epochs` passes after `warmup` batches; run in a fresh process."""
    if impl == "dali":
        loader = dali_loader(shards, mode, batch_size, workers, image_size, device)
    else:
        loader = torchvision_loader(shards, mode, batch_size, workers, image_size)
    times, images, seen = [], 0, 0
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        for x, _y in loader:
            if device == "cuda":
                x = x.to(device, non_blocking=True)
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            seen += 1
            if seen > warmup:
                times.append((t1 - t0) * 1e3)
                images += x.shape[0]
            t0 = t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"times_ms": times, "images": images, "peak_mem_bytes": peak * 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader workers")
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--source-size", default="500x375", help="WxH of the generated JPEGs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--modes", default="train,eval")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--data", default=None, help="reuse/keep the generated shards here")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/<device>.json)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:  # one impl in this fresh process; print its timings as JSON
        impl, mode, shards = args._child.split(",", 2)
        r = time_impl(impl, Path(shards), mode, args.batch_size, args.workers, args.image_size, args.device,
                      args.epochs, args.warmup)
        print("RESULT " + json.dumps(r))
        return

    w, h = (int(v) for v in args.source_size.split("x"))
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="wslfast_bench_"))
    shards = data / "shards"
    if not (shards / "manifest.json").is_file():
        t = time.perf_counter()
        make_shards(data, args.num_images, w, h)
        print(f"made {args.num_images} {w}x{h} JPEGs in shards in {time.perf_counter() - t:.1f}s")
    device = torch.device(args.device)
    records = []
    for mode in args.modes.split(","):
        per = {}
        for impl, name in (("dali", f"wslfast-dali-{'mixed' if args.device == 'cuda' else 'cpu'}"),
                           ("torchvision", "torchvision-pil")):
            cmd = [sys.executable, __file__, "--_child", f"{impl},{mode},{shards}"] + [
                f"--{k}={v}" for k, v in (("device", args.device), ("workers", args.workers),
                                          ("batch-size", args.batch_size), ("image-size", args.image_size),
                                          ("epochs", args.epochs), ("warmup", args.warmup))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{name} {mode}: skipped (failed: {proc.stderr.strip()[-500:]})")
                continue
            r = json.loads(line[len("RESULT "):])
            t = np.array(r["times_ms"])
            case = {"mode": mode, "batch_size": args.batch_size, "image_size": args.image_size,
                    "source_size": args.source_size, "workers": args.workers, "num_images": args.num_images}
            q = tuple(float(np.percentile(t, p)) for p in (20, 50, 80))
            rec = record("pipeline", case, name, "step", q, int(r["peak_mem_bytes"]), device,
                         images_per_s=float(r["images"] / (t.sum() / 1e3)))
            per[impl] = rec
            records.append(rec)
            print(f"{mode:5s} {name:22s} p50 {rec['ms_p50']:8.1f} ms/batch  {rec['images_per_s']:8.1f} img/s")
        if len(per) == 2:
            print(f"{mode:5s} DALI / DataLoader throughput: "
                  f"{per['dali']['images_per_s'] / per['torchvision']['images_per_s']:.2f}x")
    path = append_results(records, args.out, device)
    print(f"appended {len(records)} records to {path}")


if __name__ == "__main__":
    main()
