"""The ImageFolder training pipeline (fine-tuning): a fresh global permutation and fresh crops every epoch,
the ranks' shards partitioning each epoch, exact resume mid-epoch; and the ImageFolder listing: the decode
check split over ranks and kept in a cache."""
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")
from wslfast.data import loaders  # noqa: E402
from wslfast.data.loaders import folder as folder_mod  # noqa: E402
from wslfast.errors import DataError  # noqa: E402


def _tree(root, classes=6, per_class=4, size=40):
    """root/c<k>/<i>.jpg; image (k, i) is a flat colour of its own with a bright square, so crops differ."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            a = np.full((size, size, 3), rng.integers(0, 200, 3), dtype=np.uint8)
            a[5:15, 20:35] = 255
            Image.fromarray(a).save(root / f"c{k}" / f"{i}.jpg", quality=95)
    return root


def _epoch_labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_train_epochs_are_fresh_permutations_of_every_class(tmp_path):
    root = _tree(tmp_path / "t")
    loader = loaders.train_loader(root, 8, device="cpu", image_size=24, seed=5, num_threads=1)
    assert len(loader) == 3 and loader.classes == [f"c{k}" for k in range(6)]
    epochs = [_epoch_labels(loader) for _ in range(3)]
    for labels in epochs:
        assert sorted(labels) == sorted(sum([[k] * 4 for k in range(6)], []))  # 24 images: every one, once
        assert labels != sorted(labels)  # not the listing's class-by-class order
    assert epochs[0] != epochs[1] != epochs[2]
    first = next(iter(loader))[0]
    assert first.shape == (8, 3, 24, 24)


def test_crops_are_drawn_anew_each_epoch(tmp_path):
    root = _tree(tmp_path / "t", classes=4, per_class=1, size=64)  # one image per class: label = image
    loader = loaders.train_loader(root, 4, device="cpu", image_size=32, seed=0, num_threads=1)
    views = []
    for _ in range(2):
        (x, y), = list(loader)  # the whole epoch: one batch
        views.append({int(label): img for label, img in zip(y, x)})
    assert all(not torch.equal(views[0][k], views[1][k]) for k in range(4))


def test_two_ranks_partition_every_epoch(tmp_path):
    root = _tree(tmp_path / "t")
    a = loaders.train_loader(root, 4, rank=0, world_size=2, device="cpu", image_size=16, seed=1, num_threads=1)
    b = loaders.train_loader(root, 4, rank=1, world_size=2, device="cpu", image_size=16, seed=1, num_threads=1)
    assert len(a) == len(b) == 3
    for _ in range(2):
        la, lb = _epoch_labels(a), _epoch_labels(b)
        assert sorted(la + lb) == sorted(sum([[k] * 4 for k in range(6)], []))  # disjoint halves of one permutation


def test_resume_mid_epoch_continues_exactly(tmp_path):
    root = _tree(tmp_path / "t")
    kw = dict(device="cpu", image_size=16, seed=3, num_threads=1)
    ref = loaders.train_loader(root, 5, **kw)
    it = iter(ref)
    next(it)
    state = ref.state_dict()
    expected = [b for b in it] + [b for _, b in zip(range(3), iter(ref))]
    again = loaders.train_loader(root, 5, **kw)
    again.load_state_dict(state)
    got = [b for b in again] + [b for _, b in zip(range(3), iter(again))]
    assert len(got) == len(expected) == 6
    for (x1, y1), (x2, y2) in zip(got, expected):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_listing_check_is_split_over_ranks_and_cached(tmp_path, monkeypatch):
    root = _tree(tmp_path / "t", classes=3, per_class=3)
    (root / "c1" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    calls = []
    real = folder_mod._decodes
    monkeypatch.setattr(folder_mod, "_decodes", lambda p: calls.append(p) or real(p))
    import threading

    found, barrier, out = {}, threading.Barrier(2), {}

    def rank(r):  # two ranks as threads; gather is the all-gather a process group would do
        def gather(obj):
            found[r] = obj
            barrier.wait()
            return [found[0], found[1]]
        out[r] = folder_mod.list_image_folder(root, part=(r, 2), gather=gather, check_cache=cache, verbose=False)

    cache = tmp_path / "run" / "checked-train.json"
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    zero, one = out[0], out[1]
    assert len(calls) == 10 and len(set(calls)) == 10  # each file decoded by one rank only
    assert zero.files == one.files and len(zero) == 9 and zero.skipped == 1 and cache.is_file()
    calls.clear()
    again = folder_mod.list_image_folder(root, check_cache=cache)
    assert calls == [] and again.files == zero.files and again.skipped == 1  # the cache answered
    (root / "c2" / "new.jpg").write_bytes((root / "c2" / "0.jpg").read_bytes())
    fresh = folder_mod.list_image_folder(root, check_cache=cache)
    assert len(calls) == 11 and len(fresh) == 10  # files changed: checked again
    with pytest.raises(ValueError, match="needs gather"):
        folder_mod.list_image_folder(root, part=(0, 2))


def test_listing_in_place_of_a_folder(tmp_path):
    root = _tree(tmp_path / "t", classes=2, per_class=3)
    listing = loaders.list_image_folder(root)
    loader = loaders.eval_loader(listing, 4, device="cpu", image_size=16, resize_size=16, num_threads=1)
    assert loader.classes == ["c0", "c1"] and _epoch_labels(loader) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="no class folders"):
        loaders.list_image_folder(tmp_path / "t" / "c0")
