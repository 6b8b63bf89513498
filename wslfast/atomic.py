"""Files that are whole or absent: written to a temporary name beside the target, flushed to disk, renamed
over it, and the rename itself flushed. A reader (or a restart after a kill or a power cut) sees the old
file or the whole new one, never a part. Used for shard manifests, checkpoints and stored features.

    with atomic_write("out/manifest.json", "w") as f:
        f.write(text)
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms and filesystems: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None, suffix: str = ""):
    """A file object on a temporary name beside `path` (`.<name>.<pid>.tmp<suffix>`; suffix for writers
    that insist on an extension). On a clean exit it is fsynced and renamed over `path`, and the folder
    fsynced; on an exception it is removed and `path` is untouched."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{suffix}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else (encoding or "utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(folder or ".")
