"""Fixtures' expensive builds (a corpus, a short training run), done once per test run for every xdist worker."""
import os
import shutil
from pathlib import Path


def build_once(tmp_path_factory, name: str, build) -> Path:
    """A folder built once for the whole run, shared by every xdist worker: the first worker to ask runs
    build(folder) under a file lock while the others wait, then all read it (treat it as read-only). name
    keys the folder: give it every parameter the build depends on. A build that raised is retried by the
    next worker to ask, so each one reports the failure."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # <run's base temp>/popen-gwN per worker: the parent is the run's, shared by all
    folder, done = base / "shared" / name, base / "shared" / f"{name}.done"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / "shared" / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
