"""One sample's image, from its bytes to what a shard holds: read, check, pHash and re-encode, under one guard.

The build's first pass (passes.check_block) runs `BlockImages.check` on every record's image, so a sample
that could not be written is rejected before anything is written; the write pass then only copies bytes
that this pass has proven (`shard_bytes`). Nothing here raises for a bad sample: every failure, whatever
Pillow or a codec throws (OSError, NotImplementedError, struct.error, MemoryError, ...), is a skip reason
with a one-line message, counted in the manifest with the first few examples (`skip_examples`: input,
line, image, error; img2dataset's status / error_message).

In order, each step stopping at the first failure (reason in brackets):
1. Where: a path must stay under the images folder (no absolute path, no '..') [outside_root], and so must
   its real path, unless `follow_symlinks` [outside_root]; it must exist [missing] and be a regular file,
   which is stat'ed, never opened, before (no read from a FIFO, device or directory named .jpg)
   [not_regular]; it is then opened non-blocking and fstat'ed again (a file swapped in between). A
   `MemberRef` (bytes inside an input, e.g. a tar member) is read by one ranged read. Both are bounded by
   `max_bytes` [too_large]; an I/O error is [unreadable].
2. What: Pillow identifies it among `WEB_FORMATS` [not_image] (the formats of web photos; rarer parsers
   are not run on untrusted bytes at all, and EPS would start Ghostscript) and reads its header [corrupt].
3. How big: width x height from the header, BEFORE any pixel is allocated: above `max_pixels` [too_many_pixels].
4. Decode: the whole entropy-coded stream [corrupt: truncated or broken data]. A JPEG whose bytes go in as
   they are (mode RGB or L: nothing to convert) is decoded DCT-scaled and grey (dedup.draft_for_hash):
   libjpeg still reads every coefficient, so the decision is the full decode's (tested on cut, flipped,
   zeroed and progressive files) at 2-2.5x its speed on photos (bench_data.py's photo case). Everything
   else is decoded fully, because it is re-encoded.
5. Re-encode (not a plain RGB/L JPEG): format.encode_jpeg, 8-bit RGB from every mode (16-bit scaled,
   transparency over white), quality 95; a side above 65,535 or any encoder error [unwritable].
6. pHash (when deduplicating) of the scaled decode, or of the re-encoded image's RGB.

Re-encoded JPEGs are KEPT, not redone: each block appends them to its pack `.work/enc-FFFF-BBBBBB.bin`
(offset and size in the block's rows), and the write pass copies them with the same ranged read as a tar
member. CPU over disk: a re-encode costs a full decode plus an encode (~10-30 ms for a 1,600x1,200 PNG),
paid once here instead of again for every resampled copy in the write pass, and the shard bytes cannot
drift if Pillow differs between the machines of a cluster; the disk it takes is the re-encoded samples'
JPEG size (web corpora: a few % of the images are not JPEG), in `.work`, reused by re-runs.

Time: one scaled decode per kept JPEG, one full decode + encode per other image; memory: one image, its
decoded pixels bounded by `max_pixels` (~4 bytes each at most for 8-bit) and its bytes by `max_bytes`.
Decode time is bounded by the same two limits.
"""
from __future__ import annotations

import io
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import format as _format
from ..sources import MemberRef, read_member
from .dedup import draft_for_hash, phash

__all__ = ["ImagePolicy", "Checked", "BlockImages", "check_image", "shard_bytes", "reference_hash",
           "write_spec", "parse_spec", "display_name", "merge_examples", "manifest_examples", "SKIPS",
           "WEB_FORMATS", "DEFAULT_MAX_PIXELS", "EXAMPLES"]

# Above every camera sensor photos come from (61 MP: 9,504 x 6,336; 50-MP phone modes 8,160 x 6,120),
# below the bombs seen in the wild (13,000^2 PNG of 493 KB, 169-MP JPEG). One decoded image then stays
# under 256 MB in the check (RGBA) and 192 MB (RGB) for a loader; lower it for loaders with small buffers.
DEFAULT_MAX_PIXELS = 64_000_000
# The formats of web photos (JPEG includes MPO, camera multi-picture JPEGs).
WEB_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "PPM", "ICO")
# The guard's reasons besides the ones passes.SKIP_KINDS had (missing, not_image, corrupt).
SKIPS = ("not_regular", "outside_root", "too_large", "too_many_pixels", "unreadable", "unwritable")
EXAMPLES = 5  # per reason in the manifest
CHECK_VERSION = 2  # bump when a decision or hash changes: cached results of older checks are redone
_MSG = 200  # characters of an error kept for the manifest


