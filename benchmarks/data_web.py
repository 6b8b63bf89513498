"""bench_data.py's web-dataset case: an img2dataset folder of N samples, its caption vocabulary, then its
shards in-process and with workers; records/s and the peak PSS of the process tree (see bench_data.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from common import append_results, record, run_measured

ROOT = Path(__file__).resolve().parents[1]
_CPU = torch.device("cpu")


def make_web_corpus(root: Path, n: int, pool: int, per_tar: int = 10_000, seed: int = 0) -> str:
    """An img2dataset folder of n rows (see the module docstring); returns the --webdataset pattern."""
    import io
    import math
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = root / f"web-{n}"
    shards = math.ceil(n / per_tar)
    pattern = f"{folder}/{{{0:05d}..{shards - 1:05d}}}.tar"
    if (folder / f"{shards - 1:05d}.parquet").is_file():
        return pattern
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(pool):
        buf = io.BytesIO()
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))).save(buf, format="JPEG", quality=85)
        jpegs.append(buf.getvalue())
    subjects = "dog cat horse man woman child car bike boat crane bass bat glass plate bridge tree".split()
    places = "beach street park river kitchen field lake mountain table garden forest city".split()
    oom = math.ceil(math.log10(per_tar))
    for s in range(shards):
        rows = []
        with tarfile.open(folder / f"{s:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for k in range(min(per_tar, n - s * per_tar)):
                i = s * per_tar + k
                key = f"{10**oom * s + k:0{5 + oom}d}"
                caption = f"a {subjects[i % 16]} near the {places[(i // 16) % 12]} with a {subjects[(i // 7) % 16]}"
                meta = {"url": f"https://example.com/{i}.jpg", "caption": caption, "key": key,
                        "status": "success", "error_message": None}
                if i % 100 == 99:
                    meta.update(status="failed_to_download", error_message="timeout")
                else:
                    for ext, data in (("jpg", jpegs[i % pool]), ("txt", caption.encode()),
                                      ("json", json.dumps(meta, indent=4).encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                rows.append(meta)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:05d}.parquet")
    return pattern


def bench_web(args, tmp: Path) -> list[dict]:
    recs = []
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    for n in args.web_records:
        pattern = make_web_corpus(tmp, n, args.pool)
        vocab = tmp / f"web-vocab-{n}.json"
        runs = [("wslfast-vocab", 1, [sys.executable, "-m", "wslfast.data", "vocab", "--webdataset", pattern,
                                      "--kind", "caption", "--top", "25000", "--min-count", "5", "--out", str(vocab)])]
        for impl, workers in (("wslfast-local", 1), ("wslfast-workers", args.workers)):
            out = tmp / f"web-out-{impl}-{n}"
            runs.append((impl, workers, [sys.executable, "-m", "wslfast.data", "shards", "--webdataset", pattern,
                                         "--vocab", str(vocab), "--out", str(out), "--shard-size", "1000",
                                         "--workers", str(workers), "--seed", "0"]))
        for impl, workers, cmd in runs:
            out = Path(cmd[cmd.index("--out") + 1])
            subprocess.run(["rm", "-rf", str(out)])
            secs, peak, _ = run_measured(cmd, env, tmp)
            extra = {}
            if impl != "wslfast-vocab":
                manifest = json.loads((out / "manifest.json").read_text())
                extra = dict(num_samples=manifest["num_samples"], skipped=sum(manifest["skipped"].values()))
                subprocess.run(["rm", "-rf", str(out)])
            rate = n / secs
            print(f"web   {impl:16s} records={n:>8d} workers={workers} {secs:8.1f} s {rate:8.0f} rec/s "
                  f"peak(sum PSS)={peak / 2**20:7.0f} MiB", flush=True)
            r = record("data_web", {"records": n, "per_tar": 10_000, "pool": args.pool, "workers": workers,
                                    "kind": "caption"}, impl, "vocab" if impl == "wslfast-vocab" else "build",
                       (secs * 1e3,) * 3, peak, _CPU, records_per_s=round(rate, 1),
                       peak_mem="sum of PSS over the process tree", cpus=os.cpu_count(), **extra)
            recs.append(r)
            append_results([r], args.out, _CPU)
    return recs
