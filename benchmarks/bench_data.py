"""The data side at scale: `shards` records/s and peak memory, and near-duplicate queries/s.

Build: N JSONL records (1-3 hashtags of the demo concepts each) over a pool of --pool distinct small JPEGs
(32x32, made here; record i uses image i % pool, so every record is decode-checked but the disk holds the
pool only), label noise 0.1 and sqrt resampling, shards of 1,000. Each build runs in its own subprocess;
memory is the peak, sampled every 0.25 s, of the PSS summed over that process and all its descendants
(Ray's GCS, raylet, workers and object store included). Impls: `wslfast-local` (--workers 1, in-process),
`wslfast-pool` (--workers W, a process pool), `wslfast-ray` (--workers W --engine ray, embedded Ray Data),
and `before` (the pipeline of commit f274729, run from a
`git archive` of it, --workers W: today's baseline in the same run).

Images: check + pHash + write of real-size photos (scikit-image's bundled photos, resized to 640x480 and
1,600x1,200 and saved as quality-90 JPEGs, a few crops each), records/s on one core: `plain-decode` (a full
PIL decode, the decode limit the check sat at), `before` (the check and write of commit 18f214a, copied
below: full decode, pHash of the full image, bytes copied into a shard) and `wslfast` (build/images.py: the
guard with its DCT-scaled grey decode, pHash of that, write_shard with the pass-1 bytes), in one process on
the same files; the wslfast record also holds the Hamming distances between the two pHashes of each file.

Web datasets (`--skip web` to leave out): an img2dataset folder of N samples (10,000 a tar, as img2dataset
writes them: key.jpg + key.txt caption + key.json in the tar, a parquet of every row beside it, 1% failed
downloads; the JPEGs, 32x32, come from a pool of --pool), first `vocab --webdataset --kind caption` (impl
`wslfast-vocab`: the streaming caption count, one process), then `shards --webdataset` (caption labels
through the SenseTagger, images read by range from the tars) with `wslfast-local` (--workers 1) and
`wslfast-workers` (--workers W: the multi-worker engine). Records/s and peak summed PSS as for the build;
`bench` is data_web. N from --web-records (default 1e4, 1e5).

Dedup: queries/s of Q random 64-bit hashes (1% of them near copies of reference hashes) against R
reference hashes at radius 10: `wslfast-hashindex` (dedup.HashIndex), `brute` (the all-pairs search
before, dedup.near_duplicates_brute), and faiss's `IndexBinaryFlat` and `IndexBinaryMultiHash` (range
search, 1 thread) as peers. All-pairs impls are timed on a sample of the queries and extrapolated (the
record says `sampled_queries`).

    python benchmarks/bench_data.py                                   # 1e4, 1e5, 1e6 records; dedup 1e6 x {1e5, 1e6}
    python benchmarks/bench_data.py --records 10000 --dedup-queries 100000 --dedup-refs 100000   # quick
    OMP_NUM_THREADS=1 python benchmarks/bench_data.py --skip build,dedup                 # the photo case only
    OMP_NUM_THREADS=1 python benchmarks/bench_data.py --skip build,dedup,images --web-records 10000,100000  # web

Appends records to benchmarks/results/cpu.json (or --out) after each case.
"""
from __future__ import annotations

import argparse
import json
import os
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
from common import append_results, record, run_measured  # noqa: E402
from data_images import bench_images  # noqa: E402
from data_web import bench_web  # noqa: E402

BASELINE_COMMIT = "f274729"
_CPU = torch.device("cpu")


def make_corpus(root: Path, n: int, pool: int, seed: int = 0) -> tuple[Path, Path, Path]:
    from PIL import Image

    from wslfast.data.synthetic import concept_vocabulary

    img = root / "images"
    if not img.is_dir():
        img.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(pool):
            small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))).save(img / f"{i}.jpg", quality=85)
    vocab = concept_vocabulary()
    vocab.save(root / "vocab.json")
    tags = [t for label in range(len(vocab)) for t in vocab.hashtags_of(label)[:1]]
    path = root / f"tags-{n}.jsonl"
    if not path.is_file():
        rng = np.random.default_rng(seed + 1)
        with open(path, "w") as f:
            k = rng.integers(1, 4, n)
            pick = rng.integers(0, len(tags), (n, 3))
            for i in range(n):
                f.write(json.dumps({"image": f"{i % pool}.jpg", "tags": [tags[j] for j in pick[i, :k[i]]]}) + "\n")
    return img, path, root / "vocab.json"


