"""The scripts' steps called as functions (the scripts imported as modules, main() not run): pretrain.py's
schedule and train_step against plain float64 references (transfer.py's: tests/train/test_transfer_functions.py).
Seconds on CPU: no data pipeline, tiny networks."""
import copy

import pytest
import torch

from tests.tiny_model import CPU, TinyNet
from tests.train.conftest import PRETRAIN, load_script
from wslfast.engine import ConfigError, HashtagObjective, NonFiniteGuard, build_optimizer, load_config
from wslfast.sparse_targets import SparseTargets

pretrain = load_script(PRETRAIN)


def pretrain_cfg(*argv):
    return load_config(pretrain.PretrainConfig, list(argv))


# ---------------------------------------------------------------- pretrain.py
@pytest.mark.parametrize("argv,global_batch,steps,peak,rule", [
    ([], 32, 1000, 0.4, "demo rule 0.4 x batch/32"),                              # the demo's defaults
    (["--data", "/shards"], 512, 63, 0.2, "paper's rule 0.1 x batch/256"),         # ceil(32000 / 512)
    (["--data", "/shards", "--steps", "5"], 8064, 5, 3.15, "paper's rule 0.1 x batch/256"),
    (["--lr", "0.02", "--steps", "12"], 8, 12, 0.02, "given"),
])
def test_build_schedule_follows_the_lr_rule(argv, global_batch, steps, peak, rule):
    schedule, total_steps, lr_rule = pretrain.build_schedule(pretrain_cfg(*argv), global_batch)
    assert total_steps == steps and lr_rule == rule and schedule.peak_lr == pytest.approx(peak, rel=1e-12)
    assert schedule.total_images == steps * global_batch


def test_build_schedule_warmup_is_a_fraction_of_the_run_and_at_most_half():
    schedule, _, _ = pretrain.build_schedule(pretrain_cfg("--steps", "20", "--lr", "0.02"), 8)
    assert schedule.warmup_images == 16 and schedule(0) == pytest.approx(0.02)  # 10% of 160; start capped at peak
    schedule, _, _ = pretrain.build_schedule(pretrain_cfg("--steps", "20", "--warmup-images", "1000"), 8)
    assert schedule.warmup_images == 80  # half of the 160-image run


@pytest.mark.parametrize("argv,match", [
    (["--optimizer", "adamw"], "optimizer adamw needs --lr"),
    (["--steps", "0"], "nothing to train: 0 steps"),
    (["--halvings", "-1", "--lr", "0.1"], "halvings must be >= 0"),
    (["--lr", "-0.1"], "peak_lr must be a positive number"),
])
def test_build_schedule_refuses_a_config_it_cannot_run(argv, match):
    with pytest.raises(ConfigError, match=match):
        pretrain.build_schedule(pretrain_cfg(*argv), 8)


@pytest.mark.parametrize("key", ["batch_size", "checkpoint_every", "log_every", "max_nonfinite"])
def test_check_config_counts(key):
    pretrain.check_config(pretrain_cfg())
    with pytest.raises(ConfigError, match=f"key '{key}': expected an integer >= 1, got 0"):
        pretrain.check_config(pretrain_cfg(f"--{key}", "0"))


def _float64_reference_step(net, x, rows, lr, momentum, wd):
    """Loss and weights after one Nesterov SGD step from zero momentum, all in float64, by hand:
    g' = g + wd p; buf = g'; p -= lr (g' + momentum buf)."""
    ref = copy.deepcopy(net).double()
    logp = torch.log_softmax(ref(x.double()), -1)
    loss = torch.stack([-sum(logp[i, c] for c in r) / len(r) for i, r in enumerate(rows) if r]).mean()
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            g = p.grad + wd * p
            p -= lr * (g + momentum * g)
    return loss.item(), ref


@pytest.mark.parametrize("fused", [False, True])
def test_pretrain_train_step_matches_a_float64_step(fused):
    torch.manual_seed(0)
    net, rows = TinyNet(), [[0, 3], [6], [1, 2, 5], [], [4]]
    x, targets = torch.randn(len(rows), 3, 6, 6), SparseTargets.from_lists(rows, 7)
    expected_loss, ref = _float64_reference_step(net, x, rows, lr=0.3, momentum=0.9, wd=1e-2)
    optimizer = build_optimizer(net, "sgd", lr=123.0, weight_decay=1e-2, momentum=0.9, nesterov=True)
    loss, skipped, stop = pretrain.train_step(HashtagObjective(net, fused=fused), optimizer, NonFiniteGuard(net),
                                              x, targets, 0.3, CPU, step=0)
    assert not skipped and not stop and loss.dim() == 0 and not loss.requires_grad
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert optimizer.param_groups[0]["lr"] == 0.3 and all(p.grad is None for p in net.parameters())
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.double(), q, rtol=1e-5, atol=1e-6, msg=name)
    for b, rb in zip(net.buffers(), ref.buffers()):  # BN running statistics moved as in the reference
        torch.testing.assert_close(b.to(rb.dtype), rb, rtol=1e-5, atol=1e-6)


def test_pretrain_train_step_skips_a_nonfinite_batch_and_passes_on_a_stop():
    torch.manual_seed(0)
    net = TinyNet()
    before = copy.deepcopy(net.state_dict())
    guard = NonFiniteGuard(net, max_consecutive=5)
    optimizer = build_optimizer(net, "sgd", lr=0.1)
    x = torch.randn(3, 3, 6, 6)
    x[1, 0, 2, 2] = float("nan")
    loss, skipped, stop = pretrain.train_step(HashtagObjective(net, fused=False), optimizer, guard, x,
                                              SparseTargets.from_lists([[0], [1], [2]], 7), 0.1, CPU, step=7,
                                              stop_requested=True)
    assert skipped and stop and not torch.isfinite(loss) and guard.skipped == 1
    for k, v in net.state_dict().items():  # weights untouched, BN statistics put back
        assert torch.equal(v, before[k]), k
