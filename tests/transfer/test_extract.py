"""Feature extraction into the store: each part holds the backbone's features of exactly its images (against
the model run on the evaluation pipeline over the files in the store's order), two ranks write disjoint
parts that make the same store, and a stop keeps the parts written so that the next call finishes the rest
with the same result."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

pytest.importorskip("nvidia.dali")
from wslfast.data.loaders import list_image_folder, make_loader  # noqa: E402
from wslfast.transfer.extract import ExtractionStopped, extract_features  # noqa: E402
from wslfast.transfer.features import FeatureReader, FeatureStore, order  # noqa: E402


class Pooled(nn.Module):
    """A tiny backbone: conv, ReLU, average pool -> 6 features."""
    num_features = 6

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3)

    def forward_features(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))


@pytest.fixture
def listing(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        (tmp_path / "t" / f"c{k}").mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "t" / f"c{k}" / f"{i}.jpg")
    return list_image_folder(tmp_path / "t")


def _store(folder, n, seed=3):
    return FeatureStore(str(folder), key={"k": 1}, dim=6, num_samples=n, part_size=5, order_seed=seed)


def _extract(model, listing, store, **kw):
    return extract_features(model, listing, store, batch_size=4, device="cpu", image_size=16, resize_size=18,
                            num_threads=1, **kw)


def test_parts_hold_the_features_of_their_images(listing, tmp_path):
    model = Pooled().eval()
    store = _store(tmp_path / "f", len(listing))
    assert _extract(model, listing, store) == 5  # 21 images in parts of 5
    x, y = FeatureReader(str(tmp_path / "f")).load_all()
    perm = order(3, len(listing))
    assert y.tolist() == [listing.labels[i] for i in perm]
    # the reference: the same files, in the store's order, through the evaluation pipeline one by one
    ref = []
    for i in perm:
        single = type(listing)(listing.root, [listing.files[i]], [listing.labels[i]], listing.classes)
        (img, _), = list(make_loader("eval", single, 1, device="cpu", image_size=16, resize_size=18, num_threads=1))
        with torch.no_grad():
            ref.append(model.forward_features(img.float()))
    torch.testing.assert_close(x, torch.cat(ref), rtol=1e-5, atol=1e-6)


def test_two_ranks_make_the_same_store(listing, tmp_path):
    model = Pooled().eval()
    whole = _store(tmp_path / "one", len(listing))
    _extract(model, listing, whole)
    split = _store(tmp_path / "two", len(listing))
    assert _extract(model, listing, split, rank=1, world=2) == 2  # parts 1 and 3
    assert split.missing_parts() == [0, 2, 4]
    assert _extract(model, listing, split, rank=0, world=2) == 3
    a, b = FeatureReader(str(tmp_path / "one")).load_all(), FeatureReader(str(tmp_path / "two")).load_all()
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(a[1], b[1])


def test_a_stop_keeps_the_written_parts_and_the_next_call_finishes(listing, tmp_path):
    model = Pooled().eval()
    store = _store(tmp_path / "f", len(listing))
    polls = []

    def stop():  # asks to stop once two parts (10 images: 3 batches of 4) are through
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(ExtractionStopped, match="2 of 5 parts written"):
        _extract(model, listing, store, stop=stop)
    assert store.missing_parts() == [2, 3, 4]
    progress = []
    assert _extract(model, listing, store, progress=lambda *a: progress.append(a)) == 3
    assert [p[:2] for p in progress] == [(1, 3), (2, 3), (3, 3)]
    ref = _store(tmp_path / "ref", len(listing))
    _extract(model, listing, ref)
    torch.testing.assert_close(FeatureReader(str(tmp_path / "f")).load_all()[0],
                               FeatureReader(str(tmp_path / "ref")).load_all()[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="the listing has 21 images, the store 22"):
        _extract(model, listing, _store(tmp_path / "g", 22))