def _baseline_tree(tmp: Path) -> Path | None:
    dst = tmp / "before"
    if not dst.is_dir():
        dst.mkdir()
        arch = subprocess.run(["git", "archive", BASELINE_COMMIT, "wslfast"], cwd=ROOT, capture_output=True)
        if arch.returncode != 0:
            return None
        subprocess.run(["tar", "-x", "-C", str(dst)], input=arch.stdout, check=True)
    return dst


def bench_build(args, tmp: Path) -> list[dict]:
    recs = []
    for n in args.records:
        img, tags, vocab = make_corpus(tmp, n, args.pool)
        impls = [i for i in args.impls if not (i == "before" and n > args.before_max)
                 and not (i == "wslfast-ray" and n > args.ray_max)]
        for impl in impls:
            out = tmp / f"out-{impl}-{n}"
            cmd = [sys.executable, "-m", "wslfast.data", "shards", "--images", str(img), "--tags", str(tags),
                   "--vocab", str(vocab), "--out", str(out), "--shard-size", "1000", "--sampling", "sqrt",
                   "--label-noise", "0.1", "--seed", "0"]
            env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
            env.pop("RAY_ADDRESS", None)
            workers = 1 if impl == "wslfast-local" else args.workers
            cmd += ["--workers", str(workers)] + (["--engine", "ray"] if impl == "wslfast-ray" else [])
            if impl == "before":
                tree = _baseline_tree(tmp)
                if tree is None:
                    print(f"skip before: commit {BASELINE_COMMIT} not in this clone")
                    continue
                env["PYTHONPATH"] = str(tree)
            else:
                env["PYTHONPATH"] = str(ROOT)
            subprocess.run(["rm", "-rf", str(out)])
            secs, peak, log = run_measured(cmd, env, tmp)
            manifest = json.loads((out / "manifest.json").read_text())
            rate = n / secs
            print(f"build {impl:14s} records={n:>8d} workers={workers} {secs:8.1f} s {rate:8.0f} rec/s "
                  f"peak(sum PSS)={peak / 2**20:7.0f} MiB shards={len(manifest['shards'])}", flush=True)
            r = record("data_shards", {"records": n, "pool": args.pool, "workers": workers, "shard_size": 1000,
                                       "sampling": "sqrt", "label_noise": 0.1}, impl, "build",
                       (secs * 1e3,) * 3, peak, _CPU, records_per_s=round(rate, 1),
                       num_samples=manifest["num_samples"], peak_mem="sum of PSS over the process tree",
                       cpus=os.cpu_count())
            recs.append(r)
            append_results([r], args.out, _CPU)
            subprocess.run(["rm", "-rf", str(out)])
    return recs


# ---- images: check + pHash + write on real-size photos ---------------------------------------------------------
def _queries(rng, ref, q):
    out = rng.integers(0, 2**64 - 1, size=q, dtype=np.uint64, endpoint=True)
    k = q // 100  # 1% near copies (up to 8 bits flipped)
    masks = np.array([sum(1 << int(b) for b in rng.choice(64, size=int(f), replace=False))
                      for f in rng.integers(0, 9, k)], dtype=np.uint64)
    out[:k] = ref[rng.integers(0, ref.size, k)] ^ masks
    return out


