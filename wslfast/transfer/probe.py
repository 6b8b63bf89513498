"""The linear probe's classifier: a softmax regression on standardised frozen features, L2-regularised.

Every solver minimises the same objective on standardised features z = (x - mean) / std, where mean is each
feature's and std one factor for all of them (`feature_scaling`):

    mean_i CE(W z_i + b, y_i)  +  l2 * ||W||^2

  lbfgs:  full-batch L-BFGS in float64 (strong Wolfe line search), from zero: deterministic, no learning rate
          to tune, exact to its tolerance; it holds every feature in memory (N x D float64, plus [N, C]
          logits and their gradient), so it is for small tasks.
  sgd:    mini-batch SGD with Nesterov momentum, the learning rate on a cosine over the steps: the default
          streamed solver (on tests/transfer/test_probe.py's correlated, offset, rescaled features it ended
          30 epochs 0.3% above the L-BFGS objective at lr 0.1, 0.06% at 0.3);
  adam:   mini-batch Adam (the L2 term in the loss, not decoupled as AdamW's, so the objective stays the
          one above): slower to the optimum there (1.9% above at lr 0.01, 12% at 0.001);
          both read batches streamed from disk (wslfast.transfer.features): memory is one part and one
          batch, whatever N.

`choose_solver("auto", ...)` takes lbfgs while the float64 features fit `max_mb` (default 1,024 MB: e.g.
65k images at 2,048 features; the whole fit then stays within a few times that), else sgd: below the
threshold the exact, deterministic fit is affordable and has nothing to tune; above it, its memory would
grow with N (21 GB for ImageNet-1k at 2,048 features) while the streamed fit's does not.
The mean and variance come from the store's per-part moments (merged exactly), the same for every solver.
Why one scale and not each feature's own: a backbone's pooled ReLU features hold many channels that hardly
vary (dead or nearly so: 67 of the demo backbone's 512 had std < 1e-4, the median std was 0.009 against a
largest of 0.5); dividing each by its own std lifts their noise to the informative channels' scale, and on
the demo the pretrained probe fell from 52-54% to 45-46% top-1 (l2 1e-3 to 1e-1; random init 35-38% and
36-37%). One factor (the root mean variance) still makes the problem unit-scaled for the solvers and the
l2 default, and keeps the features' own relative scales, as a probe on raw features (CLIP's) does.
The fitted classifier is returned on the raw features (standardisation folded in), so a model that uses it
needs no extra step.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["SOLVERS", "STREAMED_DEFAULT", "choose_solver", "feature_scaling", "fit_lbfgs", "fit_streamed",
           "fold_standardisation",
           "probe_objective"]

SOLVERS = ("auto", "lbfgs", "sgd", "adam")
STREAMED_DEFAULT = "sgd"


def choose_solver(solver: str, num_samples: int, dim: int, max_mb: float) -> tuple[str, str]:
    """(solver, why): a named solver as given; auto -> lbfgs when N x D float64 features fit max_mb."""
    if solver not in SOLVERS:
        raise ValueError(f"probe solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    need_mb = num_samples * dim * 8 / 2**20
    if solver != "auto":
        return solver, "given"
    if need_mb <= max_mb:
        return "lbfgs", f"full-batch: {need_mb:,.0f} MB of float64 features <= lbfgs_max_mb {max_mb:,.0f}"
    return STREAMED_DEFAULT, f"streamed: {need_mb:,.0f} MB of float64 features > lbfgs_max_mb {max_mb:,.0f}"


def probe_objective(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l2: float):
    """The objective every solver minimises, on standardised features z."""
    return F.cross_entropy(z @ weight.T + bias, y) + l2 * weight.square().sum()


def fit_lbfgs(z: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, iters: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [C, D], bias [C]) in float64 on standardised features z [N, D] (full batch, from zero)."""
    z = z.double()
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = probe_objective(z, y, weight, bias, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def fit_streamed(batches: Iterator, steps: int, dim: int, num_classes: int, mean: torch.Tensor,
                 std: torch.Tensor, l2: float, solver: str = STREAMED_DEFAULT, lr: float = 0.1,
                 momentum: float = 0.9, device="cpu", average: Callable | None = None,
                 log: Callable | None = None, log_every: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) in float32 on standardised features after `steps` mini-batch steps over `batches`
    ((raw features, labels) of any float dtype), the learning rate on a cosine from lr to 0. average(list of
    tensors), when given, averages the gradients over the ranks in place (data-parallel: every rank ends
    with the same weights), and the logged loss. log(step, mean loss) every log_every steps."""
    if solver not in ("sgd", "adam"):
        raise ValueError(f"fit_streamed: solver must be sgd or adam, got {solver!r}")
    if steps < 1:
        raise ValueError(f"fit_streamed: steps must be >= 1, got {steps}")
    mean = mean.to(device, torch.float32)
    inv_std = (1.0 / std).to(device, torch.float32)
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    params = [weight, bias]
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0) if solver == "sgd"
           else torch.optim.Adam(params, lr=lr))
    loss_sum, seen = torch.zeros((), device=device), 0
    for step in range(steps):
        x, y = next(batches)
        z = (x.to(device, non_blocking=True).float() - mean) * inv_std
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = probe_objective(z, y.to(device), weight, bias, l2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if average is not None:
            average([weight.grad, bias.grad])
        opt.step()
        loss_sum += loss.detach()
        seen += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean_loss = loss_sum / seen
            if average is not None:  # every rank sees the same value, so all stop together or none
                average([mean_loss])
            mean_loss = mean_loss.item()
            if not math.isfinite(mean_loss):  # diverged: nothing after this step is worth fitting
                raise FloatingPointError(f"linear probe ({solver}): the loss became {mean_loss} by step "
                                         f"{step + 1}; lower --probe-lr (now {lr:g})")
            if log is not None:
                log(step + 1, mean_loss)
            loss_sum.zero_()
            seen = 0
    return weight.detach(), bias.detach()


def feature_scaling(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], std [D]) of the standardisation from the features' means and (population) variances: each
    feature centred on its mean, all divided by one factor, sqrt(mean(var)) (the module docstring says why).
    Features that never vary stay 0 after centring; all-constant features get std 1."""
    mean, var = mean.double(), var.double().clamp(min=0)
    rms = var.mean().sqrt().item() if var.numel() else 0.0
    return mean, torch.full_like(mean, rms if rms > 0 else 1.0)


def fold_standardisation(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier on raw features x: W (x - mean) / std + b = (W / std) x + (b - (W / std) mean)."""
    w = weight.double() / std.double()
    return w, bias.double() - w @ mean.double()
