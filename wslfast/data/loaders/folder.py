"""ImageFolder trees for the loaders: root/<class>/**/<image>, listed like torchvision, every file decoded
once up front (DALI raises on undecodable data and cannot skip a sample inside its pipeline).

    listing = list_image_folder("imagenet/train")                        # FolderListing: files, labels, classes
    listing = list_image_folder(root, part=(rank, world), gather=all_gather, check_cache=run_dir / "x.json")

The decode check is the costly step (one full decode per file), so it can be shared and kept: under
torchrun each rank checks every world-th file and `gather` (an all-gather the caller passes in: loaders
import no process group) merges what they found; `check_cache` keeps the result in a small JSON file (the
skipped files and a fingerprint of every file's name, size and mtime), so a resumed run that finds the same
files skips the decode pass.

Time: one full decode per file (threads; PIL releases the GIL), split over the ranks; a stat per file when a
cache is given. Memory: the file list (about 100-200 bytes a file: ~0.2 GB for ImageNet-1k's 1.28M).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import DataError
from ..format import IMAGE_EXTENSIONS

__all__ = ["image_folder", "list_image_folder", "FolderListing", "DALI_FORMATS"]

# What DALI's image decoders read (no GIF); anything else in an ImageFolder is skipped and counted.
DALI_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"}
SHOW_SKIPPED = 5  # how many skipped paths a loader names
_CACHE_VERSION = 1


@dataclass
class FolderListing:
    """An ImageFolder tree, listed and checked: what make_loader takes in place of the folder's path."""
    root: str
    files: list          # paths of the images that decode, class by class, sorted
    labels: list         # their class indices
    classes: list        # class folder names, sorted
    skipped: int = 0     # files that DALI cannot use (named on stderr when listed)

    def __len__(self) -> int:
        return len(self.files)


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


def _candidates(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
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
    return classes, candidates


def _fingerprint(root: Path, paths: list[str]) -> str:
    """SHA-256 over every file's path (relative to root), size and mtime: equal means the same files."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.relpath(p, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.relpath(p, root)}\tmissing\n".encode())
    return h.hexdigest()


def _read_cache(path, fingerprint: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") == _CACHE_VERSION and data.get("fingerprint") == fingerprint:
            return {str(p): str(r) for p, r in data["skipped"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_cache(path, fingerprint: str, bad: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": _CACHE_VERSION, "fingerprint": fingerprint, "skipped": sorted(bad.items())}, f)
    os.replace(tmp, path)


def list_image_folder(root, validate: bool = True, workers: int = 0, part: tuple[int, int] = (0, 1),
                      gather: Callable[[object], list] | None = None, check_cache=None,
                      verbose: bool = True) -> FolderListing:
    """The ImageFolder tree root/<class>/**/<image>, sorted like torchvision. With validate, every file is
    decoded in full; files that fail are skipped, counted, and (verbose) the first few named on stderr.
    part=(rank, world): this process checks every world-th file; gather(obj) -> [obj of each rank] merges
    the ranks' findings (required when world > 1). check_cache: a JSON file that keeps the result (read when
    its fingerprint matches the files, else written); every rank may read it, the caller lets one write it
    (write happens on part rank 0 only)."""
    root = Path(root)
    classes, candidates = _candidates(root)
    rank, world = part
    if world > 1 and gather is None:
        raise ValueError("list_image_folder: part=(rank, world) with world > 1 needs gather")
    bad: dict[str, str] = {}
    if validate:
        paths = [p for p, _ in candidates]
        fingerprint = _fingerprint(root, paths) if check_cache else None
        cached = _read_cache(check_cache, fingerprint) if check_cache else None
        if cached is not None:
            bad = cached
        else:
            mine = paths[rank::world]
            with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
                reasons = list(pool.map(_decodes, mine, chunksize=64))
            found = {p: r for p, r in zip(mine, reasons) if r is not None}
            for other in (gather(found) if world > 1 else [found]):
                bad.update(other)
            if check_cache and rank == 0:
                _write_cache(check_cache, fingerprint, bad)
    files = [p for p, _ in candidates if p not in bad]
    labels = [c for p, c in candidates if p not in bad]
    in_order = [(p, bad[p]) for p, _ in candidates if p in bad]
    if bad and verbose:
        shown = "; ".join(f"{p}: {r}" for p, r in in_order[:SHOW_SKIPPED])
        more = f"; and {len(bad) - SHOW_SKIPPED} more" if len(bad) > SHOW_SKIPPED else ""
        print(f"{root}: skipped {len(bad)} of {len(candidates)} files that DALI cannot use ({shown}{more})",
              file=sys.stderr, flush=True)
    if not files:
        raise DataError(f"{root}: none of its {len(candidates)} image files decodes (first: {in_order[0][0]}: "
                        f"{in_order[0][1]})")
    return FolderListing(str(root), files, labels, classes, len(bad))


def image_folder(root, validate: bool = True, workers: int = 0) -> tuple[list[str], list[int], list[str], int]:
    """(files, labels, classes, skipped) of list_image_folder, for one process."""
    listing = list_image_folder(root, validate=validate, workers=workers)
    return listing.files, listing.labels, listing.classes, listing.skipped
