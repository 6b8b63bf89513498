"""The linear probe's solvers: L-BFGS reaches the optimum of the regularised objective (its gradient vanishes,
checked in float64 by autograd), the streamed solvers reach its value, the solver is chosen by size, the
standardisation folds into the classifier exactly, and a diverging fit says what to change."""
import itertools

import pytest
import torch

from wslfast.transfer.probe import (choose_solver, feature_scaling, fit_lbfgs, fit_streamed, fold_standardisation,
                                    probe_objective)


def _problem(n=1500, d=48, c=6, seed=0):
    """Correlated features (a low-rank part, an offset, per-dimension scales) of c overlapping classes."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, d, generator=g)
    centers = torch.randn(c, 8, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = (centers[y] + 1.5 * torch.randn(n, 8, generator=g)) @ basis + 0.5 * torch.randn(n, d, generator=g)
    x = x * torch.rand(d, generator=g).mul(5).add(0.1) + 3.0
    mean, std = x.double().mean(0), x.double().std(0, unbiased=False)
    return x, y, mean, std


def _batches(x, y, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - batch + 1, batch):
            yield x[p[i:i + batch]], y[p[i:i + batch]]


@pytest.mark.parametrize("solver,n,d,max_mb,expected", [
    ("auto", 65_536, 2048, 1024, "lbfgs"),          # exactly 1 GiB of float64 features
    ("auto", 65_537, 2048, 1024, "sgd"),
    ("auto", 1_281_167, 2048, 1024, "sgd"),         # ImageNet-1k
    ("lbfgs", 1_281_167, 2048, 1024, "lbfgs"),      # a named solver as given
    ("adam", 10, 2, 1024, "adam"),
])
def test_choose_solver_by_size(solver, n, d, max_mb, expected):
    chosen, why = choose_solver(solver, n, d, max_mb)
    assert chosen == expected and why
    with pytest.raises(ValueError, match="probe solver must be one of"):
        choose_solver("newton", n, d, max_mb)


def test_lbfgs_reaches_the_optimum():
    x, y, mean, std = _problem()
    z = (x.double() - mean) / std
    w, b = fit_lbfgs(z, y, 6, l2=1e-3, iters=300)  # (the streamed test below reuses this problem)
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = probe_objective(z, y, w, b, 1e-3)
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.abs().max() < 1e-5 and gb.abs().max() < 1e-5  # the first-order condition of the optimum
    worse = probe_objective(z, y, w.detach() * 1.01, b.detach(), 1e-3)
    assert worse > loss


@pytest.mark.parametrize("solver,lr,tolerance", [("sgd", 0.1, 0.01), ("adam", 0.01, 0.04)])
def test_streamed_solvers_reach_the_lbfgs_objective(solver, lr, tolerance):
    x, y, mean, std = _problem()
    z = (x.double() - mean) / std
    w_ref, b_ref = fit_lbfgs(z, y, 6, 1e-3, 300)
    best = probe_objective(z, y, w_ref, b_ref, 1e-3).item()
    logged = []
    w, b = fit_streamed(_batches(x, y, 64), 30 * len(y) // 64, x.shape[1], 6, mean, std, 1e-3, solver, lr,
                        log=lambda step, loss: logged.append(step), log_every=100)
    got = probe_objective(z, y, w.double(), b.double(), 1e-3).item()
    assert best <= got <= best * (1 + tolerance), (best, got)
    agree = ((z @ w.double().T + b.double()).argmax(1) == (z @ w_ref.T + b_ref).argmax(1)).double().mean()
    assert agree > 0.95 and logged[-1] == 30 * len(y) // 64


def test_streamed_fit_averages_gradients_through_the_hook():
    x, y, mean, std = _problem(n=256, d=8, c=3)
    seen = []

    def average(tensors):  # what a data-parallel run does to every step's gradients (here: one rank)
        seen.append([tuple(t.shape) for t in tensors])

    fit_streamed(_batches(x, y, 32), 5, 8, 3, mean, std, 1e-3, "sgd", 0.1, average=average)
    assert seen == [[(3, 8), (3,)]] * 5 + [[()]]  # each step's gradients, then the logged loss


def test_divergence_names_the_learning_rate():
    x, y, mean, std = _problem(n=256, d=8, c=3)
    x = x * 1e30  # standardised away: this one only diverges at an absurd learning rate
    with pytest.raises(FloatingPointError, match="lower --probe-lr"):
        fit_streamed(_batches(x, y, 32), 50, 8, 3, mean * 1e30, std * 1e30, 0.0, "sgd", 1e38, log_every=10)


def test_standardisation_folds_into_the_classifier():
    x, _, mean, std = _problem(n=50, d=7, c=4)
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    raw_w, raw_b = fold_standardisation(w, b, mean, std)
    torch.testing.assert_close(x.double() @ raw_w.T + raw_b, ((x.double() - mean) / std) @ w.T + b)


def test_streamed_fit_rejects_bad_arguments():
    x, y, mean, std = _problem(n=64, d=4, c=2)
    for solver, steps in itertools.product(["lbfgs", "sgd"], [0]):
        with pytest.raises(ValueError):
            fit_streamed(_batches(x, y, 8), steps, 4, 2, mean, std, 0.0, solver)


def test_feature_scaling_centres_each_feature_and_scales_all_by_one_factor():
    g = torch.Generator().manual_seed(1)
    var = torch.rand(9, generator=g, dtype=torch.float64) * 4
    var[3] = 0.0  # a dead channel
    mean = torch.randn(9, generator=g, dtype=torch.float64)
    m, s = feature_scaling(mean, var)
    assert torch.equal(m, mean) and torch.allclose(s, torch.full((9,), var.mean().sqrt().item(), dtype=torch.float64))
    assert torch.equal(feature_scaling(mean, torch.zeros(9))[1], torch.ones(9, dtype=torch.float64))  # all constant


def test_near_constant_channels_do_not_drown_the_informative_ones():
    # 4 informative features and 60 near-dead ones (std 1e-3 of pure noise), as pooled ReLU features have: scaled
    # each by its own std the noise gets the informative features' weight and the held-out accuracy drops; with
    # one factor it stays (both fits from the same L-BFGS, same l2)
    g = torch.Generator().manual_seed(2)
    n, c = 400, 4
    y = torch.randint(0, c, (n,), generator=g)
    centers = torch.randn(c, 4, generator=g, dtype=torch.float64) * 1.2
    x = torch.cat([centers[y] + torch.randn(n, 4, generator=g, dtype=torch.float64),
                   1e-3 * torch.randn(n, 60, generator=g, dtype=torch.float64)], 1)
    tr, te = slice(0, 100), slice(100, None)
    acc = {}
    for name, (mean, std) in {"one factor": feature_scaling(x[tr].mean(0), x[tr].var(0, unbiased=False)),
                              "per feature": (x[tr].mean(0), x[tr].std(0, unbiased=False))}.items():
        w, b = fit_lbfgs((x[tr] - mean) / std, y[tr], c, 1e-3, 200)
        acc[name] = (((x[te] - mean) / std @ w.T + b).argmax(1) == y[te]).double().mean().item()
    assert acc["one factor"] > acc["per feature"] + 0.1, acc
