"""The Ray Data engine writes the very bytes of the in-process engine and of the process pool (one embedded
Ray for the module)."""
import os
from pathlib import Path

import pytest
from PIL import Image

from wslfast.data.build import write_shards
from wslfast.data.format import list_shards, read_manifest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.dist, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time (tests/conftest.py)


@pytest.fixture(scope="module")
def ray_session():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=150 << 20,
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def _bytes(folder):
    return [Path(f).read_bytes() for f in list_shards(folder)]


def test_workers_do_not_change_a_byte(ray_session, corpus, vocab, tmp_path):
    images = Path(corpus["images"])
    ref = tmp_path / "eval_set"
    ref.mkdir()
    for p in sorted(images.rglob("*.jpg"))[:6]:  # resized copies of a few training images
        Image.open(p).resize((40, 40)).save(ref / p.name, quality=75)
    kw = dict(shard_size=50, label_noise=0.2, sampling="sqrt", dedup_against=ref, seed=1)
    local = write_shards(images, corpus["tags"], vocab, tmp_path / "local", **kw)
    dist = write_shards(images, corpus["tags"], vocab, tmp_path / "ray", workers=2, engine="ray", **kw)
    pool = write_shards(images, corpus["tags"], vocab, tmp_path / "pool", workers=2, engine="pool", **kw)
    assert local["skipped"]["duplicate"] >= 1 and len(local["shards"]) >= 3
    assert dist == local == pool == read_manifest(tmp_path / "ray")
    assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local") == _bytes(tmp_path / "pool")
    # resume on Ray: a lost shard is written again, the others are kept
    files = list_shards(tmp_path / "ray")
    kept = Path(files[0]).stat().st_mtime_ns
    Path(files[1]).unlink()
    write_shards(images, corpus["tags"], vocab, tmp_path / "ray", workers=2, engine="ray", **kw)
    assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")
    assert Path(files[0]).stat().st_mtime_ns == kept
