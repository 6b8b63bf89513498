"""One run per `--out` folder, so a run never deletes, overwrites or reports another run's checkpoints.

A run writes its config to <out>/run.json when it starts. A later command into the same folder continues
that run only if its config is the same one, up to the keys that may change between a run's legs (how
long it runs, how often it logs and checkpoints, threads, ...: RESUMABLE_KEYS). Anything else is refused
with one line naming what differs and what to do: a different config, `--resume none` over checkpoints
(a fresh start would prune the old run's files and resume from them later), or `--resume PATH` from
behind checkpoints already in the folder (two histories in one folder). Folders written before run.json
existed are judged by their newest checkpoint's config.
"""
from __future__ import annotations

import json
import os
import re
import time

from ..errors import RunFolderError
from .checkpoint import CheckpointError, find_resumable, list_checkpoints
from .distributed import broadcast_object

__all__ = ["RunFolderError", "RESUMABLE_KEYS", "RUN_FILE", "check_run_folder", "write_run_file", "config_diff",
           "claim_run_folder"]

RUN_FILE = "run.json"
# Keys a continued run may change: its length, its reporting, resources, how it resumes.
RESUMABLE_KEYS = frozenset({
    "steps", "total_images", "log_every", "checkpoint_every", "keep_last", "num_threads", "tensorboard",
    "resume", "out", "max_nonfinite", "config", "debug", "dist_timeout", "cache_dir", "device", "compile",
})


def _show(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def config_diff(theirs: dict, ours: dict, ignore=RESUMABLE_KEYS) -> list[str]:
    """['lr 0.1 there, 0.2 here', ...] over the keys both configs have, except ignored ones."""
    return [f"{k} {_show(theirs[k])} there, {_show(ours[k])} here" for k in ours
            if k in theirs and k not in ignore and theirs[k] != ours[k]]


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(dict(config), default=str))


def _step_of(path: str) -> int | None:
    m = re.search(r"ckpt_(\d+)\.pt$", os.path.basename(path))
    return int(m.group(1)) if m else None


def check_run_folder(out: str, config: dict, resume: str) -> None:
    """Raise RunFolderError unless a run with this config may write to out (see the module docstring)."""
    found = list_checkpoints(out)
    run_file = os.path.join(out, RUN_FILE)
    theirs = None
    if os.path.isfile(run_file):
        try:
            with open(run_file, encoding="utf-8") as f:
                theirs = json.load(f)["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunFolderError(f"{run_file} is unreadable ({e}); give a new --out, or remove the file if the "
                                 f"folder's checkpoints belong to this run") from None
    elif found:
        try:
            _, state = find_resumable(out)
        except CheckpointError:
            state = None
        theirs = (state or {}).get("config")
    if not found:
        return  # nothing to lose; a run.json without checkpoints is a run that never saved: start over
    newest = os.path.basename(found[-1][1])
    where = f"--out {out}"
    if resume in ("none", ""):
        raise RunFolderError(f"{where} already holds a run (newest {newest}); --resume none would mix a new "
                             f"run into it: give a new --out, or resume it with --resume auto")
    if theirs is not None:
        diff = config_diff(theirs, _jsonable(config))
        if diff:
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise RunFolderError(f"{where} holds a different run ({shown}): give a new --out for this one, or "
                                 f"the same settings to continue that run")
    if resume != "auto":
        step = _step_of(resume)
        if step is not None and found[-1][0] > step and os.path.abspath(resume) != os.path.abspath(found[-1][1]):
            raise RunFolderError(f"{where} holds checkpoints past step {step} (newest {newest}); resuming from "
                                 f"{resume} there would mix two histories: give a new --out")


def write_run_file(out: str, config: dict) -> str:
    """<out>/run.json: this run's config (written atomically when the run starts or continues)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RUN_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"config": _jsonable(config), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f, indent=1,
                  sort_keys=True)
    os.replace(tmp, path)
    return path


def claim_run_folder(info, out: str, config: dict, resume: str) -> None:
    """A run's first step: rank 0 checks out (check_run_folder) and writes run.json; if out is not this
    run's, rank 0 raises RunFolderError (one line) and every other rank exits quietly. info: DistInfo."""
    problem = None
    if info.is_main:
        try:
            check_run_folder(out, config, resume)
            write_run_file(out, config)
        except RunFolderError as e:
            problem = str(e)
    if broadcast_object(info, problem):
        raise RunFolderError(problem) if info.is_main else SystemExit(1)  # rank 0 alone says why
