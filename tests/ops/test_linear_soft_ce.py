"""linear_soft_target_cross_entropy against the unfused float64 reference (features @ W.T + b)."""
import random

import pytest
import torch

from wslfast.nn import LinearSoftTargetCrossEntropy
from wslfast.ops import SparseTargets, linear_soft_target_cross_entropy
from wslfast.ops.soft_ce import default_chunk_size

from soft_ce_reference import dense_target, random_rows, reference_loss


def make_case(B, D, V, seed, dtype=torch.float32, bias=True):
    gen = random.Random(seed)
    rows, _ = random_rows(B, V, min(V, 6), gen)
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(V, D, generator=g, dtype=torch.float64) / D ** 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    return f, w, b, SparseTargets.from_lists(rows, V), dense_target(rows, V)


def reference(f, w, b, dense, reduction):
    f, w = f.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b = None if b is None else b.detach().double().requires_grad_()
    loss = reference_loss(torch.nn.functional.linear(f, w, b), dense, reduction)
    return loss, (f, w, b)


@pytest.mark.parametrize("B,D,V,chunk", [(1, 1, 1, 1), (3, 5, 7, 3), (6, 17, 101, 16), (9, 32, 300, 128),
                                         (4, 8, 257, 257), (5, 3, 64, 1000)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_unfused_reference(B, D, V, chunk, bias, reduction):
    f, w, b, targets, dense = make_case(B, D, V, seed=B + D + V, bias=bias)
    ff, ww = f.float().requires_grad_(), w.float().requires_grad_()
    bb = None if b is None else b.float().requires_grad_()
    loss = linear_soft_target_cross_entropy(ff, ww, bb, targets, reduction, chunk_size=chunk)
    ref, (rf, rw, rb) = reference(f, w, b, dense, reduction)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    up = torch.randn_like(ref)
    (loss.double() * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(ff.grad.double(), rf.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ww.grad.double(), rw.grad, rtol=1e-4, atol=1e-5)
    if bias:
        torch.testing.assert_close(bb.grad.double(), rb.grad, rtol=1e-4, atol=1e-5)


def test_gradcheck_float64():
    f, w, b, targets, _ = make_case(4, 3, 11, seed=5)
    args = (f.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda f, w, b: linear_soft_target_cross_entropy(f, w, b, targets, "none", chunk_size=4), args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_pytorchs_own_error(dtype):
    f, w, b, targets, dense = make_case(16, 64, 500, seed=9)
    ref, (rf, rw, rb) = reference(f, w, b, dense, "mean")
    ref.backward()
    # PyTorch in the same dtype: linear + log_softmax, dense target
    tf, tw, tb = (x.to(dtype).requires_grad_() for x in (f, w, b))
    theirs = reference_loss_lowp(tf, tw, tb, dense.to(dtype))
    theirs.backward()
    of, ow, ob = (x.to(dtype).requires_grad_() for x in (f, w, b))
    ours = linear_soft_target_cross_entropy(of, ow, ob, targets, chunk_size=96)
    ours.backward()
    eps = torch.finfo(dtype).eps
    assert abs(ours.double() - ref) <= 2 * abs(theirs.double() - ref) + eps
    for o, t, r in ((of, tf, rf), (ow, tw, rw), (ob, tb, rb)):
        assert o.grad.dtype == dtype
        assert (o.grad.double() - r.grad).abs().max() <= 2 * (t.grad.double() - r.grad).abs().max() + eps * 1e-2


def reference_loss_lowp(f, w, b, dense):
    z = torch.nn.functional.linear(f, w, b)
    rows = -(dense * torch.log_softmax(z, -1)).sum(-1)
    return rows.float().mean()


def test_default_chunk_is_bounded_and_aligned():
    assert default_chunk_size(2048, 131072, torch.float32) == 8192
    assert default_chunk_size(4, 100, torch.float32) == 100
    assert default_chunk_size(4096, 1 << 20, torch.bfloat16) % 8 == 0


def test_opcheck():
    f, w, b, targets, _ = make_case(5, 7, 40, seed=3)
    args = (f.float().requires_grad_(), w.float().requires_grad_(), b.float().requires_grad_(), targets.indices,
            targets.offsets, targets.weights, 16)
    torch.library.opcheck(torch.ops.wslfast.linear_soft_ce.default, args)
    args = (f.float(), w.float(), None, targets.indices, targets.offsets, targets.weights, 16)
    torch.library.opcheck(torch.ops.wslfast.linear_soft_ce.default, args)


def test_torch_compile_fullgraph():
    f, w, b, targets, _ = make_case(6, 8, 50, seed=4)
    head = LinearSoftTargetCrossEntropy(8, 50, chunk_size=16)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(x, t):
        return head(torch.relu(x), t)

    x = f.float().requires_grad_()
    loss = step(x, targets)
    ref = linear_soft_target_cross_entropy(torch.relu(f.float()), head.weight, head.bias, targets, chunk_size=16)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert x.grad is not None and head.weight.grad is not None


def test_module_logits_match_loss():
    f, _, _, targets, dense = make_case(3, 4, 9, seed=8)
    head = LinearSoftTargetCrossEntropy(4, 9, reduction="sum")
    loss = head(f.float(), targets)
    torch.testing.assert_close(loss.double(), reference_loss(head.logits(f.float()).double(), dense, "sum"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,exc,match", [
    (lambda f, w, b: (f[:, :3], w, b), RuntimeError, "D = 3"),
    (lambda f, w, b: (f, w, b[:5]), RuntimeError, r"bias must be \[V\]"),
    (lambda f, w, b: (f.double(), w, b), RuntimeError, "features are Double"),
    (lambda f, w, b: (f.long(), w, b), TypeError, "features must be float32"),
    (lambda f, w, b: (f, w[:8], b[:8]), ValueError, "num_classes"),
    (lambda f, w, b: (f[:2], w, b), ValueError, "batch_size"),
])
def test_bad_inputs(make, exc, match):
    f, w, b, targets, _ = make_case(3, 4, 9, seed=1)
    f, w, b = make(f.float(), w.float(), b.float())
    with pytest.raises(exc, match=match):
        linear_soft_target_cross_entropy(f, w, b, targets)


def test_bad_chunk_size():
    f, w, b, targets, _ = make_case(2, 3, 5, seed=1)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_soft_target_cross_entropy(f.float(), w.float(), b.float(), targets, chunk_size=0)