@dataclass(frozen=True)
class ImagePolicy:
    """What the guard accepts. max_bytes: 4 bytes a pixel of the limit + 1 MiB (any 8-bit image within the
    pixel limit, even uncompressed RGBA), so one limit bounds both memory and time."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    follow_symlinks: bool = False
    formats: tuple | None = WEB_FORMATS  # None: every format Pillow opens (tests of the guard itself)

    @property
    def max_bytes(self) -> int:
        return 4 * self.max_pixels + (1 << 20)

    def key(self) -> str:
        """What the cached decisions depend on, for the block's cache digest."""
        return json.dumps([CHECK_VERSION, self.max_pixels, self.follow_symlinks, self.formats])


@dataclass
class Checked:
    """One image's result: reason None = usable. jpeg: the re-encoded bytes (None: the original bytes go
    in as they are); phash: int when asked for; error: one line, for the manifest."""
    reason: str | None
    error: str = ""
    jpeg: bytes | None = None
    phash: int | None = None


class _Skip(Exception):
    def __init__(self, reason: str, error):
        super().__init__(reason)
        self.reason = reason
        self.error = _one_line(error)


def _one_line(e) -> str:
    text = e if isinstance(e, str) else (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    text = " ".join(text.split())
    return text if len(text) <= _MSG else text[:_MSG - 3] + "..."


# ---- step 1: where the bytes are -----------------------------------------------------------------------------
def _open_path(root: str | None, rel: str, policy: ImagePolicy):
    """A binary file object of a regular file (see the module docstring, step 1). root None: rel is a path
    as it is (reference folders), with no containment check."""
    if root is None:
        path = rel
    else:
        parts = rel.replace("\\", "/").split("/")
        if not rel or "\0" in rel or os.path.isabs(rel) or ".." in parts:
            raise _Skip("outside_root", "the path leaves the images folder")
        path = os.path.join(root, rel)
        if not policy.follow_symlinks:
            real, top = os.path.realpath(path), os.path.realpath(root)
            if os.path.commonpath([real, top]) != top:
                raise _Skip("outside_root", f"a symlink leads outside the images folder, to {real} "
                                            f"(--follow-symlinks allows it)")
    try:
        st = os.stat(path)  # never open what is not a regular file: a FIFO would block, a device act
    except FileNotFoundError:
        raise _Skip("missing", "no such file") from None
    except (OSError, ValueError) as e:
        raise _Skip("unreadable", e) from None
    _check_regular(st, policy)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _Skip("missing", "no such file") from None
    except OSError as e:
        raise _Skip("unreadable", e) from None
    try:
        _check_regular(os.fstat(fd), policy)  # what was opened, in case it was swapped after the stat
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb", buffering=1 << 16)


def _check_regular(st: os.stat_result, policy: ImagePolicy) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise _Skip("not_regular", f"{kind}, not read")
    if st.st_size > policy.max_bytes:
        raise _Skip("too_large", f"{st.st_size:,} bytes, above the limit of {policy.max_bytes:,}")


def _open_member(ref: MemberRef, policy: ImagePolicy):
    if ref.size > policy.max_bytes:
        raise _Skip("too_large", f"{ref.size:,} bytes, above the limit of {policy.max_bytes:,}")
    try:
        return io.BytesIO(read_member(ref))
    except FileNotFoundError:
        raise _Skip("missing", f"{ref.url}: no such file") from None
    except Exception as e:  # noqa: BLE001 - local or remote (fsspec) reads raise many kinds
        raise _Skip("unreadable", e) from None


# ---- steps 2-6: what the bytes are ---------------------------------------------------------------------------
def _inspect(fp, policy: ImagePolicy, want_hash: bool) -> Checked:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings (EXIF, bombs, truncated chunks): decided here
        try:
            im = Image.open(fp, formats=policy.formats)
        except Image.UnidentifiedImageError:
            formats = "a format Pillow reads" if policy.formats is None else ", ".join(policy.formats)
            raise _Skip("not_image", f"not {formats}") from None
        except Image.DecompressionBombError as e:
            raise _Skip("too_many_pixels", e) from None
        except Exception as e:  # noqa: BLE001 - a plugin's header parser may raise anything
            raise _Skip("corrupt", e) from None
        with im:
            return _decode(im, policy, want_hash)


def _decode(im: Image.Image, policy: ImagePolicy, want_hash: bool) -> Checked:
    try:
        w, h = im.size
        fmt, mode = im.format, im.mode
    except Exception as e:  # noqa: BLE001
        raise _Skip("corrupt", e) from None
    if w < 1 or h < 1:
        raise _Skip("corrupt", f"{w} x {h} pixels")
    if w * h > policy.max_pixels:
        raise _Skip("too_many_pixels", f"{w:,} x {h:,} pixels, above --max-pixels {policy.max_pixels:,}")
    as_is = fmt == "JPEG" and mode in ("RGB", "L")
    if not as_is and max(w, h) > _format.JPEG_MAX_SIDE:
        raise _Skip("unwritable", f"{w:,} x {h:,} pixels: a JPEG side is at most {_format.JPEG_MAX_SIDE:,}")
    try:
        if as_is:
            draft_for_hash(im)
        im.load()
    except Image.DecompressionBombError as e:
        raise _Skip("too_many_pixels", e) from None
    except Exception as e:  # noqa: BLE001 - truncated or broken data, or any decoder's own error
        raise _Skip("corrupt", e) from None
    if as_is:
        return Checked(None, phash=_hash(im) if want_hash else None)
    try:
        rgb = _format.to_rgb(im)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=_format.JPEG_QUALITY)
    except Exception as e:  # noqa: BLE001 - a mode without conversion, an encoder limit
        raise _Skip("unwritable", e) from None
    return Checked(None, jpeg=buf.getvalue(), phash=_hash(rgb) if want_hash else None)


