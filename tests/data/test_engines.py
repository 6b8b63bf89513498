"""Engines: `--workers N` is a process pool of this machine (the in-process bytes, no listening socket, few
tasks in flight, no orphan after a kill); Ray only when asked (--engine ray, --ray-address; RAY_ADDRESS
alone changes nothing), a dead address fails in seconds, and errors stay one line under the pool and Ray."""
import gzip
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from wslfast.data.build import write_shards
from wslfast.data.build.engines import PoolEngine, make_engine, user_error
from wslfast.data.format import list_shards
from wslfast.data.sources import TagFiles
from wslfast.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(ROOT),
       "RAY_USAGE_STATS_ENABLED": "0"}


def _bytes(folder):
    return [Path(f).read_bytes() for f in list_shards(folder)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(stderr: str) -> str:
    """The CLI's one `error:` line, asserting it is the only one and nothing printed a traceback (progress
    bars may share stderr)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def _cli(args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "wslfast.data", *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def split_tags(corpus, tmp_path_factory):
    lines = Path(corpus["tags"]).read_text().splitlines(True)
    d = tmp_path_factory.mktemp("split")
    out = []
    for i in range(3):
        (d / f"t{i}.jsonl").write_text("".join(lines[i::3]))
        out.append(str(d / f"t{i}.jsonl"))
    return out


def test_the_pool_writes_the_bytes_of_the_local_engine(corpus, vocab, split_tags, tmp_path):
    from PIL import Image

    ref = tmp_path / "eval_set"
    ref.mkdir()
    for p in sorted(Path(corpus["images"]).rglob("*.jpg"))[:6]:  # near-duplicates to drop
        Image.open(p).resize((40, 40)).save(ref / p.name, quality=75)
    kw = dict(shard_size=50, label_noise=0.2, sampling="sqrt", dedup_against=ref, seed=1)
    local = write_shards(corpus["images"], split_tags, vocab, tmp_path / "local", **kw)
    pool = write_shards(corpus["images"], split_tags, vocab, tmp_path / "pool", workers=2, **kw)
    assert local["skipped"]["duplicate"] >= 1 and len(local["shards"]) >= 3
    assert pool == local and _bytes(tmp_path / "pool") == _bytes(tmp_path / "local")
    # resume under the pool: a lost shard is written again, the others kept
    files = list_shards(tmp_path / "pool")
    kept = Path(files[0]).stat().st_mtime_ns
    Path(files[1]).unlink()
    write_shards(corpus["images"], split_tags, vocab, tmp_path / "pool", workers=3, **kw)
    assert _bytes(tmp_path / "pool") == _bytes(tmp_path / "local") and Path(files[0]).stat().st_mtime_ns == kept


def test_the_pool_keeps_few_tasks_in_flight():
    pulled, got = [0], []

    def tasks():
        for i in range(25):
            pulled[0] += 1
            yield (-i,)

    with PoolEngine(2, window=3) as eng:
        eng.put(None)
        for r in eng._run(abs, tasks()):
            assert pulled[0] - len(got) <= 3  # submitted but not yet handed back: at most the window
            got.append(r)
    assert got == list(range(25))


def test_engine_choice():
    assert make_engine(1).name == "local" and make_engine(4).name == "pool"
    assert make_engine(1, kind="pool").name == "pool"
    assert make_engine(2, kind="ray").name == "ray" and make_engine(1, "10.0.0.1:6379").name == "ray"
    for bad, words in [(dict(workers=2, kind="local"), "--engine local runs in this process"),
                       (dict(ray_address="a:1", kind="pool"), "does not go with --engine pool"),
                       (dict(kind="spark"), "engine must be one of"), (dict(workers=0), "workers must be >= 1")]:
        with pytest.raises(ConfigError, match=words):
            make_engine(**bad)


# ---- no port, no Ray ------------------------------------------------------------------------------------------------
def _listeners(pids) -> list:
    out = []
    for pid in pids:
        try:
            out += [(pid, c.laddr) for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return out


def test_the_listener_probe_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert (os.getpid(), s.getsockname()) in [(p, tuple(a)) for p, a in _listeners([os.getpid()])]
    assert not _listeners([os.getpid()])


_SLOW = textwrap.dedent("""
    import sys, time
    from wslfast.data.build import passes as P
    real = P.check_block
    def slow(*a, **k):  # (spawned workers import this file too: they run slowly as well)
        time.sleep(float(sys.argv[1]))
        return real(*a, **k)
    P.check_block = slow
    if __name__ == "__main__":
        from wslfast.data.__main__ import main
        rc = main(sys.argv[2:])
        print("ray imported:", "ray" in sys.modules)
        sys.exit(rc)
""")


def test_a_pool_build_opens_no_port_and_never_starts_ray(corpus, vocab, split_tags, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(_SLOW)
    vocab.save(tmp_path / "v.json")
    env = {**ENV, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}  # a dead cluster in the environment: not used
    proc = subprocess.Popen([sys.executable, str(script), "1.0", "shards", "--images", str(corpus["images"]),
                             "--tags", *split_tags, "--vocab", str(tmp_path / "v.json"), "--out", str(tmp_path / "o"),
                             "--workers", "2", "--shard-size", "40"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples, most_workers, names = 0, 0, set()
    while proc.poll() is None:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        names |= {_cmd(k) for k in kids}
        most_workers = max(most_workers, len(kids))
        assert not _listeners([proc.pid] + [k.pid for k in kids])
        samples += 1
        time.sleep(0.2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "ray imported: False" in out and samples >= 5 and most_workers >= 2, (samples, most_workers)
    assert not any("ray" in n or "raylet" in n for n in names), names
    local = write_shards(corpus["images"], split_tags, vocab, tmp_path / "local", shard_size=40)
    assert _bytes(tmp_path / "o") == _bytes(tmp_path / "local") and local["num_samples"] > 0


def test_ray_address_in_the_environment_alone_changes_nothing(corpus, tmp_path, vocab):
    vocab.save(tmp_path / "v.json")
    env = {**ENV, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    start = time.time()
    code = ("import sys; from wslfast.data.__main__ import main; rc = main(sys.argv[1:]); "
            "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "shards", "--images",
                        str(corpus["images"]), "--tags", str(corpus["tags"]), "--vocab", str(tmp_path / "v.json"),
                        "--out", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ray imported: False" in r.stdout, r.stderr[-2000:]
    assert time.time() - start < 60


def test_a_pool_worker_dies_with_its_driver(corpus, vocab, split_tags, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(_SLOW)
    vocab.save(tmp_path / "v.json")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, str(script), "3.0", "shards", "--images", str(corpus["images"]), "--tags",
                             *split_tags, "--vocab", str(tmp_path / "v.json"), "--out", str(out), "--workers", "2"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, kids = time.time() + 60, []
    while len(kids) < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
        kids = psutil.Process(proc.pid).children(recursive=True)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while _running(kids) and time.time() < deadline:
        time.sleep(0.2)
    alive = _running(kids)
    for p in alive:  # (only if the test fails: leave nothing behind)
        p.kill()
    assert not alive, [(p.pid, _cmd(p)) for p in alive]
    m = write_shards(corpus["images"], split_tags, vocab, out, shard_size=40)  # the lock is free
    assert len(list_shards(out)) == len(m["shards"])


def _cmd(p) -> str:
    try:
        return " ".join(p.cmdline())[:80]
    except psutil.Error:  # gone, or a zombie
        return ""


def _running(procs) -> list:
    """Those still running (a zombie has exited; its new parent may just not have reaped it yet)."""
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


# ---- errors: one line -----------------------------------------------------------------------------------------
class FailingTags(TagFiles):
    """TagFiles whose second input's records raise the project's own error (in whichever process reads them)."""

    def records(self, block):
        if block.file_no == 1:
            raise DataError(f"{self.paths[1]}: line 7: a record this source refuses")
        return super().records(block)


def test_an_error_in_a_pool_worker_is_the_project_error(corpus, vocab, split_tags, tmp_path):
    src = FailingTags(split_tags, corpus["images"])
    with pytest.raises(DataError) as e:
        write_shards(corpus["images"], src, vocab, tmp_path / "o", workers=2)
    assert str(e.value) == f"{split_tags[1]}: line 7: a record this source refuses"
    assert "Traceback" in str(e.value.__cause__)  # the worker's traceback, kept for a Python caller


class StuckTags(TagFiles):
    """The first input fails at once while the second one's block takes a minute."""

    def records(self, block):
        if block.file_no == 0:
            raise DataError(f"{self.paths[0]}: line 1: refused")
        if block.file_no == 1:
            time.sleep(60)
        return super().records(block)


def test_an_error_stops_the_pool_at_once(corpus, vocab, split_tags, tmp_path):
    start = time.time()
    with pytest.raises(DataError, match="line 1: refused"):
        write_shards(corpus["images"], StuckTags(split_tags, corpus["images"]), vocab, tmp_path / "o", workers=2)
    assert time.time() - start < 30  # the worker stuck in its minute was stopped, not waited for
    workers = [k for k in psutil.Process().children(recursive=True) if "spawn_main" in _cmd(k)]
    assert not _running(workers)


def test_bad_input_under_the_pool_is_one_line(corpus, vocab, tmp_path):
    good = gzip.compress(Path(corpus["tags"]).read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(good[:len(good) // 2])
    vocab.save(tmp_path / "v.json")
    r = _cli(["shards", "--images", str(corpus["images"]), "--tags", str(tmp_path / "cut.jsonl.gz"), "--vocab",
              str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--workers", "2"])
    assert r.returncode == 1 and "cannot read past line" in _one_error_line(r.stderr)
    r = _cli(["shards", "--images", str(corpus["images"]), "--tags", str(corpus["tags"]), "--vocab",
              str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--workers", "2", "--engine", "local"])
    assert r.returncode == 1 and "--engine local runs in this process" in _one_error_line(r.stderr)


def test_user_error_unwraps_chains():
    inner = DataError("x.jsonl: line 3: bad")
    try:
        try:
            raise inner
        except DataError as e:
            raise RuntimeError("UDF failed") from e
    except RuntimeError as wrapped:
        assert user_error(wrapped) is inner

    class Wrapper(Exception):  # like RayTaskError: the original in .cause
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    assert user_error(Wrapper(inner)) is inner
    plain = RuntimeError("a bug")
    assert user_error(plain) is plain


# ---- Ray, when asked -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["address", "auto"])
def test_a_dead_ray_address_fails_in_seconds(how, corpus, vocab, tmp_path):
    pytest.importorskip("ray")
    vocab.save(tmp_path / "v.json")
    dead = f"127.0.0.1:{_free_port()}"
    env = {**ENV, "RAY_ADDRESS": dead} if how == "auto" else ENV
    start = time.time()
    r = _cli(["shards", "--images", str(corpus["images"]), "--tags", str(corpus["tags"]), "--vocab",
              str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--ray-address",
              dead if how == "address" else "auto"], env=env, timeout=120)
    took = time.time() - start
    line = _one_error_line(r.stderr)  # (auto: Ray's lookup may name the loopback by the node's address)
    assert r.returncode == 1 and line.startswith(f"error: --ray-address {dead if how == 'address' else 'auto (= '}")
    assert f":{dead.split(':')[1]}" in line and "nothing accepts connections there" in line and took < 45, took


def test_a_malformed_ray_address_is_one_line(corpus, vocab, tmp_path):
    pytest.importorskip("ray")
    vocab.save(tmp_path / "v.json")
    r = _cli(["shards", "--images", str(corpus["images"]), "--tags", str(corpus["tags"]), "--vocab",
              str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--ray-address", "headnode"])
    assert r.returncode == 1 and "is not HOST:PORT" in _one_error_line(r.stderr)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.xdist_group("ray")
def test_bad_input_under_ray_is_one_line(corpus, vocab, tmp_path):
    pytest.importorskip("ray")
    good = gzip.compress(Path(corpus["tags"]).read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(good[:len(good) // 2])
    vocab.save(tmp_path / "v.json")
    r = _cli(["shards", "--images", str(corpus["images"]), "--tags", str(tmp_path / "cut.jsonl.gz"), "--vocab",
              str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--workers", "2", "--engine", "ray"], timeout=600)
    assert r.returncode == 1 and "cannot read past line" in _one_error_line(r.stderr)


_MEASURE_POOL = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from wslfast.data.build import write_shards
    from wslfast.data.build.engines import PoolEngine
    from wslfast.data.synthetic import concept_vocabulary
    if __name__ == "__main__":
        root, n = Path(sys.argv[1]), int(sys.argv[2])
        (root / "img").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(16):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg")
        tags = ["#dog", "#pizza", "#tree", "#brownbear"]
        with open(root / "tags.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"image": f"{i % 16}.jpg", "tags": [tags[i % 4], tags[i // 4 % 4]],
                                    "note": "x" * 200}) + "\\n")
        m = write_shards(root / "img", root / "tags.jsonl", concept_vocabulary(), root / "out", shard_size=500,
                         sampling="sqrt", label_noise=0.1, engine=PoolEngine(2, window=2))
        assert m["num_images"] == n
        usage = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        print(*usage)
""")


@pytest.mark.slow
def test_pool_memory_does_not_grow_with_the_records(tmp_path):
    """Peak RSS of the driver and of the largest worker, 8 blocks of records vs 2 (window: 2 tasks in
    flight): holding the records (~1.3 KB each) would add ~32 MB; the pool adds next to nothing."""
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE_POOL)
    peak = {}
    for n in (2 * 4096, 8 * 4096):
        r = subprocess.run([sys.executable, str(script), str(tmp_path / str(n)), str(n)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        peak[n] = [int(x) / 1024 for x in r.stdout.split()[-2:]]  # MB: driver, largest worker
    grow = [b - a for a, b in zip(peak[2 * 4096], peak[8 * 4096])]
    assert grow[0] < 4 and grow[1] < 4, peak


@pytest.mark.slow
def test_an_address_that_is_no_ray_head_fails_in_seconds(corpus, vocab, tmp_path):
    """Something listens there (an HTTP/1 server, or a socket that never answers), but not Ray's GCS:
    ray.init would retry it for minutes."""
    pytest.importorskip("ray")
    vocab.save(tmp_path / "v.json")
    for kind in ("http", "silent"):
        with socket.socket() as srv:
            srv.bind(("0.0.0.0", 0))  # every interface: Ray may name the loopback by this node's address
            srv.listen()
            port = srv.getsockname()[1]
            if kind == "http":
                import threading

                def answer():
                    conn, _ = srv.accept()
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.0 400 Bad request\r\n\r\n")
                    conn.close()

                threading.Thread(target=answer, daemon=True).start()
            start = time.time()
            r = _cli(["shards", "--images", str(corpus["images"]), "--tags", str(corpus["tags"]), "--vocab",
                      str(tmp_path / "v.json"), "--out", str(tmp_path / "o"), "--ray-address", f"127.0.0.1:{port}"],
                     timeout=120)
            took = time.time() - start
        line = _one_error_line(r.stderr)
        assert r.returncode == 1 and "something answers there, but not a Ray head" in line and took < 45, (took, line)
