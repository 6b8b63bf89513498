"""conv_bn_relu(..., residual=r) = relu(batch_norm(conv2d(x)) + r), a ResNet block's tail, on CPU against
the F.* chain in float64: values, the five gradients, running statistics, gradcheck, compile, bad input."""
import pytest
import torch
import torch.nn.functional as F

from wslfast.ops import conv_bn_relu

# (N, C, H, W, K, groups, kernel, stride, padding)
CASES = [(2, 64, 9, 7, 64, 32, 3, 1, 1), (3, 64, 11, 13, 128, 32, 3, 2, 1), (2, 24, 5, 5, 40, 1, 1, 1, 0)]


def reference(x, w, g, b, rm, rv, r, *, stride, padding, groups, training, relu=True):
    y = F.batch_norm(F.conv2d(x, w, None, stride, padding, 1, groups), rm, rv, g, b, training, 0.1, 1e-5) + r
    return F.relu(y) if relu else y


def ours(x, w, g, b, rm, rv, r, *, training, relu=True, **kw):
    return conv_bn_relu(x, w, g, b, rm, rv, training=training, relu=relu, residual=r, **kw)


def make(case, channels_last, seed=0):
    n, c, h, w_, k, groups, kern, stride, pad = case
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w_, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(k, c // groups, kern, kern, generator=gen, dtype=torch.float64) / (c // groups * kern * kern) ** 0.5
    g = 1 + 0.3 * torch.randn(k, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(k, generator=gen, dtype=torch.float64)
    rm = 0.1 * torch.randn(k, generator=gen, dtype=torch.float64)
    rv = 1 + 0.2 * torch.rand(k, generator=gen, dtype=torch.float64)
    p, q = (h + 2 * pad - kern) // stride + 1, (w_ + 2 * pad - kern) // stride + 1
    r = torch.randn(n, k, p, q, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    return x, w, g, b, rm, rv, r, dict(stride=stride, padding=pad, groups=groups)


def run(fn, x, w, g, b, rm, rv, r, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, g, b, r)]
    rm, rv = rm.clone(), rv.clone()
    y = fn(*leaves[:4], rm, rv, leaves[4], **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy), rm, rv]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_matches_reference_float64(case, channels_last, training, relu):
    x, w, g, b, rm, rv, r, kw = make(case, channels_last)
    got = run(ours, x, w, g, b, rm, rv, r, training=training, relu=relu, **kw)
    want = run(reference, x, w, g, b, rm, rv, r, training=training, relu=relu, **kw)
    names = ["y", "grad_x", "grad_w", "grad_gamma", "grad_beta", "grad_residual", "running_mean", "running_var"]
    for name, a, e in zip(names, got, want):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(training):
    x, w, g, b, rm, rv, r, kw = make((2, 4, 5, 4, 6, 2, 3, 2, 1), False)
    leaves = [t.clone().requires_grad_() for t in (x, w, g, b, r)]

    def fn(x_, w_, g_, b_, r_):
        return conv_bn_relu(x_, w_, g_, b_, rm.clone(), rv.clone(), training=training, residual=r_, **kw)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_bf16_autocast_casts_the_residual_too():
    x, w, g, b, rm, rv, r, kw = make(CASES[0], True)
    x, w, g, b, r = x.float(), w.float(), g.float(), b.float(), r.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv_bn_relu(x, w, g, b, rm.float().clone(), rv.float().clone(), residual=r, **kw)
    assert y.dtype == torch.bfloat16
    want = reference(x, w, g, b, rm.float().clone(), rv.float().clone(), r, training=True, **kw)
    torch.testing.assert_close(y.float(), want, rtol=5e-2, atol=5e-2)


def test_torch_compile_matches_eager():
    x, w, g, b, rm, rv, r, kw = make(CASES[0], True)

    def step(*t):
        return conv_bn_relu(*t[:4], t[5], t[6], residual=t[4], **kw).square().sum()

    leaves1 = [t.float().clone().requires_grad_() for t in (x, w, g, b, r)]
    leaves2 = [t.float().clone().requires_grad_() for t in (x, w, g, b, r)]
    stats1 = [rm.float().clone(), rv.float().clone()]
    stats2 = [rm.float().clone(), rv.float().clone()]
    torch.compile(step, backend="aot_eager", fullgraph=True)(*leaves1, *stats1).backward()
    step(*leaves2, *stats2).backward()
    for a, c in zip(leaves1 + stats1, leaves2 + stats2):
        torch.testing.assert_close(a.grad if a.requires_grad else a, c.grad if c.requires_grad else c)


def test_bad_residual_raises_clear_errors():
    x, w, g, b, rm, rv, r, kw = make(CASES[1], False)
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        conv_bn_relu(x, w, g, b, rm, rv, residual=r[:, :, :-1], **kw)
    with pytest.raises(TypeError, match="residual dtype"):
        conv_bn_relu(x, w, g, b, rm, rv, residual=r.float(), **kw)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):  # the op's own check
        torch.ops.wslfast.conv_bn_relu_train(x, w, g, b, r[:1], kw["stride"], kw["padding"], kw["groups"], 1e-5,
                                             True)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        torch.ops.wslfast.conv_bn_relu_eval(x, w, g, b, rm, rv, r[:1], kw["stride"], kw["padding"], kw["groups"],
                                            1e-5, True)