def _hash(im: Image.Image) -> int:
    try:
        return phash(im)
    except Exception as e:  # noqa: BLE001
        raise _Skip("corrupt", e) from None


def check_image(root: str | None, image, policy: ImagePolicy = ImagePolicy(), want_hash: bool = False) -> Checked:
    """The guard (module docstring) over one image: a path relative to root (root None: a path as it is)
    or a MemberRef. Never raises for anything the sample holds."""
    try:
        if image is None:
            raise _Skip("missing", "the record names no image")
        fp = _open_member(image, policy) if isinstance(image, MemberRef) else _open_path(root, image, policy)
        with fp:
            return _inspect(fp, policy, want_hash)
    except _Skip as s:
        return Checked(s.reason, s.error)
    except Exception as e:  # noqa: BLE001 - the last line of the guard: a skip, never a traceback
        return Checked("corrupt", _one_line(e))


def reference_hash(path: str) -> int | None:
    """pHash of a reference image (dedup's folders; symlinks followed), None when the guard skips it."""
    r = check_image(None, str(path), ImagePolicy(follow_symlinks=True), want_hash=True)
    return None if r.reason else r.phash


# ---- the write pass: where a sample's bytes are ----------------------------------------------------------------
def write_spec(image, pack: str | None, stored) -> str:
    """The write pass's column for a sample's bytes (a str, for any engine): the record's image path, or
    NUL + JSON of a byte range (a MemberRef: the record's own, or its re-encoded JPEG in the block's pack).
    No path holds a NUL, so the two never collide."""
    if stored is not None:
        return "\0" + json.dumps([pack, int(stored[0]), int(stored[1]), display_name(image)])
    if isinstance(image, list):
        return "\0" + json.dumps(image)
    return image


def parse_spec(spec: str):
    """write_spec's column back: a path (str) or a MemberRef."""
    return MemberRef.from_list(json.loads(spec[1:])) if spec.startswith("\0") else spec


def shard_bytes(src, reencode: bool) -> bytes:
    """write_shard's `read` in the build: a path's bytes (format.jpeg_bytes), or a byte range's. The bytes
    were proven in the check pass, so nothing is decoded or re-encoded here."""
    if isinstance(src, MemberRef):
        return read_member(src)
    return _format.jpeg_bytes(src, reencode)


def display_name(image) -> str:
    """How a record's image is named in a sample's .json and in messages: its path, or url:member."""
    if isinstance(image, MemberRef):
        image = image.to_list()
    return f"{image[0]}:{image[3]}" if isinstance(image, list) else str(image)


