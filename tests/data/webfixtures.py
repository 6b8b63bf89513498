"""Fixtures for web-dataset inputs, written the way their tools write them.

- `write_img2dataset(folder, rows, ...)`: img2dataset's webdataset output, as its writer.py and downloader.py
  (rom1504/img2dataset) make it: per shard `{shard:05d}.tar` written by webdataset's TarWriter with, for
  each downloaded sample, `{key}.jpg`, `{key}.txt` (the caption) and `{key}.json` (json.dumps(meta,
  indent=4): the input columns url and caption, key, status, error_message, width, height, original_width,
  original_height); `{shard:05d}.parquet` with that meta for EVERY input row, failed downloads included
  (status failed_to_download / failed_to_resize with the error), written by a pyarrow ParquetWriter; and
  `{shard:05d}_stats.json`. The key is compute_key(): shard id * 10^oom_sample_per_shard + row index, zero
  padded to oom_shard_count + oom_sample_per_shard digits (5 + 4 for 10,000 samples a shard).
- `write_webdataset(path, samples)`: a plain webdataset tar by webdataset's TarWriter.
- `jpeg(i)`: real JPEG bytes of a small picture that differs with i.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
from PIL import Image

CAPTIONS = [
    "a brown dog running on the beach", "steel bridge over the river at sunset", "a cat sleeping on a sofa",
    "red car parked on the street", "a bowl of fresh fruit on a wooden table", "crane wading through the marsh",
    "man riding a bike on a mountain trail", "a glass vase with flowers on the table", "two horses in a field",
    "a plate of pasta with tomato sauce", "children playing football in the park", "a boat on a calm lake",
]


def jpeg(i: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(i)
    a = np.zeros((size, size, 3), np.uint8)
    a[...] = rng.integers(0, 255, 3)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(i: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (i % 255, 80, 160, 200)).save(buf, format="PNG")
    return buf.getvalue()


def compute_key(key: int, shard_id: int, oom_sample_per_shard: int, oom_shard_count: int) -> str:
    return f"{(10 ** oom_sample_per_shard) * shard_id + key:0{oom_sample_per_shard + oom_shard_count}d}"


def write_img2dataset(folder, rows, number_sample_per_shard: int = 10_000, oom_shard_count: int = 5,
                      fs=None, failed=(), parquet: bool = True) -> list[str]:
    """rows: (url, caption) in input order; `failed`: indices whose download fails. Returns the tar paths.
    fs: an fsspec filesystem (default local); folder: a path on it."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    fs = fs or fsspec.filesystem("file")
    fs.makedirs(str(folder), exist_ok=True)
    schema = pa.schema([pa.field("url", pa.string()), pa.field("caption", pa.string()),
                        pa.field("key", pa.string()), pa.field("status", pa.string()),
                        pa.field("error_message", pa.string()), pa.field("width", pa.int32()),
                        pa.field("height", pa.int32()), pa.field("original_width", pa.int32()),
                        pa.field("original_height", pa.int32())])
    oom_sample_per_shard = math.ceil(math.log10(number_sample_per_shard))
    tars = []
    failed = set(failed)
    for shard_id, start in enumerate(range(0, len(rows), number_sample_per_shard)):
        name = f"{shard_id:0{oom_shard_count}d}"
        tar_path = f"{folder}/{name}.tar"
        tars.append(tar_path)
        metas = []
        with fs.open(tar_path, "wb") as tar_fd:
            writer = TarWriter(tar_fd)
            for key, (url, caption) in enumerate(rows[start:start + number_sample_per_shard]):
                i = start + key
                str_key = compute_key(key, shard_id, oom_sample_per_shard, oom_shard_count)
                meta = {"url": url, "caption": caption, "key": str_key, "status": None, "error_message": None,
                        "width": None, "height": None, "original_width": None, "original_height": None}
                if i in failed:
                    meta["status"] = "failed_to_download"
                    meta["error_message"] = "HTTP Error 404: Not Found"
                    metas.append(meta)
                    continue
                img = jpeg(i)
                meta.update(status="success", width=32, height=32, original_width=32, original_height=32)
                writer.write({"__key__": str_key, "jpg": img, "txt": str(caption), "json": json.dumps(meta, indent=4)})
                metas.append(meta)
            writer.close()
        if parquet:
            with fs.open(f"{folder}/{name}.parquet", "wb") as fd:
                pw = pq.ParquetWriter(fd, schema)
                for b in range(0, len(metas), 100):  # img2dataset's BufferedParquetWriter: 100 rows a write
                    chunk = metas[b:b + 100]
                    pw.write_table(pa.Table.from_pydict({k: [m[k] for m in chunk] for k in schema.names}, schema))
                pw.close()
        with fs.open(f"{folder}/{name}_stats.json", "w") as fd:
            fd.write(json.dumps({"count": len(metas), "successes": sum(m["status"] == "success" for m in metas)}))
    return tars


def write_webdataset(path, samples) -> str:
    """samples: dicts as webdataset's TarWriter takes them ({"__key__": ..., "jpg": bytes, "txt": str, ...})."""
    from webdataset import TarWriter

    with open(path, "wb") as fd:
        writer = TarWriter(fd)
        for s in samples:
            writer.write(s)
        writer.close()
    return str(path)


def cc_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (url, caption) rows in the style of CC3M/CC12M."""
    rng = np.random.default_rng(seed)
    return [(f"https://example.com/img/{i}.jpg", CAPTIONS[int(rng.integers(len(CAPTIONS)))]) for i in range(n)]
