"""Shared set-up for the train/ script tests: one small synthetic corpus per session, command helpers, and
the scripts themselves as modules (their config classes and steps, called without running main)."""
import functools
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from tests.shared_build import build_once
from tests.engine.dist_launch import quiet_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "train", "pretrain.py")
TRANSFER = os.path.join(ROOT, "train", "transfer.py")


@functools.lru_cache(maxsize=None)
def load_script(path):
    """train/<name>.py imported as the module train_<name> (its main() does not run)."""
    name = "train_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and the help-text reader look the module up by name
    spec.loader.exec_module(module)
    return module


SMALL_RUN = ["--synthetic-images", "48", "--synthetic-classes", "3", "--image-size", "32", "--batch-size", "8",
             "--log-every", "1", "--num-threads", "1", "--tensorboard", "false", "--device", "cpu",
             "--warmup-images", "0", "--lr", "0.02"]


@pytest.fixture(scope="session")
def small_args(tmp_path_factory):
    """Arguments for a pretraining run that takes seconds: tiny corpus, 32 px images, batch 8, CPU. The corpus
    (and a 2-step run, see small_checkpoint) is built once for all xdist workers, so the tests time only
    training; the cache is read-only from then on (a demo corpus, once built, is only read)."""
    def build(cache):
        proc = run_script(PRETRAIN, ["--cache-dir", cache, *SMALL_RUN, "--out", cache / "warmup-run", "--steps", "2"])
        assert proc.returncode == 0, proc.stdout + proc.stderr

    cache = build_once(tmp_path_factory, "train-cache", build)
    return ["--cache-dir", str(cache), *SMALL_RUN]


@pytest.fixture(scope="session")
def small_checkpoint(small_args, tmp_path_factory):
    """The checkpoint of the small_args 2-step run (weights moved, not a trained model), in a run folder of
    this worker's own: transfer.py writes its default run folders beside the checkpoint."""
    from wslfast.engine import list_checkpoints

    cache = small_args[small_args.index("--cache-dir") + 1]
    run = tmp_path_factory.mktemp("small-run") / "warmup-run"
    shutil.copytree(os.path.join(cache, "warmup-run"), run)
    return list_checkpoints(str(run))[-1][1]


def run_script(script, args, timeout=240, **kwargs):
    return subprocess.run([sys.executable, script, *map(str, args)], env=quiet_env(), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kwargs)


def start_script(script, args):
    return subprocess.Popen([sys.executable, script, *map(str, args)], env=quiet_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.fixture
def started():
    """start_script, with every process it started killed at the end of the test if still running."""
    procs = []

    def start(script, args):
        procs.append(start_script(script, args))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for_line(proc, prefix, timeout=240):
    """Read proc's stdout until a line starting with prefix; returns the lines read."""
    import select
    import time

    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if " ".join(line.split()).startswith(" ".join(prefix.split())):  # log lines pad step numbers
                return lines
    proc.kill()
    raise AssertionError(f"never saw {prefix!r}; stdout so far:\n{''.join(lines)}\nstderr:\n{proc.stderr.read()}")
