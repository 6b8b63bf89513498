"""conv_bn_relu on CUDA: each implementation (simple, tensor-core) against the CPU float64 reference and
against each other, on the real ResNeXt stage shapes. If one fails and the other passes, the failing one
is wrong; the *_kernels tests isolate the convolution itself from the BN passes."""
import pytest
import torch
import torch.nn.functional as F

from wslfast.ops import conv_bn_relu

pytestmark = pytest.mark.cuda

# (N, C, H, W, groups, stride): stage shapes of 32x4d / 32x8d / 32x16d (3x3 grouped), small batches,
# plus stride 2, odd sizes, and 1x1 convs with groups 1 (bottleneck reduce / expand / downsample).
STAGE_CASES = [
    (4, 128, 56, 56, 32, 1), (4, 256, 28, 28, 32, 1), (4, 512, 14, 14, 32, 1), (4, 1024, 7, 7, 32, 1),
    (2, 256, 56, 56, 32, 2), (2, 2048, 7, 7, 32, 1), (3, 256, 15, 13, 32, 2),
]
ONE_BY_ONE = [(4, 256, 28, 28, 512, 1), (4, 512, 28, 28, 1024, 2), (3, 64, 9, 11, 256, 1)]


def inputs(case, dtype, kernel=3, k_out=None, seed=0):
    n, c, h, w_, groups, stride = case
    k = k_out or c
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w_, generator=gen, dtype=torch.float64)
    w = torch.randn(k, c // groups, kernel, kernel, generator=gen, dtype=torch.float64) / (c // groups * kernel ** 2) ** 0.5
    g = 1 + 0.2 * torch.randn(k, generator=gen, dtype=torch.float64)
    b = 0.2 * torch.randn(k, generator=gen, dtype=torch.float64)
    rm = 0.1 * torch.randn(k, generator=gen, dtype=torch.float64)
    rv = 1 + 0.2 * torch.rand(k, generator=gen, dtype=torch.float64)
    dy = torch.randn(n, k, (h + 2 * (kernel // 2) - kernel) // stride + 1, (w_ + 2 * (kernel // 2) - kernel) // stride + 1,
                     generator=gen, dtype=torch.float64)
    # Round to the storage dtype first so every implementation sees the same values.
    x, w, dy = (t.to(dtype).double() for t in (x, w, dy))
    return x, w, g, b, rm, rv, dy, dict(stride=stride, padding=kernel // 2, groups=groups)


def run(fn, device, dtype, x, w, g, b, rm, rv, dy, training, **kw):
    xs = x.to(device, dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    ws = w.to(device, dtype).requires_grad_()
    coef = torch.float64 if dtype == torch.float64 else torch.float32
    gs, bs = g.to(device, coef).requires_grad_(), b.to(device, coef).requires_grad_()
    rms, rvs = rm.to(device, coef), rv.to(device, coef)
    y = fn(xs, ws, gs, bs, rms, rvs, training=training, **kw)
    y.backward(dy.to(device, y.dtype))
    return [t.detach().double().cpu() for t in (y, xs.grad, ws.grad, gs.grad, bs.grad, rms, rvs)]


def reference(x, w, g, b, rm, rv, *, training, stride, padding, groups, relu=True):
    y = F.batch_norm(F.conv2d(x, w, None, stride, padding, 1, groups), rm, rv, g, b, training, 0.1, 1e-5)
    return F.relu(y) if relu else y


def ours(x, w, g, b, rm, rv, *, training, **kw):
    return conv_bn_relu(x, w, g, b, rm, rv, training=training, **kw)


def check(got, want, what, rel):
    names = ["y", "grad_x", "grad_w", "grad_gamma", "grad_beta", "running_mean", "running_var"]
    for name, a, b in zip(names, got, want):
        scale = b.abs().max().item() + 1e-12
        err = (a - b).abs().max().item() / scale
        assert err <= rel, f"{what}: {name} max error {err:.2e} of its scale (allowed {rel:.0e})"


IMPLS = ["simple", "fast"]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", request.param)
    return request.param


@pytest.mark.parametrize("case", STAGE_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_stage_shapes_bf16_against_cpu_float64(impl, case, training):
    dtype = torch.bfloat16
    x, w, g, b, rm, rv, dy, kw = inputs(case, dtype)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, training, **kw)
    got = run(ours, "cuda", dtype, x, w, g, b, rm, rv, dy, training, **kw)
    check(got, want, f"{impl} {case} training={training}", rel=3e-2)


@pytest.mark.parametrize("case", ONE_BY_ONE)
def test_one_by_one_groups_1(impl, case):
    n, c, h, w_, k, stride = case
    x, w, g, b, rm, rv, dy, kw = inputs((n, c, h, w_, 1, stride), torch.bfloat16, kernel=1, k_out=k)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, True, **kw)
    got = run(ours, "cuda", torch.bfloat16, x, w, g, b, rm, rv, dy, True, **kw)
    check(got, want, f"{impl} 1x1 {case}", rel=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("training", [True, False])
def test_other_dtypes(impl, dtype, training):
    # float32: the simple kernels keep full float32; the tensor-core ones use TF32 operands (10-bit mantissa).
    x, w, g, b, rm, rv, dy, kw = inputs((2, 256, 14, 14, 32, 1), dtype)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, training, **kw)
    got = run(ours, "cuda", dtype, x, w, g, b, rm, rv, dy, training, **kw)
    check(got, want, f"{impl} {dtype}", rel=1e-4 if (dtype == torch.float32 and impl == "simple") else 1e-2)


def test_float32_follows_allow_tf32(monkeypatch):
    # TF32 off: auto takes the simple kernels (full float32 accuracy) and "fast" refuses.
    x, w, g, b, rm, rv, dy, kw = inputs((2, 128, 9, 9, 32, 1), torch.float32)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, True, **kw)
    import wslfast.ops.conv_bn as mod
    monkeypatch.setattr(mod, "_warned_float32_cuda", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", "auto")
    with pytest.warns(UserWarning, match="allow_tf32"):
        got = run(ours, "cuda", torch.float32, x, w, g, b, rm, rv, dy, True, **kw)
    check(got, want, "float32 without TF32", rel=1e-4)
    monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", "fast")
    with pytest.raises(RuntimeError, match="allow_tf32"):
        run(ours, "cuda", torch.float32, x, w, g, b, rm, rv, dy, True, **kw)


def test_unaligned_views_are_copied_not_misread(impl):
    # A channels_last view that starts 2 elements into its storage: 16-byte vector loads would be misaligned.
    x, w, g, b, rm, rv, dy, kw = inputs((2, 128, 9, 9, 32, 1), torch.bfloat16)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, True, **kw)
    base = torch.empty(x.numel() + 2, device="cuda", dtype=torch.bfloat16)
    xs = base[2:].view(2, 9, 9, 128).permute(0, 3, 1, 2)
    xs.copy_(x.to("cuda", torch.bfloat16))
    y = conv_bn_relu(xs, w.to("cuda", torch.bfloat16), g.to("cuda", torch.float32), b.to("cuda", torch.float32),
                     training=True, **kw)
    torch.testing.assert_close(y.double().cpu(), want[0], rtol=3e-2, atol=3e-2 * want[0].abs().max().item())


@pytest.mark.parametrize("training", [True, False])
def test_without_relu(impl, training):
    # relu=False: no mask in the fused backward (train: p, q terms; eval: plain g = dy).
    x, w, g, b, rm, rv, dy, kw = inputs((3, 256, 15, 13, 32, 2), torch.bfloat16)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, training, relu=False, **kw)
    got = run(ours, "cuda", torch.bfloat16, x, w, g, b, rm, rv, dy, training, relu=False, **kw)
    check(got, want, f"{impl} relu=False training={training}", rel=3e-2)


def test_nchw_input_and_gradient(impl):
    # Contiguous NCHW x and grad_y (what autograd hands over after a permute) give the same results.
    x, w, g, b, rm, rv, dy, kw = inputs((2, 128, 9, 11, 32, 1), torch.bfloat16)
    want = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, True, **kw)
    xs = x.to("cuda", torch.bfloat16).contiguous().requires_grad_()
    ws = w.to("cuda", torch.bfloat16).requires_grad_()
    gs, bs = g.to("cuda", torch.float32).requires_grad_(), b.to("cuda", torch.float32).requires_grad_()
    rms, rvs = rm.to("cuda", torch.float32), rv.to("cuda", torch.float32)
    y = conv_bn_relu(xs, ws, gs, bs, rms, rvs, training=True, **kw)
    y.backward(dy.to("cuda", torch.bfloat16).contiguous())
    got = [t.detach().double().cpu() for t in (y, xs.grad, ws.grad, gs.grad, bs.grad, rms, rvs)]
    check(got, want, f"{impl} NCHW", rel=3e-2)


def test_fast_backward_never_stores_the_conv_output_gradient(monkeypatch):
    # The tensor-core backward forms g = BN+ReLU backward of grad_y inside its loaders; the simple path
    # stores g. The backward's peak memory must show the difference: about one conv output.
    x, w, g, b, rm, rv, dy, kw = inputs((8, 256, 28, 28, 32, 1), torch.bfloat16)
    peaks = {}
    for name in IMPLS:
        monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", name)
        xs = x.to("cuda", torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
        ws = w.to("cuda", torch.bfloat16).requires_grad_()
        gs, bs = g.to("cuda", torch.float32).requires_grad_(), b.to("cuda", torch.float32).requires_grad_()
        y = conv_bn_relu(xs, ws, gs, bs, training=True, **kw)
        grad = dy.to("cuda", torch.bfloat16).contiguous(memory_format=torch.channels_last)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y.backward(grad)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
        z_bytes = y.numel() * y.element_size()
        del xs, ws, gs, bs, y, grad
    assert peaks["fast"] <= peaks["simple"] - 0.9 * z_bytes, (peaks, z_bytes)


def test_simple_and_fast_agree(monkeypatch):
    x, w, g, b, rm, rv, dy, kw = inputs((8, 256, 28, 28, 32, 1), torch.bfloat16)
    results = {}
    for name in IMPLS:
        monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", name)
        results[name] = run(ours, "cuda", torch.bfloat16, x, w, g, b, rm, rv, dy, True, **kw)
    check(results["fast"], results["simple"], "fast vs simple", rel=2e-2)


def test_no_worse_than_cudnn_in_bf16(impl):
    # Error against float64 truth within 2x that of PyTorch's own bf16 path (cuDNN) on the same inputs.
    x, w, g, b, rm, rv, dy, kw = inputs((4, 512, 14, 14, 32, 1), torch.bfloat16)
    truth = run(reference, "cpu", torch.float64, x, w, g, b, rm, rv, dy, True, **kw)
    theirs = run(reference, "cuda", torch.bfloat16, x, w, g, b, rm, rv, dy, True, **kw)  # fp32 BN params
    got = run(ours, "cuda", torch.bfloat16, x, w, g, b, rm, rv, dy, True, **kw)
    for i, name in enumerate(["y", "grad_x", "grad_w"]):
        err = (got[i] - truth[i]).abs().max().item()
        err_ref = (theirs[i] - truth[i]).abs().max().item()
        assert err <= 2 * err_ref + 1e-3 * truth[i].abs().max().item(), f"{impl} {name}: {err} vs cuDNN {err_ref}"


def test_fast_refuses_what_it_cannot_do(monkeypatch):
    monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", "fast")
    x = torch.randn(2, 64, 8, 8, device="cuda", dtype=torch.bfloat16)  # 2 channels per group
    w = torch.randn(64, 2, 3, 3, device="cuda", dtype=torch.bfloat16)
    g, b = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")
    with pytest.raises(RuntimeError, match="multiple of 4"):
        conv_bn_relu(x, w, g, b, None, None, groups=32)
    monkeypatch.setenv("WSLFAST_CONV_BN_IMPL", "auto")
    y = conv_bn_relu(x, w, g, b, None, None, groups=32)  # falls back to the simple kernels
    want = F.relu(F.batch_norm(F.conv2d(x.float(), w.float(), None, 1, 1, 1, 32), None, None, g, b, True))
    torch.testing.assert_close(y.float(), want, rtol=3e-2, atol=3e-2)


def test_opcheck_cuda():
    x = torch.randn(2, 64, 6, 6, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(64, 8, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.ones(64, device="cuda", requires_grad=True)
    b = torch.zeros(64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.wslfast.conv_bn_relu_train.default, (x, w, g, b, None, 1, 1, 8, 1e-5, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_float32_warns_once_that_it_runs_the_simple_kernels(monkeypatch):
    import wslfast.ops.conv_bn as mod
    monkeypatch.setattr(mod, "_warned_float32_cuda", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x = torch.randn(2, 64, 6, 6, device="cuda")
    w = torch.randn(64, 2, 3, 3, device="cuda")
    g, b = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")
    with pytest.warns(UserWarning, match="simple reference kernels"):
        conv_bn_relu(x, w, g, b, None, None, groups=32)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv_bn_relu(x, w, g, b, None, None, groups=32)  # only once


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_running_stats_update_on_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(5)
    rm, rv = torch.randn(300, generator=gen).to(dtype), (torch.rand(300, generator=gen) + 0.5).to(dtype)
    mean, var = torch.randn(300, generator=gen), torch.rand(300, generator=gen)
    rm_c, rv_c = rm.cuda(), rv.cuda()
    torch.ops.wslfast.bn_update_running_stats(rm, rv, mean, var, 0.25, 17)
    torch.ops.wslfast.bn_update_running_stats(rm_c, rv_c, mean.cuda(), var.cuda(), 0.25, 17)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(rm_c.cpu(), rm, **tol)
    torch.testing.assert_close(rv_c.cpu(), rv, **tol)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_residual_on_cuda(impl, training, dtype):
    # relu(bn(conv(x)) + r): the apply pass adds r; the autograd masks dy by y > 0 for r and the backward.
    x, w, g, b, rm, rv, dy, kw = inputs((2, 256, 14, 14, 32, 1), dtype)
    r = torch.randn(dy.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype).double()
    grads = {}
    for device, dt in (("cpu", torch.float64), ("cuda", dtype)):
        leaves = [t.to(device, dt).contiguous(memory_format=torch.channels_last).requires_grad_() for t in (x, r)]
        ws = w.to(device, dt).requires_grad_()
        coef = torch.float64 if dt == torch.float64 else torch.float32
        gs, bs = g.to(device, coef).requires_grad_(), b.to(device, coef).requires_grad_()
        y = conv_bn_relu(leaves[0], ws, gs, bs, rm.to(device, coef), rv.to(device, coef), training=training,
                         residual=leaves[1], **kw)
        y.backward(dy.to(device, dt))
        grads[device] = [t.detach().double().cpu() for t in (y, leaves[0].grad, ws.grad, gs.grad, bs.grad,
                                                              leaves[1].grad)]
    rel = 1e-4 if (dtype == torch.float32 and impl == "simple") else 3e-2
    for name, a, e in zip(["y", "grad_x", "grad_w", "grad_gamma", "grad_beta", "grad_residual"], grads["cuda"],
                          grads["cpu"]):
        err = (a - e).abs().max().item() / (e.abs().max().item() + 1e-12)
        assert err <= rel, f"{impl} {dtype} training={training} {name}: {err:.2e}"
