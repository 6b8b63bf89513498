"""How a build replaces a finished dataset: versioned shard folders, a manifest swapped in last, and a lock.

The --out folder of `write_shards`:

    manifest.json        the published manifest; its "shards_dir" names the current version (format.py)
    shards-<fp>/         a version: shard-NNNNNN.{tar,idx} + its own manifest.json: a whole dataset by itself
    .work/               the build's caches (decode checks, checked records, partition files)
    .build.lock          locked (fcntl.flock) by the build that writes into --out; says who that is

The scheme, atomic at every instant: a build writes its shards only into the folder of its own fingerprint
(fp: the settings and the checked records, see driver.py), never into the published one unless that IS its
fingerprint (a re-run, which rewrites only missing or damaged shards, with the same bytes, each renamed into
place whole). When every shard is whole it writes that folder's manifest, then replaces out/manifest.json
with one os.replace (atomic on POSIX file systems), and only then removes the other versions. Readers
resolve the current version through out/manifest.json (`format.list_shards`), so they see the old dataset
whole or the new one whole. A kill or an error before the swap leaves the published manifest and its
folder as they were; after it the new set is published, and whatever the removal did not finish goes at
the next build's start. Why not replace shards one by one with the manifest last: readers would meet a
mix of old and new shards in between, and a failed build would leave that mix behind.

Cost: disk for the old and the new dataset while a build with new inputs or settings runs. Durability:
the manifests are fsynced before the swap; shard data is left to the OS, so after a power cut the loaders'
check at open names a damaged shard, and a re-run (same fingerprint) rewrites it. Time: O(shards).

The lock refuses a second build into the same --out at once (one line naming the holder). The kernel
releases it when the holding process ends in any way, SIGKILL included; flock works across machines on
NFS (Linux emulates it with NFS byte-range locks) and on most cluster file systems.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from ...errors import RunFolderError
from ..format import MANIFEST, SHARDS_DIR, published_dir, write_manifest

__all__ = ["BuildLock", "stage_version", "publish", "VERSION_PREFIX", "LOCK_FILE"]

VERSION_PREFIX = "shards-"
LOCK_FILE = ".build.lock"
_VERSION = re.compile(re.escape(VERSION_PREFIX) + r"[0-9a-f]{16}")
_LEGACY_SHARD = re.compile(r"shard-\d{6,}\.(tar|idx)")  # shards written into --out itself (before versions)
_LEGACY_STATE = ".build-state.json"


class BuildLock:
    """`with BuildLock(out):` one build at a time in `out` (see the module docstring); RunFolderError
    naming the holder (pid, host, start time, command) when another process holds it."""

    def __init__(self, out):
        self.path = Path(out) / LOCK_FILE
        self._fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip() or "a process that has not said who"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{self.path.parent} is being written by another build ({holder}); wait for "
                                     f"it to end or choose another --out") from None
            raise RunFolderError(f"cannot lock {self.path} ({e.strerror or e}): this file system offers no locks; "
                                 f"choose an --out on one that does") from None
        command = " ".join(sys.argv)[:200] or "python"
        me = (f"pid {os.getpid()} on {socket.gethostname()}, since "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}: {command}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the lock (the file stays: removing it would race the next build)
            self._fd = None
        return False


def _current(out: Path) -> str | None:
    """The folder name of the published version, or None (nothing published, or the layout before versions)."""
    try:
        d = published_dir(out)
    except ValueError:  # a manifest naming no proper folder: nothing we may remove on its word
        return None
    return d.name if d != out else None


def stage_version(out, fingerprint: str) -> tuple[Path, bool]:
    """(the folder this build writes its shards into, whether it holds an earlier build of the same
    fingerprint whose whole shards are kept). Removes the versions neither published nor this build's
    (left by builds killed before or after their swap), and temporary files in the build's folder. A
    dataset of the layout before versions with this fingerprint lends its shards (hard links)."""
    out = Path(out)
    name = VERSION_PREFIX + fingerprint
    current = _current(out)
    if current is not None or not (out / MANIFEST).exists():
        for p in out.iterdir():
            if _VERSION.fullmatch(p.name) and p.name not in (current, name) and p.is_dir():
                shutil.rmtree(p)
    stage = out / name
    resume = stage.is_dir()
    stage.mkdir(exist_ok=True)
    if not resume:
        resume = _adopt_legacy(out, stage, fingerprint)
    for p in stage.glob(".*.tmp"):
        p.unlink()
    return stage, resume


def _adopt_legacy(out: Path, stage: Path, fingerprint: str) -> bool:
    """Hard-link the shards of a build of the same fingerprint written into out itself (the layout before
    versions) into the new version folder; True when some were. Links, never copies: write_shard replaces
    files by rename, so no linked file is ever written in place."""
    try:
        if json.loads((out / _LEGACY_STATE).read_text()).get("fingerprint") != fingerprint:
            return False
    except (OSError, ValueError, AttributeError):
        return False
    linked = False
    for p in out.iterdir():
        if _LEGACY_SHARD.fullmatch(p.name) and p.is_file():
            try:
                os.link(p, stage / p.name)
                linked = True
            except OSError:  # another file system, or no hard links: the shard is written again
                pass
    return linked


def publish(out, stage, manifest: dict) -> dict:
    """Publish the version folder `stage` (every shard whole): its own manifest, then out/manifest.json
    naming it (the swap), then the other versions and the files of the layout before versions removed.
    Returns the published manifest (the given one plus "shards_dir")."""
    out, stage = Path(out), Path(stage)
    write_manifest(stage, manifest)
    outer = {}
    for k, v in manifest.items():
        if k == "shards":
            outer[SHARDS_DIR] = stage.name
        outer[k] = v
    outer.setdefault(SHARDS_DIR, stage.name)
    write_manifest(out, outer)  # the swap: from here on the new dataset is the published one
    _remove_old(out, keep=stage.name)
    return outer


def _remove_old(out: Path, keep: str) -> None:
    for p in out.iterdir():
        if _VERSION.fullmatch(p.name) and p.name != keep and p.is_dir():
            shutil.rmtree(p)
        elif (_LEGACY_SHARD.fullmatch(p.name) or p.name == _LEGACY_STATE
              or (p.name.startswith(".shard-") and p.name.endswith(".tmp"))) and p.is_file():
            p.unlink()
