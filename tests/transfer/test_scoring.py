"""Top-k counts against brute force (ties, fewer than 5 classes) and percentages."""
import pytest
import torch

from wslfast.transfer import topk_hits, topk_percent


@pytest.mark.parametrize("n,c", [(1, 2), (7, 3), (13, 5), (29, 11)])
def test_topk_hits_against_brute_force(n, c):
    g = torch.Generator().manual_seed(n * c)
    logits, labels = torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
    h1 = h5 = 0
    for row, label in zip(logits.tolist(), labels.tolist()):
        ranked = sorted(range(c), key=lambda j: -row[j])
        h1 += ranked[0] == label
        h5 += label in ranked[:5]
    assert topk_hits(logits, labels).tolist() == [h1, h5, n]
    top1, top5 = topk_percent(topk_hits(logits, labels), c)
    assert top1 == pytest.approx(100 * h1 / n) and (top5 is None) == (c <= 5)


def test_hits_add_up_over_batches_and_bad_shapes():
    logits, labels = torch.randn(10, 7), torch.randint(0, 7, (10,))
    assert torch.equal(topk_hits(logits[:4], labels[:4]) + topk_hits(logits[4:], labels[4:]), topk_hits(logits, labels))
    with pytest.raises(ValueError, match="need logits"):
        topk_hits(logits, labels[:3])
    with pytest.raises(ValueError, match="no samples"):
        topk_percent(torch.zeros(3), 7)
