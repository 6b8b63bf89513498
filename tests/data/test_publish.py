"""The last good dataset survives anything: a build over an existing dataset killed (SIGKILL) or failing at
each pass leaves it byte for byte, and a re-run then completes; versioned folders and the swapped manifest;
the layout before versions still loads and resumes; one build at a time in an --out (the lock)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wslfast.data.build import driver as D
from wslfast.data.build import passes as P
from wslfast.data.build import publish as PUB
from wslfast.data.build import write_shards
from wslfast.data.build.publish import BuildLock
from wslfast.data.format import MANIFEST, list_shards, published_dir, read_manifest
from wslfast.errors import RunFolderError

ROOT = Path(__file__).resolve().parents[2]
OLD = dict(shard_size=40, seed=1, sampling="sqrt", label_noise=0.1)  # the published dataset
NEW = dict(shard_size=50, seed=2, sampling="sqrt", label_noise=0.1)  # the build that dies over it


@pytest.fixture(scope="module")
def tags3(corpus, tmp_path_factory):
    """The corpus's TAGS cut into 3 files: 3 blocks, so each pass has several steps to die between."""
    lines = Path(corpus["tags"]).read_text().splitlines(True)
    d = tmp_path_factory.mktemp("tags3")
    paths = []
    for i in range(3):
        p = d / f"t{i}.jsonl"
        p.write_text("".join(lines[i::3]))
        paths.append(str(p))
    return paths


def _snapshot(out: Path) -> dict:
    """Every file of the published dataset (the manifest, each shard and index, the version's manifest)."""
    files = [out / MANIFEST] + [Path(t) for t in list_shards(out)] + [Path(t).with_suffix(".idx")
                                                                       for t in list_shards(out)]
    if published_dir(out) != out:
        files.append(published_dir(out) / MANIFEST)
    return {str(f.relative_to(out)): f.read_bytes() for f in files}


def _readable(out: Path, m: dict) -> None:
    """The published dataset is whole: every shard verifies fully and the manifest counts its samples."""
    from wslfast.data.format import index_num_samples, verify_shard

    tars = list_shards(out)
    assert len(tars) == len(m["shards"]) > 1
    for t, s in zip(tars, m["shards"]):
        verify_shard(t, s["num_samples"], full=True)
    assert index_num_samples([Path(t).with_suffix(".idx") for t in tars]) == m["num_samples"]


@pytest.fixture
def published(corpus, vocab, tags3, tmp_path):
    out = tmp_path / "out"
    m = write_shards(corpus["images"], tags3, vocab, out, **OLD)
    return out, m, _snapshot(out)


def test_the_versioned_layout(corpus, vocab, published):
    out, m, _ = published
    stage = out / m["shards_dir"]
    inner = read_manifest(stage)
    assert m["shards_dir"] == f"shards-{m['fingerprint']}" and stage.is_dir()
    assert {k: v for k, v in m.items() if k != "shards_dir"} == inner and "shards_dir" not in inner
    assert read_manifest(out) == m and read_manifest(list_shards(out)[0]) == inner  # a shard's own folder
    assert list_shards(out) == list_shards(stage) and all(Path(t).parent == stage for t in list_shards(out))
    assert sorted(p.name for p in out.iterdir()) == sorted([".build.lock", ".work", MANIFEST, stage.name])
    # the loaders open the published version through the manifest
    from wslfast.data.loaders.factory import _shard_files

    tars, _, num_classes = _shard_files(out)
    assert tars == list_shards(out) and num_classes == len(vocab)


def test_a_manifest_cannot_point_outside(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "wslfast-shards", "shards_dir": "../elsewhere"}))
    with pytest.raises(ValueError, match="must name a folder inside"):
        list_shards(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "wslfast-shards", "shards_dir": "gone"}))
    with pytest.raises(ValueError, match="names shard folder gone, which is missing"):
        list_shards(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "someone-else", "shards_dir": "../x"}))
    assert list_shards(tmp_path) == []  # another tool's manifest.json: the folder itself


