"""mixup_batch + mixup_cross_entropy against a plain dense reference (float64)."""
import pytest
import torch

from wslfast.transfer import mixup_batch, mixup_cross_entropy


def dense_reference(logits, labels, perm, lam, num_classes, eps):
    t = lam * torch.nn.functional.one_hot(labels, num_classes).double() + \
        (1 - lam) * torch.nn.functional.one_hot(labels[perm], num_classes).double()
    t = (1 - eps) * t + eps / num_classes
    return -(t * torch.log_softmax(logits.double(), 1)).sum(1).mean()


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixup_matches_the_dense_reference(eps):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 4, 1, 3])
    mixed, targets, lam, perm = mixup_batch(images, labels, 5, alpha=0.4, generator=g)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[perm])
    logits = torch.randn(6, 5, requires_grad=True)  # the op takes fp32/bf16/fp16
    loss = mixup_cross_entropy(logits, targets, label_smoothing=eps)
    want = dense_reference(logits, labels, perm, lam, 5, eps)
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-7)
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g1.double(), g2.double(), rtol=1e-5, atol=1e-7)


def test_seeded_mixup_is_reproducible_and_alpha_zero_is_off():
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([1, 0, 1, 2])
    a = mixup_batch(x, y, 3, 0.1, torch.Generator().manual_seed(5))
    b = mixup_batch(x, y, 3, 0.1, torch.Generator().manual_seed(5))
    assert a[2] == b[2] and torch.equal(a[3], b[3]) and torch.equal(a[0], b[0])
    mixed, targets, lam, perm = mixup_batch(x, y, 3, 0.0)
    assert lam == 1.0 and torch.equal(mixed, x) and torch.equal(perm, torch.arange(4))
    torch.testing.assert_close(targets.to_dense(), torch.nn.functional.one_hot(y, 3).float())


def test_lam_is_beta_distributed():
    g = torch.Generator().manual_seed(1)
    x, y = torch.zeros(2, 1), torch.tensor([0, 1])
    lams = torch.tensor([mixup_batch(x, y, 2, 0.1, g)[2] for _ in range(500)])
    # Beta(0.1, 0.1): mean 1/2 (sd of a 500-mean ~0.02), mostly near 0 or 1 (P(0.1 < lam < 0.9) ~ 0.13)
    assert abs(lams.mean().item() - 0.5) < 0.08
    assert ((lams > 0.1) & (lams < 0.9)).float().mean().item() < 0.2


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels must be"):
        mixup_batch(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), 2, 0.1)
    _, t, _, _ = mixup_batch(torch.zeros(2, 2), torch.tensor([0, 1]), 2, 0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        mixup_cross_entropy(torch.zeros(2, 2), t, label_smoothing=1.0)
