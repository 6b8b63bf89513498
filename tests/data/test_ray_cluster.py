"""`shards --ray-address` against a local Ray cluster started with `ray start --head` (loopback only), with
token authentication on as in the README's cluster recipe (RAY_AUTH_MODE=token; the token in the environment,
so the test neither reads nor writes ~/.ray/auth_token)."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from wslfast.data.build import write_shards
from wslfast.data.format import list_shards

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.dist, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time (tests/conftest.py)
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """End the cluster's processes by id: its process group, then any process still naming its temp dir."""
    import psutil

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            pass
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in a for a in (p.info["cmdline"] or [])):
            try:
                p.kill()
            except psutil.Error:
                pass


def test_cli_against_a_local_cluster(corpus, vocab, tmp_path):
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="wsray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                             "--block"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        vocab.save(tmp_path / "vocab.json")
        args = ["--images", str(corpus["images"]), "--tags", str(corpus["tags"]), "--vocab",
                str(tmp_path / "vocab.json"), "--shard-size", "60", "--sampling", "uniform", "--label-noise", "0.1",
                "--seed", "3"]
        deadline = time.time() + 180
        while subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(2)
        r = subprocess.run([sys.executable, "-m", "wslfast.data", "shards", *args, "--out", str(tmp_path / "c"),
                            "--ray-address", f"127.0.0.1:{port}"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        _stop(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    write_shards(corpus["images"], corpus["tags"], vocab, tmp_path / "local", shard_size=60, sampling="uniform",
                 label_noise=0.1, seed=3)
    got, want = list_shards(tmp_path / "c"), list_shards(tmp_path / "local")
    assert len(want) >= 3 and [Path(f).read_bytes() for f in got] == [Path(f).read_bytes() for f in want]