def test_a_changed_build_replaces_the_old_version_whole(corpus, vocab, tags3, published, tmp_path):
    out, m, _ = published
    n = write_shards(corpus["images"], tags3, vocab, out, **NEW)
    assert n["shards_dir"] != m["shards_dir"] and not (out / m["shards_dir"]).exists()
    _readable(out, n)
    clean = write_shards(corpus["images"], tags3, vocab, tmp_path / "clean", **NEW)
    assert clean == n and _shard_bytes(out) == _shard_bytes(tmp_path / "clean")


def _shard_bytes(out):
    return [Path(t).read_bytes() for t in list_shards(out)]


# ---- kills: SIGKILL at each pass, in a child process ----------------------------------------------------------------
_KILLER = textwrap.dedent("""
    import json, os, signal, sys
    from wslfast.data import format as F
    from wslfast.data.build import driver as D, passes as P, publish as PUB
    from wslfast.data.build import write_shards
    from wslfast.data.synthetic import concept_vocabulary

    where, after = sys.argv[1], int(sys.argv[2])
    calls = []

    def die_after(fn):
        def wrapped(*a, **k):
            calls.append(1)
            if len(calls) > after:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like a power cut
            return fn(*a, **k)
        return wrapped

    if where in ("check_block", "noise_block", "plan_block"):  # the driver holds its own names of the last two
        setattr(P, where, die_after(getattr(P, where)))
        setattr(D, where, getattr(P, where))
    elif where == "write":  # mid-shard: some images of a tar written
        F.jpeg_bytes = die_after(F.jpeg_bytes)
    elif where == "publish":  # the version's manifest written, not yet swapped in
        PUB.write_manifest = die_after(PUB.write_manifest)
    elif where == "swap":  # killed inside the swap: the new manifest's temporary file half written
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("out/manifest.json"):
                with open(src, "r+") as f:
                    f.truncate(100)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = replace
    elif where == "cleanup":  # after the swap, before the old version is removed
        PUB._remove_old = die_after(PUB._remove_old)
    kw = json.loads(sys.argv[6])
    write_shards(sys.argv[3], json.loads(sys.argv[4]), concept_vocabulary(), sys.argv[5], **kw)
    print("finished")
""")


