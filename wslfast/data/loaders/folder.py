"""ImageFolder trees for the loaders: root/<class>/**/<image>, listed like torchvision, every file decoded
once up front (DALI raises on undecodable data and cannot skip a sample inside its pipeline).

Time: one full decode per file (threads; PIL releases the GIL); memory: the file list.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...errors import DataError
from ..format import IMAGE_EXTENSIONS

__all__ = ["image_folder", "DALI_FORMATS"]

# What DALI's image decoders read (no GIF); anything else in an ImageFolder is skipped and counted.
DALI_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"}
SHOW_SKIPPED = 5  # how many skipped paths a loader names


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
