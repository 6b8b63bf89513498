"""conv_bn_relu on CPU against F.conv2d -> F.batch_norm -> F.relu (float64 as ground truth)."""
import pytest
import torch
import torch.nn.functional as F

from wslfast.ops import conv_bn_relu

# (N, C, H, W, K, groups, kernel, stride, padding): grouped 3x3 (ResNeXt), strided, odd and prime sizes,
# 1x1 (groups 1) and its strided downsample form, depthwise, a single sample, a 1x1 output.
CASES = [
    (2, 64, 9, 7, 64, 32, 3, 1, 1),
    (3, 64, 11, 13, 64, 32, 3, 2, 1),
    (2, 24, 5, 5, 40, 1, 1, 1, 0),
    (2, 24, 7, 9, 40, 1, 1, 2, 0),
    (1, 6, 3, 17, 6, 6, 3, 1, 1),
    (5, 14, 3, 3, 14, 2, 3, 2, 0),
    (2, 8, 6, 6, 16, 4, 5, 1, 2),
]


def reference(x, w, g, b, rm, rv, *, stride, padding, groups, training, momentum=0.1, eps=1e-5, relu=True):
    y = F.batch_norm(F.conv2d(x, w, None, stride, padding, 1, groups), rm, rv, g, b, training, momentum, eps)
    return F.relu(y) if relu else y


def make(case, dtype=torch.float64, channels_last=False, seed=0):
    n, c, h, w_, k, groups, kern, stride, pad = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w_, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(k, c // groups, kern, kern, generator=gen, dtype=dtype) / (c // groups * kern * kern) ** 0.5
    g = 1 + 0.3 * torch.randn(k, generator=gen, dtype=dtype)
    b = 0.3 * torch.randn(k, generator=gen, dtype=dtype)
    rm = 0.1 * torch.randn(k, generator=gen, dtype=dtype)
    rv = 1 + 0.2 * torch.rand(k, generator=gen, dtype=dtype)
    return x, w, g, b, rm, rv, dict(stride=stride, padding=pad, groups=groups)


def value_and_grads(fn, x, w, g, b, rm, rv, dy_seed=1, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, g, b)]
    y = fn(*leaves, rm, rv, **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed), dtype=y.dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    return y.detach(), grads


