import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")
from wslfast.data import loaders  # noqa: E402
from wslfast.data.format import list_shards, read_manifest, verify_shard  # noqa: E402
from wslfast.data.loaders import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from wslfast.errors import ConfigError, DataError  # noqa: E402
from wslfast.sparse_targets import SparseTargets  # noqa: E402


def _shard_labels(shard_dir):
    """Label lists of all samples in stored order (independent of DALI: plain tarfile)."""
    out = []
    for f in list_shards(shard_dir):
        with tarfile.open(f) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".labels"):
                    out.append(np.frombuffer(tar.extractfile(m).read(), dtype="<i4").tolist())
    return out


def _rows(t: SparseTargets):
    o = t.offsets.tolist()
    return [sorted(t.indices[o[i]:o[i + 1]].tolist()) for i in range(t.batch_size)]


def _pil_eval(path, resize, crop):
    """torchvision-style eval transform with PIL, except the center offset rounds half up (as DALI)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (resize, round(h * resize / w)) if w <= h else (round(w * resize / h), resize)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = int(np.floor((nh - crop) / 2 + 0.5)), int(np.floor((nw - crop) / 2 + 0.5))
    a = np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.float64) / 255
    return ((a - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def test_train_batches(shard_dir):
    m = read_manifest(shard_dir)
    loader = loaders.train_loader(shard_dir, 16, device="cpu", image_size=32, num_threads=2, seed=1)
    assert loader.num_classes == m["num_classes"] and len(loader) == m["num_samples"] // 16
    stored = {tuple(sorted(set(r))) for r in _shard_labels(shard_dir)}
    n = 0
    for x, y in loader:
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        lo = (0 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
        hi = (1 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
        for c in range(3):
            assert lo[c] - 1e-4 <= x[:, c].min() and x[:, c].max() <= hi[c] + 1e-4
        assert isinstance(y, SparseTargets) and y.num_classes == m["num_classes"] and y.batch_size == 16
        assert all(tuple(r) in stored for r in _rows(y))
        assert torch.allclose(y.to_dense().sum(1), torch.ones(16))
        n += 1
    assert n == len(loader) and loader.epoch == 1


def test_eval_on_shards_covers_every_sample_once_in_order(shard_dir):
    stored = _shard_labels(shard_dir)
    loader = loaders.eval_loader(shard_dir, 20, device="cpu", image_size=32, resize_size=40, num_threads=1)
    got = [r for _, y in loader for r in _rows(y)]
    assert len(loader) == -(-len(stored) // 20)
    assert got == [sorted(set(r)) for r in stored]
    parts = []  # two ranks: disjoint halves that together are the whole set
    for rank in range(2):
        ld = loaders.eval_loader(shard_dir, 16, rank=rank, world_size=2, device="cpu", image_size=32,
                              resize_size=40, num_threads=1)
        parts.append([r for _, y in ld for r in _rows(y)])
    assert parts[0] + parts[1] == got


def test_eval_on_image_folder_matches_pil(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"a": [(50, 70), (64, 45), (33, 33)], "b": [(90, 61), (40, 41)]}
    files = []
    for cls, dims in sizes.items():
        (tmp_path / cls).mkdir()
        for i, (w, h) in enumerate(dims):
            yy, xx = np.mgrid[0:h, 0:w]
            arr = np.stack([128 + 100 * np.sin(xx / 5 + c) * np.cos(yy / 7) for c in range(3)], -1)
            arr = arr + rng.normal(0, 4, arr.shape)
            p = tmp_path / cls / f"{i}.jpg"
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, quality=95)
            files.append(p)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    loader = loaders.eval_loader(tmp_path, 2, device="cpu", image_size=24, resize_size=28, num_threads=1)
    assert loader.classes == ["a", "b"] and loader.num_classes == 2 and len(loader) == 3
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == [0, 0, 0, 1, 1] and y.dtype == torch.int64
    ref = np.stack([_pil_eval(f, 28, 24) for f in files])
    diff = np.abs(x.double().numpy() - ref) * np.array(IMAGENET_STD)[None, :, None, None] * 255
    # In 0-255 pixel units. Decoding is identical; resampling differs by rounding and, for a non-integer
    # long side, DALI keeps the exact scale where PIL stretches to the rounded size (a few units at most).
    # A one-pixel crop or a flipped/unnormalized output is off by tens.
    assert diff.mean() < 1.0 and diff.max() <= 6.01


@pytest.mark.parametrize("stop_after", [3, "epoch"])
def test_exact_resume(shard_dir, stop_after):
    kw = dict(batch_size=16, device="cpu", image_size=24, num_threads=2, seed=4)
    a = loaders.train_loader(shard_dir, **kw)
    it = iter(a)
    if stop_after == "epoch":
        for _ in it:
            pass
    else:
        for _ in range(stop_after):
            next(it)
    state = a.state_dict()
    want = [b for _, b in zip(range(len(a) + 2), (b for _ in range(3) for b in a))]
    b = loaders.train_loader(shard_dir, **kw)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == state  # fits a training checkpoint
    b.load_state_dict(json.loads(json.dumps(state)))  # and a JSON round trip
    got = [x for _, x in zip(range(len(want)), (x for _ in range(3) for x in b))]
    assert len(got) == len(want) > 0
    for (x1, y1), (x2, y2) in zip(want, got):
        assert torch.equal(x1, x2) and _rows(y1) == _rows(y2)
    assert b.epoch >= 1


def test_two_epochs_differ_and_ranks_agree_on_length(shard_dir):
    loader = loaders.train_loader(shard_dir, 8, device="cpu", image_size=16, num_threads=1)
    e1 = torch.cat([x for x, _ in loader])
    e2 = torch.cat([x for x, _ in loader])
    assert e1.shape == e2.shape and not torch.equal(e1, e2)
    n = read_manifest(shard_dir)["num_samples"]
    lens = [len(loaders.train_loader(shard_dir, 8, rank=r, world_size=3, device="cpu", image_size=16))
            for r in range(3)]
    assert lens == [n // 3 // 8] * 3


def test_bad_inputs(shard_dir, tmp_path):
    with pytest.raises(DataError, match="batch_size"):
        loaders.train_loader(shard_dir, 10**6, device="cpu")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        loaders.train_loader(shard_dir, 0, device="cpu")
    with pytest.raises(ConfigError, match="rank"):
        loaders.train_loader(shard_dir, 4, rank=2, world_size=2, device="cpu")
    with pytest.raises(ConfigError, match="image_size"):
        loaders.eval_loader(shard_dir, 4, device="cpu", image_size=64, resize_size=32)
    with pytest.raises(FileNotFoundError):
        loaders.train_loader(tmp_path / "missing", 4, device="cpu")
    with pytest.raises(DataError, match="no class folders"):
        loaders.eval_loader(tmp_path, 4, device="cpu")  # empty folder: no classes
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            loaders.train_loader(shard_dir, 4, device="cuda")
    a = loaders.train_loader(shard_dir, 4, device="cpu", image_size=16)
    b = loaders.train_loader(shard_dir, 8, device="cpu", image_size=16)
    with pytest.raises(ConfigError, match="saved for"):
        b.load_state_dict(a.state_dict())
    lone = tmp_path / "lone"
    lone.mkdir()
    for ext in ("tar", "idx"):
        (lone / f"s.{ext}").write_bytes((Path(list_shards(shard_dir)[0]).with_suffix("." + ext)).read_bytes())
    with pytest.raises(ValueError, match="num_classes"):
        loaders.train_loader(lone, 4, device="cpu")
    assert loaders.train_loader(lone, 4, device="cpu", num_classes=7).num_classes == 7


@pytest.mark.cuda
def test_gpu_batches_are_bf16_on_device(shard_dir):
    loader = loaders.train_loader(shard_dir, 8, device="cuda", image_size=32)
    x, y = next(iter(loader))
    assert x.is_cuda and x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert y.device.type == "cuda"


def test_image_folder_decode_checks_and_names_what_it_skips(tmp_path, capsys):
    good = np.full((40, 40, 3), 120, np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(good).save(tmp_path / "a" / "ok.jpg")
    (tmp_path / "a" / "text.jpg").write_text("not an image")
    Image.fromarray(good).save(tmp_path / "a" / "anim.gif")  # decodes, but DALI reads no GIF
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "a" / "cut.jpg", quality=95)
    cut = (tmp_path / "a" / "cut.jpg").read_bytes()
    (tmp_path / "a" / "cut.jpg").write_bytes(cut[: len(cut) // 2])  # header intact, data truncated
    loader = loaders.eval_loader(tmp_path, 4, device="cpu", image_size=16, resize_size=20)
    assert loader.skipped == 3 and loader.num_samples == 1
    assert [y.tolist() for _, y in loader] == [[0]]  # the truncated JPEG never reaches DALI
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "skipped 3 of 4 files" in err
    assert "cut.jpg: does not decode" in err and "text.jpg: not an image" in err and "GIF" in err


def test_image_folder_without_images_is_one_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images \(.jpg.*in its 1 class folders"):
        loaders.eval_loader(tmp_path, 4, device="cpu")
    (tmp_path / "a" / "x.jpg").write_text("x")
    with pytest.raises(DataError, match=r"none of its 1 image files decodes \(first: .*x.jpg: not an image"):
        loaders.eval_loader(tmp_path, 4, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        loaders.eval_loader(tmp_path / "missing", 4, device="cpu")


def _copy_shards(shard_dir, dst):
    import shutil

    shutil.copytree(shard_dir, dst)
    return sorted(Path(p) for p in list_shards(dst))


def test_truncated_shard_is_named_when_the_loader_opens(shard_dir, tmp_path):
    tars = _copy_shards(shard_dir, tmp_path / "s")
    victim = tars[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as e:
        loaders.train_loader(tmp_path / "s", 8, device="cpu", image_size=16)
    msg = str(e.value)
    assert f"shard {victim} is truncated" in msg and "python -m wslfast.data shards" in msg and "\n" not in msg


def test_shard_that_does_not_match_its_index_is_named(shard_dir, tmp_path):
    tars = _copy_shards(shard_dir, tmp_path / "s")
    # long enough (shards hold about, not exactly, shard_size samples), but another shard's members
    pad = max(0, tars[0].stat().st_size - tars[1].stat().st_size) + 4096
    tars[0].write_bytes(tars[1].read_bytes() + b"\0" * pad)
    with pytest.raises(DataError, match=f"shard {tars[0]} does not match its index"):
        loaders.eval_loader(tmp_path / "s", 8, device="cpu", image_size=16, resize_size=16)
    idx = tars[0].with_suffix(".idx")
    idx.write_text("hello\n")
    with pytest.raises(DataError, match="is not a webdataset index"):
        verify_shard(tars[0], full=False)


def test_whole_shards_pass_the_check(shard_dir):
    for t in list_shards(shard_dir):
        verify_shard(t, full=False)


def test_batch_larger_than_the_data_names_the_data(shard_dir):
    n = read_manifest(shard_dir)["num_samples"]
    with pytest.raises(DataError) as e:
        loaders.train_loader(shard_dir, n + 1, device="cpu", image_size=16)
    assert f"holds {n} samples" in str(e.value) and f"at most {n}" in str(e.value) and str(shard_dir) in str(e.value)


def test_train_on_image_folder(corpus):
    loader = loaders.train_loader(corpus["target_train"], 8, device="cpu", image_size=24, num_threads=1)
    assert loader.classes == sorted(corpus["target_classes"]) and len(loader) == 24 // 8
    ys = []
    for x, y in loader:
        assert x.shape == (8, 3, 24, 24) and y.dtype == torch.int64
        ys += y.tolist()
    assert sorted(ys) == sorted([c for c in range(4) for _ in range(6)])  # each image once per epoch


def test_padded_to_targets_matches_from_lists():
    rows = [[3, 1], [7], [2, 2, 5], [0]]
    k = max(map(len, rows))
    padded = torch.tensor([r + [-1] * (k - len(r)) for r in rows])
    got, want = loaders.padded_to_targets(padded, 9), SparseTargets.from_lists(rows, 9)
    for name in ("indices", "offsets", "weights"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    with pytest.raises(ValueError):
        loaders.padded_to_targets(torch.tensor([[9]]), 9)


def test_eval_image_folder_split_over_ranks(corpus):
    kw = dict(device="cpu", image_size=16, resize_size=20, num_threads=1)
    full = torch.cat([y for _, y in loaders.eval_loader(corpus["target_val"], 6, **kw)])
    parts = [torch.cat([y for _, y in loaders.eval_loader(corpus["target_val"], 4, rank=r, world_size=3, **kw)])
             for r in range(3)]
    assert torch.equal(torch.cat(parts), full) and full.tolist() == sorted(full.tolist())
    assert [p.numel() for p in parts] == [20 * (r + 1) // 3 - 20 * r // 3 for r in range(3)]


def test_one_factory_behind_both_loaders(shard_dir, corpus):
    with pytest.raises(ValueError, match="kind must be 'train' or 'eval'"):
        loaders.make_loader("test", shard_dir, 4, device="cpu")
    a = loaders.train_loader(shard_dir, 4, device="cpu", image_size=16)
    b = loaders.make_loader("train", shard_dir, 4, device="cpu", image_size=16)
    assert a._config() == b._config() and a.resize_size == b.resize_size == 16 and a.num_classes == b.num_classes
    e = loaders.eval_loader(shard_dir, 4, device="cpu", image_size=16)
    assert e.kind == "eval" and e.resize_size == 256 and len(e) == -(-read_manifest(shard_dir)["num_samples"] // 4)
    f = loaders.make_loader("eval", corpus["target_val"], 4, device="cpu", image_size=16, validate=False)
    assert f.classes == sorted(p.name for p in Path(corpus["target_val"]).iterdir()) and f.skipped == 0
