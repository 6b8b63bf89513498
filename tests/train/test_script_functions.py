"""The scripts' steps called as functions (the scripts imported as modules, main() not run): pretrain.py's
schedule and train_step against plain float64 references, transfer.py's train_step, evaluate and its
checks of the task and the checkpoint. Seconds on CPU: no data pipeline, tiny networks."""
import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.train.conftest import PRETRAIN, TRANSFER, load_script
from wslfast.engine import (CheckpointError, Config, ConfigError, DistInfo, HashtagObjective, NonFiniteGuard,
                            build_optimizer, load_config)
from wslfast.errors import DataError
from wslfast.sparse_targets import SparseTargets

pretrain = load_script(PRETRAIN)
transfer = load_script(TRANSFER)
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


class TinyNet(nn.Module):
    """forward_features + fc, the interface of wslfast.models; BatchNorm so a skipped step has buffers to undo."""

    def __init__(self, classes=7):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(5, classes)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.fc(self.forward_features(x))


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


# ---------------------------------------------------------------- transfer.py
def test_transfer_train_step_matches_a_float64_step():
    torch.manual_seed(0)
    net = TinyNet(classes=3)
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 2, 1, 2])
    # the reference draws the same flips from the same generator state
    torch.manual_seed(1)
    flip = torch.rand(4) < 0.5
    ref = copy.deepcopy(net).double()
    xf = torch.where(flip[:, None, None, None], x.flip(-1), x).double()
    ref_loss = F.cross_entropy(ref(xf), y)
    ref_loss.backward()
    with torch.no_grad():
        for p in ref.parameters():  # plain momentum SGD from zero momentum: p -= lr (g + wd p)
            p -= 0.05 * (p.grad + 1e-3 * p)
    optimizer = build_optimizer(net, "sgd", lr=1.0, weight_decay=1e-3, momentum=0.9, nesterov=False)
    torch.manual_seed(1)
    loss = transfer.train_step(net, optimizer, x, y, 0.05, 3)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5) and not loss.requires_grad
    assert optimizer.param_groups[0]["lr"] == 0.05
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.double(), q, rtol=1e-5, atol=1e-6, msg=name)


def test_transfer_train_step_with_mixup_and_smoothing_trains():
    torch.manual_seed(0)
    net = TinyNet(classes=3)
    optimizer = build_optimizer(net, "sgd", lr=0.05, weight_decay=0.0, nesterov=False)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    gen = torch.Generator().manual_seed(0)
    losses = [transfer.train_step(net, optimizer, x, y, 0.05, 3, mixup=0.1, label_smoothing=0.1,
                                  mix_gen=gen).item() for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_evaluate_and_topk_against_brute_force():
    torch.manual_seed(0)
    net = TinyNet(classes=7)
    batches = [(torch.randn(5, 3, 6, 6), torch.randint(0, 7, (5,))) for _ in range(3)]
    top1, top5 = transfer.evaluate(net, batches)
    hits1 = hits5 = 0
    with torch.no_grad():
        for x, y in batches:
            for row, label in zip(net(x), y):
                order = sorted(range(7), key=lambda c: -row[c].item())
                hits1 += order[0] == label.item()
                hits5 += label.item() in order[:5]
    assert top1 == pytest.approx(100 * hits1 / 15) and top5 == pytest.approx(100 * hits5 / 15)
    assert transfer.topk(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))[1] is None  # 3 classes: no top-5


def transfer_cfg(*argv):
    return load_config(transfer.TransferConfig, list(argv))


@pytest.mark.parametrize("argv,match", [
    (["--mode", "fewshot"], "key 'mode': expected linear, finetune or zeroshot"),
    (["--mode", ","], "key 'mode'"),
    (["--ema", "1.5"], "key 'ema': expected a decay in \\[0, 1\\), got 1.5"),
    (["--label-smoothing", "1"], "key 'label_smoothing': expected a number in \\[0, 1\\), got 1.0"),
    (["--epochs", "-1"], "key 'epochs': expected an integer >= 0, got -1"),
    (["--batch-size", "0"], "key 'batch_size': expected an integer >= 1, got 0"),
    (["--mode", "finetune", "--lr", "0"], "key 'lr': expected a number > 0, got 0.0"),
])
def test_transfer_check_config(argv, match):
    with pytest.raises(ConfigError, match=match):
        transfer.check_config(transfer_cfg(*argv))


def test_transfer_check_config_modes():
    assert transfer.check_config(transfer_cfg("--mode", "linear, zeroshot")) == ["linear", "zeroshot"]


def test_build_data_reads_the_task_and_refuses_a_bad_one(tmp_path):
    for c in ("dog", "cat", "bird"):
        os.makedirs(tmp_path / "task" / "train" / c)
    os.makedirs(tmp_path / "task" / "val")
    task = transfer.build_data(transfer_cfg("--data", str(tmp_path / "task"), "--image-size", "48"), Config())
    assert task.classes == ["bird", "cat", "dog"] and (task.image_size, task.resize_size) == (48, 55)
    assert not task.demo
    task = transfer.build_data(transfer_cfg("--data", str(tmp_path / "task")), Config(image_size=32))
    assert (task.image_size, task.resize_size) == (32, 37)
    with pytest.raises(DataError, match="needs val/ with one folder per class"):
        os.rmdir(tmp_path / "task" / "val")
        transfer.build_data(transfer_cfg("--data", str(tmp_path / "task")), Config())
    with pytest.raises(ConfigError, match="not trained on the demo corpus: give --data"):
        transfer.build_data(transfer_cfg(), Config(data="/shards"))


def test_load_pretrained_reads_both_kinds_and_refuses_others(tmp_path):
    net = TinyNet()
    torch.save({"step": 3, "model": net.state_dict(), "arch": "tiny", "config": {"data": "synthetic"}},
               tmp_path / "ckpt.pt")
    path, weights, pre_cfg, arch = transfer.load_pretrained(transfer_cfg("--checkpoint", str(tmp_path / "ckpt.pt")))
    assert arch == "tiny" and pre_cfg.data == "synthetic" and weights.keys() == net.state_dict().keys()
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ConfigError, match="give --arch"):
        transfer.load_pretrained(transfer_cfg("--checkpoint", str(tmp_path / "plain.pth")))
    assert transfer.load_pretrained(transfer_cfg("--checkpoint", str(tmp_path / "plain.pth"), "--arch", "x"))[3] == "x"
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="neither a pretrain.py checkpoint nor a state_dict"):
        transfer.load_pretrained(transfer_cfg("--checkpoint", str(tmp_path / "list.pt")))
    with pytest.raises(CheckpointError, match="does not exist"):
        transfer.load_pretrained(transfer_cfg("--checkpoint", str(tmp_path / "missing.pt")))


def test_demo_class_map_comes_from_the_demo_concepts():
    from wslfast.data.synthetic import CONCEPTS

    forms, _, wnid = CONCEPTS[0]
    assert transfer.demo_class_map([forms[0], "not-a-concept"]) == {forms[0]: wnid}