def assert_close_all(ours, ref, **tol):
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_training_float64_matches_reference(case, channels_last, relu):
    x, w, g, b, rm, rv, kw = make(case, channels_last=channels_last)
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    y, grads = value_and_grads(conv_bn_relu, x, w, g, b, rm1, rv1, training=True, relu=relu, **kw)
    y_ref, grads_ref = value_and_grads(reference, x, w, g, b, rm2, rv2, training=True, relu=relu, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert_close_all(grads, grads_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rm1, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("relu", [True, False])
def test_eval_float64_matches_reference(case, relu):
    x, w, g, b, rm, rv, kw = make(case, channels_last=True)
    y, grads = value_and_grads(conv_bn_relu, x, w, g, b, rm, rv, training=False, relu=relu, **kw)
    y_ref, grads_ref = value_and_grads(reference, x, w, g, b, rm, rv, training=False, relu=relu, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert_close_all(grads, grads_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_close_to_float64(channels_last):
    case = (4, 128, 14, 14, 128, 32, 3, 1, 1)
    x, w, g, b, rm, rv, kw = make(case, channels_last=channels_last)
    y64, gr64 = value_and_grads(reference, x, w, g, b, rm.clone(), rv.clone(), training=True, **kw)
    f = [t.float() for t in (x, w, g, b, rm, rv)]
    y32, gr32 = value_and_grads(conv_bn_relu, *f, training=True, **kw)
    yt, grt = value_and_grads(reference, *[t.float() for t in (x, w, g, b, rm, rv)], training=True, **kw)
    # Ours is within 2x PyTorch's own float32 error (plus a hair) against the float64 truth.
    for ours, theirs, truth in zip((y32, *gr32), (yt, *grt), (y64, *gr64)):
        err = (ours.double() - truth).abs().max().item()
        err_ref = (theirs.double() - truth).abs().max().item()
        assert err <= 2 * err_ref + 1e-6 * truth.abs().max().item(), (err, err_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_pytorch(dtype):
    case = (2, 64, 9, 9, 64, 32, 3, 1, 1)
    x, w, g, b, rm, rv, kw = make(case, channels_last=True)
    truth, truth_g = value_and_grads(reference, x.float(), w.float(), g.float(), b.float(), rm.float().clone(),
                                     rv.float().clone(), training=True, **kw)
    xs, ws = x.to(dtype), w.to(dtype)
    ours, ours_g = value_and_grads(conv_bn_relu, xs, ws, g.float(), b.float(), rm.float().clone(), rv.float().clone(),
                                   training=True, **kw)
    theirs, theirs_g = value_and_grads(reference, xs, ws, g.to(dtype), b.to(dtype), rm.to(dtype).clone(),
                                       rv.to(dtype).clone(), training=True, **kw)
    assert ours.dtype == dtype
    for o, t, r in zip((ours, *ours_g[:2]), (theirs, *theirs_g[:2]), (truth, *truth_g[:2])):
        err = (o.float() - r).abs().max().item()
        err_ref = (t.float() - r).abs().max().item()
        assert err <= 2 * err_ref + 1e-3 * r.abs().max().item(), (err, err_ref)


def test_running_stats_over_steps_and_formats_agree():
    case = (3, 32, 7, 7, 32, 8, 3, 1, 1)
    x, w, g, b, rm, rv, kw = make(case)
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    for step in range(4):
        xs = x * (1 + step) + step
        y1 = conv_bn_relu(xs.contiguous(memory_format=torch.channels_last), w, g, b, rm1, rv1, momentum=0.3, **kw)
        y2 = reference(xs, w, g, b, rm2, rv2, training=True, momentum=0.3, **kw)
        torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rm1, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)
    y_nchw = conv_bn_relu(x, w, g, b, rm1, rv1, training=False, **kw)
    y_nhwc = conv_bn_relu(x.contiguous(memory_format=torch.channels_last), w, g, b, rm1, rv1, training=False, **kw)
    torch.testing.assert_close(y_nchw, y_nhwc, rtol=1e-12, atol=1e-12)


def test_large_mean_does_not_cancel_variance():
    # A channel mean 1e4 times its spread: E[z^2] - E[z]^2 in float32 would lose the variance.
    case = (2, 16, 8, 8, 16, 4, 3, 1, 1)
    x, w, g, b, rm, rv, kw = make(case)
    x = (x + 300.0).float()
    w = w.float()
    y = conv_bn_relu(x, w, g.float(), b.float(), rm.float().clone(), rv.float().clone(), **kw)
    y_ref = reference(x.double(), w.double(), g, b, rm.clone(), rv.clone(), training=True, **kw)
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_input_gives_nan_batch_variance_and_running_variance_as_batch_norm(dtype):
    # One NaN pixel in group 1's input channels: that group's output channels get NaN batch mean and variance,
    # so a NaN running variance and NaN outputs, as the stock conv2d -> batch_norm chain gives (a clamp of the
    # variance at 0 had turned NaN into 0 and a finite running variance); the other channels are untouched.
    case = (2, 8, 5, 5, 8, 2, 3, 1, 1)
    x, w, g, b, rm, rv, kw = make(case, dtype=dtype)
    x[1, 5, 2, 3] = float("nan")  # channel 5: group 1 (input channels 4-7, output channels 4-7)
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    y = conv_bn_relu(x.contiguous(memory_format=torch.channels_last), w, g, b, rm1, rv1, **kw)
    y_ref = reference(x, w, g, b, rm2, rv2, training=True, **kw)
    assert torch.isnan(rv2[4:]).all() and torch.isfinite(rv2[:4]).all()  # what the reference does
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm1, rm2, equal_nan=True, **tol)
    torch.testing.assert_close(rv1, rv2, equal_nan=True, **tol)
    torch.testing.assert_close(y, y_ref, equal_nan=True, **tol)
    _, _, mean, var = torch.ops.wslfast.conv_bn_relu_train(x.contiguous(memory_format=torch.channels_last), w, g, b,
                                                           None, 1, 1, 2, 1e-5, True)
    assert torch.isnan(mean[4:]).all() and torch.isnan(var[4:]).all()
    assert torch.isfinite(mean[:4]).all() and torch.isfinite(var[:4]).all()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck(training, relu):
    x, w, g, b, rm, rv, kw = make((2, 4, 5, 4, 6, 2, 3, 2, 1))
    leaves = [t.clone().requires_grad_() for t in (x, w, g, b)]

    def fn(x_, w_, g_, b_):
        return conv_bn_relu(x_, w_, g_, b_, rm.clone(), rv.clone(), training=training, relu=relu, **kw)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_opcheck():
    x, w, g, b, rm, rv, kw = make((2, 8, 5, 6, 8, 4, 3, 1, 1))
    for fmt in (torch.contiguous_format, torch.channels_last):
        xs = x.contiguous(memory_format=fmt).requires_grad_()
        wr, gr, br = w.requires_grad_(), g.requires_grad_(), b.requires_grad_()
        conv = (kw["stride"], kw["padding"], kw["groups"], 1e-5, True)
        out_shape = (x.shape[0], w.shape[0], x.shape[2], x.shape[3])
        res = torch.randn(out_shape, dtype=x.dtype).contiguous(memory_format=fmt).requires_grad_()
        args = (xs, wr, gr, br, None, *conv)
        torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_train.default, args)
        torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_train.default, (xs, wr, gr, br, res, *conv))
        eval_args = (xs, wr, gr, br, rm, rv, None, *conv)
        torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_eval.default, eval_args)
        torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_eval.default, (xs, wr, gr, br, rm, rv, res, *conv))
        # The backward ops are not differentiable themselves: schema and fake kernels only.
        y, z, mean, var = torch.ops.wslfast.conv_bn_relu_train(*[a.detach() if torch.is_tensor(a) else a for a in args])
        utils = ("test_schema", "test_faketensor")
        torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_train_backward.default,
                              (torch.randn_like(y), xs.detach(), w.detach(), z, g.detach(), b.detach(), mean, var,
                               kw["stride"], kw["padding"], kw["groups"], 1e-5, True), test_utils=utils)
        torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_eval_backward.default,
                              (torch.randn_like(y), y, xs.detach(), w.detach(), g.detach(), rm, rv, kw["stride"],
                               kw["padding"], kw["groups"], 1e-5, True), test_utils=utils)


