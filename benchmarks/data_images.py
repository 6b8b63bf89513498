"""bench_data.py's photo case: check + pHash + write of real-size photos, before (the check and write of
commit 18f214a, copied here verbatim) and now (build/images.py), beside a plain full decode of the same
files, in one process (see bench_data.py's docstring)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import append_results, record, time_ms

_CPU = torch.device("cpu")


_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field",
           "immunohistochemistry", "retina")


def make_photos(root: Path, size: tuple[int, int], crops: int = 4) -> list[str]:
    """JPEGs of scikit-image's bundled photos (no download), `crops` crops each (90%, shifted) resized to
    `size` and saved at quality 90, like photos on the web. Returns their names under root."""
    from PIL import Image
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    names = []
    for name in _PHOTOS:
        arr = getattr(data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr
        im = Image.fromarray(arr).convert("RGB")
        w, h = im.size
        for c in range(crops):
            dx, dy = int(w * 0.1 * c / max(1, crops - 1)), int(h * 0.1 * (crops - 1 - c) / max(1, crops - 1))
            out = root / f"{name}-{c}.jpg"
            if not out.is_file():
                im.crop((dx, dy, dx + int(w * 0.9), dy + int(h * 0.9))).resize(size, Image.Resampling.LANCZOS).save(
                    out, quality=90)
            names.append(out.name)
    return names


def _before_phash(image):
    """dedup.phash of commit 18f214a (verbatim)."""
    from PIL import Image

    from wslfast.data.build.dedup import _DCT, _K, _N

    _BITS = (np.uint64(1) << np.arange(_K * _K, dtype=np.uint64))
    grey = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:_K, :_K].ravel()
    bits = low > np.median(low[1:])
    return int(np.bitwise_or.reduce(_BITS[bits])) if bits.any() else 0


def _before_check_image(path: str, want_hash: bool):
    """passes.check_image of commit 18f214a (verbatim): a full decode, the pHash of the full image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
            if im.width < 1 or im.height < 1:
                return "corrupt", False, 0
            return None, fmt != "JPEG" or im.mode not in ("RGB", "L"), _before_phash(im) if want_hash else 0
    except FileNotFoundError:
        return "missing", False, 0
    except Image.UnidentifiedImageError:
        return "not_image", False, 0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "corrupt", False, 0


def _before_jpeg_bytes(path: str, reencode: bool) -> bytes:
    """format.jpeg_bytes of commit 18f214a (verbatim)."""
    import io

    from PIL import Image

    if not reencode:
        return Path(path).read_bytes()
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()


def bench_images(args, tmp: Path) -> list[dict]:
    from PIL import Image

    from wslfast.data.build import images as guard
    from wslfast.data.format import write_shard

    recs = []
    for size, n in ((640, 480), args.image_records[0]), ((1600, 1200), args.image_records[1]):
        root = tmp / f"photos-{size[0]}x{size[1]}"
        files = make_photos(root, size)
        names = [files[i % len(files)] for i in range(n)]
        out = tmp / "shard-out"
        out.mkdir(exist_ok=True)
        info = {"tags": ["#x"], "labels": [0]}

        def plain():
            for name in names:
                with Image.open(root / name) as im:
                    im.load()

        def before(want_hash):
            samples = []
            for i, name in enumerate(names):
                reason, reenc, _ = _before_check_image(str(root / name), want_hash)
                assert reason is None
                samples.append((f"{i:06d}", name, reenc, [0], info))
            write_shard(out, "before", samples, root, read=_before_jpeg_bytes)

        policy = guard.ImagePolicy()

        def after(want_hash):
            samples = []
            for i, name in enumerate(names):
                r = guard.check_image(str(root), name, policy, want_hash=want_hash)
                assert r.reason is None and r.jpeg is None
                samples.append((f"{i:06d}", name, False, [0], info))
            write_shard(out, "after", samples, root, read=guard.shard_bytes)

        results = {}  # (impl, mode) -> (times, records/s); without pHash: a build with no --dedup-against
        for impl, mode, fn in (("plain-decode", "decode", plain),
                               ("before", "check+phash+write", lambda: before(True)),
                               ("wslfast", "check+phash+write", lambda: after(True)),
                               ("before", "check+write", lambda: before(False)),
                               ("wslfast", "check+write", lambda: after(False))):
            times = time_ms(fn, _CPU, warmup=1, repeats=args.image_repeats)
            results[impl, mode] = (times, n / (times[1] / 1e3))
        dist = []
        for name in files:  # the pHash of each file, full decode (before) vs scaled decode (now)
            with Image.open(root / name) as im:
                im.load()
                full = _before_phash(im)
            dist.append(bin(full ^ guard.check_image(str(root), name, policy, True).phash).count("1"))
        for (impl, mode), (times, rate) in results.items():
            extra = {}
            if impl == "wslfast":
                extra = {"speedup_vs_before": round(rate / results["before", mode][1], 2),
                         "speedup_vs_plain_decode": round(rate / results["plain-decode", "decode"][1], 2)}
                if mode == "check+phash+write":
                    extra["phash_hamming_vs_before"] = sorted(dist)
            print(f"images {impl:13s} {mode:18s} {size[0]}x{size[1]} records={n} {rate:8.1f} records/s/core"
                  + (f"  x{extra['speedup_vs_before']} vs before, x{extra['speedup_vs_plain_decode']} vs plain decode"
                     if extra else "")
                  + (f", pHash Hamming vs before {sorted(dist)}" if "phash_hamming_vs_before" in extra else ""),
                  flush=True)
            r = record("data_check_write", {"size": f"{size[0]}x{size[1]}", "records": n, "files": len(files),
                                            "jpeg_quality": 90}, impl, mode, times, None, _CPU,
                       records_per_s=round(rate, 1), threads=1, **extra)
            recs.append(r)
            append_results([r], args.out, _CPU)
    return recs
