import pytest
import torch

from wslfast.sparse_targets import SparseTargets


def test_from_lists_sorts_merges_duplicates_and_defaults_to_one_over_k():
    t = SparseTargets.from_lists([[3, 17, 3], [5], []], num_classes=20)
    assert t.offsets.tolist() == [0, 2, 3, 3]
    assert t.indices.tolist() == [3, 17, 5]
    assert torch.allclose(t.weights, torch.tensor([2 / 3, 1 / 3, 1.0]))
    assert t.batch_size == 3 and len(t) == 3 and t.num_classes == 20


def test_explicit_weights_are_added_for_duplicates():
    t = SparseTargets.from_lists([[4, 1, 4]], num_classes=5, weights=[[0.5, 0.25, 0.125]])
    assert t.indices.tolist() == [1, 4]
    assert torch.allclose(t.weights, torch.tensor([0.25, 0.625]))


def test_csr_constructor_matches_from_lists_and_to_dense():
    t = SparseTargets(torch.tensor([2, 0, 1]), torch.tensor([0, 2, 2, 3]), None, num_classes=3)
    dense = t.to_dense()
    assert torch.equal(dense, torch.tensor([[0.5, 0, 0.5], [0, 0, 0], [0, 1.0, 0]]))


@pytest.mark.parametrize("indices,offsets,weights,V,match", [
    ([0, 1], [1, 2], None, 3, "start at 0"),
    ([0, 1], [0, 1], None, 3, "end at nnz"),
    ([0, 1, 2], [0, 2, 1, 3], None, 3, "non-decreasing"),
    ([0, 3], [0, 2], None, 3, r"\[0, 3\)"),
    ([-1], [0, 1], None, 3, r"\[0, 3\)"),
    ([0, 1], [0, 2], [1.0], 3, "weights has 1"),
    ([0], [0, 1], [float("nan")], 3, "finite"),
])
def test_bad_csr_is_refused_with_a_message(indices, offsets, weights, V, match):
    w = None if weights is None else torch.tensor(weights)
    with pytest.raises(ValueError, match=match):
        SparseTargets(torch.tensor(indices), torch.tensor(offsets), w, num_classes=V)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(indices=torch.tensor([0.0]), offsets=torch.tensor([0, 1]), num_classes=2), TypeError),
    (dict(indices=torch.tensor([0]), offsets=torch.tensor([0, 1]), num_classes=0), ValueError),
    (dict(indices=torch.tensor([0]), offsets=torch.tensor([0, 1]), num_classes=None), ValueError),
    (dict(indices=torch.tensor([0]), offsets=torch.tensor([], dtype=torch.long), num_classes=2), ValueError),
])
def test_bad_types_are_refused(kwargs, exc):
    with pytest.raises(exc):
        SparseTargets(**kwargs)


def test_empty_batch_and_all_empty_rows():
    t = SparseTargets.from_lists([], num_classes=4)
    assert t.batch_size == 0 and t.indices.numel() == 0
    t = SparseTargets.from_lists([[], []], num_classes=4)
    assert t.offsets.tolist() == [0, 0, 0]


@pytest.mark.parametrize("indices,offsets", [
    ([2, 1], [0, 2]),          # unsorted within a row
    ([1, 1], [0, 2]),          # duplicate
    ([0, 3, 3, 1], [0, 3, 4]), # duplicate inside the first row, second row fine
    ([0, 2, 1], [0, 1, 3, 3]), # unsorted second row, empty last row
])
def test_canonical_true_is_checked_not_trusted(indices, offsets):
    with pytest.raises(ValueError, match="not sorted and unique"):
        SparseTargets(torch.tensor(indices), torch.tensor(offsets), None, num_classes=4, canonical=True)


@pytest.mark.parametrize("indices,offsets", [
    ([3, 0, 1], [0, 1, 3]),    # a row may start below the previous row's last id
    ([0, 1, 2], [0, 3, 3, 3]), # empty rows at the end
    ([2], [0, 0, 1]),
])
def test_canonical_true_accepts_canonical_rows(indices, offsets):
    t = SparseTargets(torch.tensor(indices), torch.tensor(offsets), None, num_classes=4, canonical=True)
    assert t.indices.tolist() == indices