def _run_killer(tmp_path, where, after, images, tags, out, kw):
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    return subprocess.run([sys.executable, str(script), where, str(after), str(images), json.dumps(tags), str(out),
                           json.dumps(kw)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("where, after", [("check_block", 1), ("noise_block", 2), ("plan_block", 1), ("write", 70),
                                          ("publish", 1), ("swap", 0)])
def test_a_kill_at_each_pass_leaves_the_old_dataset(where, after, corpus, vocab, tags3, published, tmp_path):
    out, m, before = published
    r = _run_killer(tmp_path, where, after, corpus["images"], tags3, out, NEW)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout, r.stderr[-2000:])
    assert _snapshot(out) == before  # byte for byte, manifest included
    assert read_manifest(out) == m and list_shards(out) == list_shards(out / m["shards_dir"])
    _readable(out, m)
    n = write_shards(corpus["images"], tags3, vocab, out, **NEW)  # the lock died with the process
    _readable(out, n)
    assert n["shards_dir"] != m["shards_dir"] and sorted(p.name for p in out.glob("shards-*")) == [n["shards_dir"]]
    assert not list((out / n["shards_dir"]).glob(".*.tmp")) and not list((out / ".work").glob("part-*"))
    clean = write_shards(corpus["images"], tags3, vocab, tmp_path / "clean", **NEW)
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean") and clean == n


def test_a_kill_after_the_swap_leaves_the_new_dataset(corpus, vocab, tags3, published, tmp_path):
    out, m, before = published
    r = _run_killer(tmp_path, "cleanup", 0, corpus["images"], tags3, out, NEW)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    n = read_manifest(out)
    assert n["shards_dir"] != m["shards_dir"] and (out / m["shards_dir"]).is_dir()  # the old one not yet removed
    _readable(out, n)
    write_shards(corpus["images"], tags3, vocab, out, **OLD)  # the next build removes what was left
    assert sorted(p.name for p in out.glob("shards-*")) == [m["shards_dir"]] and _snapshot(out) == before


def test_a_kill_of_a_rerun_keeps_the_published_shards(corpus, vocab, tags3, published, tmp_path):
    """A re-run with the same settings writes into the published folder only what is missing: a kill in
    the middle leaves every published byte as it was."""
    out, m, before = published
    gone = Path(list_shards(out)[1])
    lost = {"tar": gone.read_bytes(), "idx": gone.with_suffix(".idx").read_bytes()}
    gone.unlink()
    gone.with_suffix(".idx").unlink()
    damaged = {k: v for k, v in before.items() if not k.endswith((gone.name, gone.with_suffix(".idx").name))}
    r = _run_killer(tmp_path, "write", 10, corpus["images"], tags3, out, OLD)
    assert r.returncode == -signal.SIGKILL and _snapshot(out) == damaged
    assert write_shards(corpus["images"], tags3, vocab, out, **OLD) == m and _snapshot(out) == before
    assert gone.read_bytes() == lost["tar"] and gone.with_suffix(".idx").read_bytes() == lost["idx"]


# ---- failures: an exception at each pass, in this process -------------------------------------------------------
def _boom(*a, **k):
    raise RuntimeError("injected failure")


@pytest.mark.parametrize("target", ["check_block", "noise_block", "weight_block", "plan_block", "write_bucket",
                                    "jpeg_bytes", "write_manifest", "publish_swap"])
def test_a_failure_at_each_pass_leaves_the_old_dataset(target, corpus, vocab, tags3, published, tmp_path,
                                                       monkeypatch):
    out, m, before = published
    if target == "jpeg_bytes":
        from wslfast.data import format as F

        monkeypatch.setattr(F, "jpeg_bytes", _boom)
    elif target == "write_manifest":  # the version's own manifest cannot be written
        monkeypatch.setattr(PUB, "write_manifest", _boom)
    elif target == "publish_swap":  # the version's manifest written, the swap fails (e.g. disk full)
        real = PUB.write_manifest
        monkeypatch.setattr(PUB, "write_manifest", lambda d, mm: real(d, mm) if "shards_dir" not in mm else _boom())
    else:
        monkeypatch.setattr(P, target, _boom)
        if hasattr(D, target):  # the driver's own names of the counting steps
            monkeypatch.setattr(D, target, _boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        write_shards(corpus["images"], tags3, vocab, out, **NEW)
    assert _snapshot(out) == before and read_manifest(out) == m
    _readable(out, m)
    monkeypatch.undo()
    n = write_shards(corpus["images"], tags3, vocab, out, **NEW)  # the lock was released
    _readable(out, n)
    assert sorted(p.name for p in out.glob("shards-*")) == [n["shards_dir"]]


def test_a_build_with_nothing_usable_leaves_the_old_dataset(corpus, vocab, published, tmp_path):
    out, m, before = published
    (tmp_path / "none.jsonl").write_text('{"image": "nope.jpg", "tags": ["dog"]}\n')
    with pytest.raises(ValueError, match="no usable image"):
        write_shards(corpus["images"], tmp_path / "none.jsonl", vocab, out, **NEW)
    assert _snapshot(out) == before


# ---- the layout before versions ---------------------------------------------------------------------------------
def _legacy(out: Path, m: dict) -> dict:
    """Turn a published versioned dataset into the layout written before versions: the shards and the
    manifest (no shards_dir) in out itself, and the fingerprint in .build-state.json."""
    stage = out / m["shards_dir"]
    for p in stage.iterdir():
        if p.name.startswith("shard-"):
            os.replace(p, out / p.name)
    (stage / MANIFEST).unlink()
    stage.rmdir()
    old = {k: v for k, v in m.items() if k != "shards_dir"}
    (out / MANIFEST).write_text(json.dumps(old, indent=1))
    (out / ".build-state.json").write_text(json.dumps({"fingerprint": m["fingerprint"]}))
    return old


def test_the_layout_before_versions_still_loads(corpus, vocab, tags3, published):
    out, m, _ = published
    old = _legacy(out, m)
    assert [Path(t).parent for t in list_shards(out)] == [out] * len(m["shards"]) and read_manifest(out) == old
    from wslfast.data import train_loader

    loader = train_loader(out, 8, device="cpu", image_size=32)
    images, targets = next(iter(loader))
    assert images.shape[0] == 8 and loader.num_classes == len(vocab)


def test_the_layout_before_versions_resumes_and_is_replaced(corpus, vocab, tags3, published, tmp_path,
                                                            monkeypatch):
    """Same settings: the old shards are taken over (hard links, nothing decoded or written again);
    other settings: the old files stay until the new version is published, then go."""
    out, m, _ = published
    _legacy(out, m)
    inodes = {Path(t).name: Path(t).stat().st_ino for t in list_shards(out)}
    monkeypatch.setattr(P, "write_bucket", _boom)  # nothing may be written again
    again = write_shards(corpus["images"], tags3, vocab, out, **OLD)
    monkeypatch.undo()
    assert again == m and {Path(t).name: Path(t).stat().st_ino for t in list_shards(out)} == inodes
    assert not list(out.glob("shard-*")) and not (out / ".build-state.json").exists()

    _legacy(out, m)
    before = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    monkeypatch.setattr(D, "plan_block", _boom)
    with pytest.raises(RuntimeError):
        write_shards(corpus["images"], tags3, vocab, out, **NEW)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == before and list_shards(out)
    n = write_shards(corpus["images"], tags3, vocab, out, **NEW)
    assert not list(out.glob("shard-*")) and n["shards_dir"] and len(list_shards(out)) == len(n["shards"])


# ---- the lock -------------------------------------------------------------------------------------------------------
def test_a_second_build_into_the_same_out_is_refused(corpus, vocab, published, tmp_path):
    out, m, before = published
    with BuildLock(out):
        with pytest.raises(RunFolderError, match=rf"is being written by another build \(pid {os.getpid()} on "):
            write_shards(corpus["images"], corpus["tags"], vocab, out, **NEW)
        vocab.save(tmp_path / "v.json")
        r = subprocess.run([sys.executable, "-m", "wslfast.data", "shards", "--images", str(corpus["images"]),
                            "--tags", str(corpus["tags"]), "--vocab", str(tmp_path / "v.json"), "--out", str(out)],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"is being written by another build (pid {os.getpid()} on" in r.stderr
    assert _snapshot(out) == before
    write_shards(corpus["images"], corpus["tags"], vocab, out, **NEW)  # free again


_SLOW = textwrap.dedent("""
    import sys, time
    from wslfast.data.build import passes as P, write_shards
    from wslfast.data.synthetic import concept_vocabulary
    real = P.check_block
    def slow(*a, **k):
        time.sleep(float(sys.argv[4]))
        return real(*a, **k)
    P.check_block = slow
    if __name__ == "__main__":
        workers = int(sys.argv[5]) if len(sys.argv) > 5 else 1
        write_shards(sys.argv[1], sys.argv[2], concept_vocabulary(), sys.argv[3], shard_size=40, workers=workers)
        print("finished")
""")


@pytest.mark.slow
def test_two_builds_at_once_one_is_refused_naming_the_other(corpus, vocab, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(_SLOW)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, str(script), str(corpus["images"]), str(corpus["tags"]), str(out), "6"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / ".build.lock").is_file() or not (out / ".build.lock").read_text():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        vocab.save(tmp_path / "v.json")
        r = subprocess.run([sys.executable, "-m", "wslfast.data", "shards", "--images", str(corpus["images"]),
                            "--tags", str(corpus["tags"]), "--vocab", str(tmp_path / "v.json"), "--out", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first build ended before the second one tried"
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"is being written by another build (pid {first.pid} on " in r.stderr and "slow.py" in r.stderr
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert len(list_shards(out)) == len(read_manifest(out)["shards"]) > 1