def test_torch_compile_matches_eager():
    x, w, g, b, rm, rv, kw = make((2, 16, 6, 6, 16, 4, 3, 1, 1), dtype=torch.float32, channels_last=True)
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()

    def step(x_, w_, g_, b_, m_, v_):
        return conv_bn_relu(x_, w_, g_, b_, m_, v_, **kw).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    leaves1 = [t.clone().requires_grad_() for t in (x, w, g, b)]
    leaves2 = [t.clone().requires_grad_() for t in (x, w, g, b)]
    loss1 = compiled(*leaves1, rm1, rv1)
    loss2 = step(*leaves2, rm2, rv2)
    loss1.backward()
    loss2.backward()
    torch.testing.assert_close(loss1, loss2)
    for a, c in zip(leaves1, leaves2):
        torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(rm1, rm2)
    torch.testing.assert_close(rv1, rv2)


def test_bf16_autocast_casts_like_conv2d():
    x, w, g, b, rm, rv, kw = make((2, 16, 6, 6, 16, 4, 3, 1, 1), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv_bn_relu(x, w, g, b, rm.clone(), rv.clone(), **kw)
    assert y.dtype == torch.bfloat16
    y_ref = reference(x, w, g, b, rm.clone(), rv.clone(), training=True, **kw)
    torch.testing.assert_close(y.float(), y_ref, rtol=5e-2, atol=5e-2)


def test_bad_inputs_raise_clear_errors():
    x, w, g, b, rm, rv, kw = make((2, 8, 5, 5, 8, 4, 3, 1, 1), dtype=torch.float32)
    with pytest.raises(ValueError, match="4-D"):
        conv_bn_relu(x[0], w, g, b, rm, rv, **kw)
    with pytest.raises(ValueError, match="channels"):
        conv_bn_relu(x, w, g, b, rm, rv, stride=1, padding=1, groups=2)
    with pytest.raises(ValueError, match="channels"):
        conv_bn_relu(x[:, :6], w, g, b, rm, rv, **kw)
    with pytest.raises(TypeError, match="dtype"):
        conv_bn_relu(x, w.double(), g, b, rm, rv, **kw)
    with pytest.raises(TypeError, match="float"):
        conv_bn_relu(x.long(), w.long(), g, b, rm, rv, **kw)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv_bn_relu(x[:1, :, :1, :1], w, g, b, rm, rv, stride=1, padding=0, groups=4)
    with pytest.raises(ValueError, match="stride"):
        conv_bn_relu(x, w, g, b, rm, rv, stride=0, padding=1, groups=4)
    with pytest.raises(ValueError, match="running"):
        conv_bn_relu(x, w, g, b, None, None, training=False, **kw)
    with pytest.raises(RuntimeError, match="bn_weight"):
        conv_bn_relu(x, w, g[:5], b, rm, rv, **kw)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        conv_bn_relu(x[:, :, :1, :1], w, g, b, rm, rv, stride=1, padding=0, groups=4)


def test_batch_statistics_without_running_stats():
    x, w, g, b, rm, rv, kw = make((2, 8, 5, 5, 8, 4, 3, 1, 1))
    y = conv_bn_relu(x, w, g, b, None, None, training=True, **kw)
    torch.testing.assert_close(y, reference(x, w, g, b, None, None, training=True, **kw), rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    x, w, g, b, rm, rv, kw = make((2, 16, 6, 6, 16, 4, 3, 1, 1), dtype=torch.float32, channels_last=True)
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()

    def step(x_, w_, g_, b_, m_, v_):
        return conv_bn_relu(x_, w_, g_, b_, m_, v_, **kw).square().sum()

    leaves1 = [t.clone().requires_grad_() for t in (x, w, g, b)]
    leaves2 = [t.clone().requires_grad_() for t in (x, w, g, b)]
    torch.compile(step, fullgraph=True)(*leaves1, rm1, rv1).backward()
    step(*leaves2, rm2, rv2).backward()
    for a, c in zip(leaves1, leaves2):
        torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(rm1, rm2)
    torch.testing.assert_close(rv1, rv2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_running_stats_update_matches_pytorch_rule(dtype):
    # (1 - m) * running + m * batch, with the unbiased variance, as F.batch_norm does it.
    gen = torch.Generator().manual_seed(3)
    rm, rv = torch.randn(37, generator=gen).to(dtype), torch.rand(37, generator=gen).to(dtype) + 0.5
    mean, var = torch.randn(37, generator=gen), torch.rand(37, generator=gen)
    want_m = (0.7 * rm.double() + 0.3 * mean.double()).to(dtype)
    want_v = (0.7 * rv.double() + 0.3 * var.double() * 10 / 9).to(dtype)
    torch.ops.wslfast.bn_update_running_stats(rm, rv, mean, var, 0.3, 10)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rm, want_m, **tol)
    torch.testing.assert_close(rv, want_v, **tol)


def test_running_stats_update_opcheck_and_bad_inputs():
    rm, rv, mean, var = torch.zeros(8), torch.ones(8), torch.randn(8), torch.rand(8)
    torch.library.opcheck(torch.ops.wslfast.bn_update_running_stats.default, (rm, rv, mean, var, 0.1, 5))
    op = torch.ops.wslfast.bn_update_running_stats
    with pytest.raises(RuntimeError, match="running_var must be 1-D with 8"):
        op(rm, torch.ones(7), mean, var, 0.1, 5)
    with pytest.raises(RuntimeError, match="count must be > 1"):
        op(rm, rv, mean, var, 0.1, 1)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(torch.zeros(16)[::2], rv, mean, var, 0.1, 5)
    with pytest.raises(RuntimeError, match="momentum must be finite"):
        op(rm, rv, mean, var, float("nan"), 5)
    with pytest.raises(RuntimeError, match="floating point"):
        op(rm, rv, mean.long(), var, 0.1, 5)
    assert torch.equal(rm, torch.zeros(8)) and torch.equal(rv, torch.ones(8))  # nothing written on error