def bench_dedup(args) -> list[dict]:
    from wslfast.data.build import dedup

    recs = []
    rng = np.random.default_rng(0)
    for n_ref in args.dedup_refs:
        ref = rng.integers(0, 2**64 - 1, size=n_ref, dtype=np.uint64, endpoint=True)
        q = _queries(rng, ref, args.dedup_queries)
        t0 = time.perf_counter()
        index = dedup.HashIndex(ref, 10)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = index.contains_near(q)
        full_s = time.perf_counter() - t0
        results = {"wslfast-hashindex": (q.size / full_s, q.size,
                                         {"build_s": round(build_s, 3), "substrings": index.subs,
                                          "lookup": "c++" if dedup._lookup_extension() else "numpy"})}
        sample = q[: max(1000, min(q.size, args.brute_sample * 100_000 // n_ref))]
        t0 = time.perf_counter()
        brute = dedup.near_duplicates_brute(sample, ref, 10)
        results["brute"] = (sample.size / (time.perf_counter() - t0), sample.size, {})
        assert (brute == hits[:sample.size]).all(), "HashIndex disagrees with brute force"
        try:
            import faiss

            faiss.omp_set_num_threads(1)
            codes = ref.view(np.uint8).reshape(-1, 8)
            for name, idx in (("faiss-flat", faiss.IndexBinaryFlat(64)),
                              ("faiss-multihash", faiss.IndexBinaryMultiHash(64, 4, 16))):
                if name == "faiss-multihash":
                    idx.nflip = 2  # exact at radius 10 (pigeonhole over 4 x 16 bits)
                idx.add(codes)
                s = q[: max(1000, sample.size // (1 if name == "faiss-flat" else 4))]
                t0 = time.perf_counter()
                lims, _, _ = idx.range_search(s.view(np.uint8).reshape(-1, 8), 11)  # faiss: distance < 11
                results[name] = (s.size / (time.perf_counter() - t0), s.size, {})
                assert ((np.diff(lims) > 0) == hits[:s.size]).all(), f"{name} disagrees"
        except ImportError:
            print("faiss not installed: its peers skipped")
        for impl, (qps, measured, extra) in results.items():
            print(f"dedup {impl:18s} refs={n_ref:>8d} queries={q.size} {qps:12.0f} q/s "
                  f"(timed on {measured} queries){'' if measured == q.size else ', extrapolated'}", flush=True)
            r = record("data_dedup", {"queries": int(q.size), "refs": int(n_ref), "radius": 10}, impl, "query",
                       (q.size / qps * 1e3,) * 3, None, _CPU, queries_per_s=round(qps, 1),
                       sampled_queries=int(measured) if measured != q.size else None, threads=1, **extra)
            recs.append(r)
            append_results([r], args.out, _CPU)
    return recs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=lambda s: [int(float(x)) for x in s.split(",")], default=[10**4, 10**5, 10**6])
    ap.add_argument("--impls", type=lambda s: s.split(","),
                    default=["wslfast-local", "wslfast-pool", "wslfast-ray", "before"])
    ap.add_argument("--before-max", type=int, default=10**5, help="largest N for the old pipeline")
    ap.add_argument("--ray-max", type=lambda s: int(float(s)), default=10**6, help="largest N for Ray")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pool", type=int, default=5000)
    ap.add_argument("--dedup-queries", type=lambda s: int(float(s)), default=10**6)
    ap.add_argument("--dedup-refs", type=lambda s: [int(float(x)) for x in s.split(",")], default=[10**5, 10**6])
    ap.add_argument("--brute-sample", type=int, default=20000, help="all-pairs queries timed at 1e5 refs")
    ap.add_argument("--image-records", type=lambda s: [int(float(x)) for x in s.split(",")], default=[400, 120],
                    help="records checked per repeat at 640x480 and at 1600x1200")
    ap.add_argument("--image-repeats", type=int, default=5)
    ap.add_argument("--skip", type=lambda s: s.split(","), default=[],
                    help="comma-separated cases to leave out: build, dedup, images, web")
    ap.add_argument("--web-records", type=lambda s: [int(float(x)) for x in s.split(",")], default=[10**4, 10**5])
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as t:
        tmp = Path(args.dir or t)
        tmp.mkdir(parents=True, exist_ok=True)
        if "images" not in args.skip:
            bench_images(args, tmp)
        if "dedup" not in args.skip:
            bench_dedup(args)
        if "build" not in args.skip:
            bench_build(args, tmp)
        if "web" not in args.skip:
            bench_web(args, tmp)


if __name__ == "__main__":
    main()