# ---- one block's images: cache, pack, examples -----------------------------------------------------------------
def _stat_key(root: str, image) -> list[int] | None:
    """What must not change for a cached result to stand: [size, mtime_ns] of the file (of the input, for a
    member); a remote member is identified by its reference alone."""
    if isinstance(image, MemberRef):
        if "://" in image.url and not image.url.startswith("file://"):
            return [image.size, -1]
        path = image.url.removeprefix("file://")
    elif isinstance(image, str) and "\0" not in image:
        path = os.path.join(root, image)
    else:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class BlockImages:
    """The image part of check_block for one block (the block's records in order): `check(n, image)` runs
    the guard or reuses the block's cached row (same image, size and mtime, and the same policy through the
    cache digest); re-encoded JPEGs go to the block's pack, rewritten only when something in the block was
    checked again (the rows before the first fresh re-encode keep their offsets: the same records in the
    same order, or the cache digest would differ); `finish()` returns the rows to cache. Memory: one image."""

    def __init__(self, root, work_dir, bid: str, policy: ImagePolicy, want_hash: bool, old_rows: dict):
        self.root = None if root is None else str(root)  # None: the source's images are all tar members
        self.policy, self.want_hash, self.old = policy, want_hash, old_rows
        self.pack = Path(work_dir) / f"enc-{bid}.bin"
        self.pack_name = str(self.pack)
        try:
            self._old_size = self.pack.stat().st_size
        except OSError:
            self._old_size = 0
        self.rows: dict = {}
        self.examples: dict = {}  # reason -> [[line, image, error], ...] (the block's first EXAMPLES)
        self.changed = False
        self._pos = 0  # end of the pack so far
        self._tmp = None  # the new pack, opened at the first fresh re-encode
        self._src = None  # the old pack, while its bytes are copied into the new one

    def check(self, n: int, image):
        """(reason or None, the image as JSON, stored [offset, size] in the pack or None, stat key, phash)."""
        key = image.to_list() if isinstance(image, MemberRef) else image
        st = _stat_key(self.root, image)
        hit = self.old.get(str(n))
        if (hit and hit[0] == key and st is not None and hit[1] == st and (hit[4] is not None or not self.want_hash)
                and (hit[3] is None or (hit[3][0] == self._pos and self._pos + hit[3][1] <= self._old_size))):
            reason, stored, ph, error = hit[2], hit[3], hit[4], hit[5]
            if stored is not None:
                if self._tmp is not None:
                    self._copy_old(stored[0], stored[1])
                self._pos += stored[1]
        else:
            r = check_image(self.root, image, self.policy, self.want_hash)
            reason, ph, error, stored = r.reason, r.phash, r.error, None
            if r.jpeg is not None:
                stored = [self._pos, len(r.jpeg)]
                self._append(r.jpeg)
            self.changed = True
        self.rows[str(n)] = [key, st, reason, stored, ph, error]
        if reason:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < EXAMPLES:
                ex.append([n, display_name(key), error])
        return reason, key, stored, st, ph

    def _append(self, data: bytes) -> None:
        if self._tmp is None:
            self._tmp = open(self.pack.with_name(f".{self.pack.name}.{os.getpid()}.tmp"), "wb")
            self._copy_old(0, self._pos)  # the rows so far kept their offsets
        self._tmp.write(data)
        self._pos += len(data)

    def _copy_old(self, offset: int, size: int) -> None:
        if not size:
            return
        if self._src is None:
            self._src = open(self.pack, "rb")
        self._src.seek(offset)
        while size:
            chunk = self._src.read(min(size, 1 << 20))
            if not chunk:
                raise OSError(f"{self.pack}: shorter than its rows say (changed during the build?)")
            self._tmp.write(chunk)
            size -= len(chunk)

    def finish(self) -> tuple[dict, bool]:
        """(rows to cache, whether anything was checked again); the pack is in place."""
        if self._src is not None:
            self._src.close()
        if self._tmp is not None:
            self._tmp.close()
            os.replace(self._tmp.name, self.pack)
        elif self._pos == 0:
            self.pack.unlink(missing_ok=True)
        return self.rows, self.changed


def merge_examples(acc: dict, block_examples: dict, file_no: int, input_path: str) -> None:
    """Add a block's examples to the driver's: per reason the first EXAMPLES by (input, line), whatever the
    order the blocks arrive in (so every engine writes the same manifest)."""
    for reason, rows in block_examples.items():
        ex = acc.setdefault(reason, [])
        ex.extend((file_no, int(n), {"input": input_path, "line": int(n), "image": image, "error": error})
                  for n, image, error in rows)
        ex.sort(key=lambda e: e[:2])
        del ex[EXAMPLES:]


def manifest_examples(acc: dict) -> dict:
    """The manifest's `skip_examples`: reason -> [{input, line, image, error}, ...]."""
    return {reason: [e[2] for e in rows] for reason, rows in sorted(acc.items())}
