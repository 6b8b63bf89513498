"""transfer.py's steps called as functions (the script imported as a module, main() not run): the fine-tuning
step against a plain float64 step with the head's learning-rate multiplier, the optimizer's groups, the
config checks, the run folders each mode owns, the task and the checkpoint. Seconds on CPU."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_model import CPU, TinyNet
from tests.train.conftest import TRANSFER, load_script
from wslfast.engine import CheckpointError, Config, ConfigError, NonFiniteGuard, build_optimizer, load_config
from wslfast.errors import DataError
from wslfast.transfer.finetune import head_lr_groups, train_step

transfer = load_script(TRANSFER)


def cfg_of(*argv):
    return load_config(transfer.TransferConfig, list(argv))


@pytest.mark.parametrize("mult", [1.0, 10.0])
def test_train_step_matches_a_float64_step_with_the_head_multiplier(mult):
    torch.manual_seed(0)
    net = TinyNet(3)
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 2, 1, 2])
    ref = copy.deepcopy(net).double()
    ref_loss = F.cross_entropy(ref(x.double()), y)
    ref_loss.backward()
    with torch.no_grad():  # plain momentum SGD from zero momentum: p -= lr (g + wd p); the head at lr x mult
        for name, p in ref.named_parameters():
            p -= 0.05 * (mult if name.startswith("fc.") else 1.0) * (p.grad + 1e-3 * p)
    optimizer = head_lr_groups(build_optimizer(net, "sgd", lr=1.0, weight_decay=1e-3, momentum=0.9, nesterov=False),
                               net, mult)
    loss, skipped, stop = train_step(net, optimizer, NonFiniteGuard(net), x, y, 0.05, 3, CPU, step=0)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5) and not (skipped or stop)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05 * mult])
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.double(), q, rtol=1e-5, atol=1e-6, msg=name)


def test_train_step_with_mixup_and_smoothing_trains_and_skips_a_nonfinite_batch():
    torch.manual_seed(0)
    net = TinyNet(3)
    optimizer = head_lr_groups(build_optimizer(net, "sgd", lr=0.05, weight_decay=0.0, nesterov=False), net, 1.0)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    gen, guard = torch.Generator().manual_seed(0), NonFiniteGuard(net)
    losses = [train_step(net, optimizer, guard, x, y, 0.05, 3, CPU, step, mixup=0.1, label_smoothing=0.1,
                         mix_gen=gen)[0].item() for step in range(20)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    before = copy.deepcopy(net.state_dict())
    x[0, 0, 0, 0] = float("nan")
    _, skipped, stop = train_step(net, optimizer, guard, x, y, 0.05, 3, CPU, 20, stop_requested=True)
    assert skipped and stop and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_head_groups_keep_adamw_decay_groups():
    net = TinyNet(3)
    optimizer = head_lr_groups(build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05), net, 5.0)
    ids = {id(p): n for n, p in net.named_parameters()}
    groups = [(sorted(ids[id(p)] for p in g["params"]), g["weight_decay"], g["lr_mult"]) for g in optimizer.param_groups]
    assert groups == [(["body.0.weight"], 0.05, 1.0), (["fc.weight"], 0.05, 5.0),
                      (["body.0.bias", "body.1.bias", "body.1.weight"], 0.0, 1.0), (["fc.bias"], 0.0, 5.0)]
    assert isinstance(optimizer, torch.optim.AdamW)


@pytest.mark.parametrize("argv,match", [
    (["--mode", "fewshot"], "key 'mode': expected linear, finetune or zeroshot"),
    (["--mode", ","], "key 'mode'"),
    (["--mode", "linear,linear"], "key 'mode'"),
    (["--ema", "1.5"], "key 'ema': expected a decay in \\[0, 1\\), got 1.5"),
    (["--label-smoothing", "1"], "key 'label_smoothing': expected a number in \\[0, 1\\), got 1.0"),
    (["--epochs", "-1"], "key 'epochs': expected an integer >= 0, got -1"),
    (["--steps", "0"], "key 'steps': expected an integer >= 1 or null, got 0"),
    (["--batch-size", "0"], "key 'batch_size': expected an integer >= 1, got 0"),
    (["--mode", "finetune", "--lr", "0"], "key 'lr': expected a number > 0, got 0.0"),
    (["--warmup-fraction", "0.6"], "key 'warmup_fraction': expected a fraction in \\[0, 0.5\\]"),
    (["--head-lr-mult", "0"], "key 'head_lr_mult': expected a number > 0"),
    (["--probe-lr", "0"], "key 'probe_lr': expected a number > 0"),
    (["--feature-part-size", "0"], "key 'feature_part_size': expected an integer >= 1"),
    (["--zeroshot-prior", "2"], "key 'zeroshot_prior': expected a number in \\[0, 1\\]"),
    (["--zeroshot-temperature", "0"], "key 'zeroshot_temperature': expected a number > 0"),
])
def test_check_config(argv, match):
    with pytest.raises(ConfigError, match=match):
        transfer.check_config(cfg_of(*argv))


def test_check_config_modes():
    assert transfer.check_config(cfg_of("--mode", "linear, zeroshot")) == ["linear", "zeroshot"]


def test_run_folders_and_what_each_records(tmp_path):
    ckpt = str(tmp_path / "run" / "ckpt_000000010.pt")
    one = transfer.mode_folders(cfg_of(), ckpt, ["finetune"])
    assert one[("finetune", "pretrained")] == str(tmp_path / "run" / "transfer-finetune")
    assert one[("finetune", "random init")] == str(tmp_path / "run" / "transfer-finetune" / "random-init")
    two = transfer.mode_folders(cfg_of("--out", "/o"), ckpt, ["linear", "finetune"])
    assert two[("linear", "pretrained")] == "/o/linear" and two[("finetune", "random init")] == "/o/finetune/random-init"
    assert transfer.mode_folders(cfg_of("--out", "/o"), ckpt, ["linear"])[("linear", "pretrained")] == "/o"
    cfg = cfg_of("--mode", "finetune,linear")
    ft = transfer.run_config(cfg, "finetune", ckpt, "pretrained")
    assert "lr" in ft and "mixup" in ft and "l2" not in ft and "pooling" not in ft and "mode" not in ft
    assert ft["checkpoint"] == ckpt and ft["variant"] == "pretrained"
    lin = transfer.run_config(cfg, "linear", ckpt, "random init")
    assert "l2" in lin and "lr" not in lin and lin["variant"] == "random init"


def test_task_root_and_sizes(tmp_path):
    assert transfer.task_root(cfg_of("--data", "/d"), Config()) == ("/d", False)
    with pytest.raises(ConfigError, match="not trained on the demo corpus: give --data"):
        transfer.task_root(cfg_of(), Config(data="/shards"))
    assert transfer.image_sizes(cfg_of("--image-size", "48"), Config()) == (48, 55)
    assert transfer.image_sizes(cfg_of(), Config(image_size=32)) == (32, 37)
    assert transfer.image_sizes(cfg_of("--resize-size", "40"), Config()) == (224, 40)


def test_load_task_checks_the_splits(tmp_path):
    from PIL import Image

    from wslfast.transfer.task import load_task

    for split, classes in (("train", ("dog", "cat", "bird")), ("val", ("dog", "cat", "fish"))):
        for c in classes:
            os.makedirs(tmp_path / "task" / split / c)
            Image.new("RGB", (8, 8)).save(tmp_path / "task" / split / c / "0.jpg")
    with pytest.raises(DataError, match="must hold the same class folders \\(differ: bird, fish\\)"):
        load_task(str(tmp_path / "task"), 32, 37, False, CPU)
    os.rename(tmp_path / "task" / "val" / "fish", tmp_path / "task" / "val" / "bird")
    task = load_task(str(tmp_path / "task"), 32, 37, False, CPU, cache_dir=str(tmp_path / "run"))
    assert task.classes == ["bird", "cat", "dog"] and len(task.train) == len(task.val) == 3
    assert sorted(os.listdir(tmp_path / "run")) == ["checked-train.json", "checked-val.json"]
    with pytest.raises(DataError, match="needs train/ with one folder per class"):
        load_task(str(tmp_path / "nothing"), 32, 37, False, CPU)


def test_load_pretrained_reads_both_kinds_and_refuses_others(tmp_path):
    net = TinyNet(3)
    torch.save({"step": 3, "model": net.state_dict(), "arch": "tiny", "config": {"data": "synthetic"}},
               tmp_path / "ckpt.pt")
    path, weights, pre_cfg, arch = transfer.load_pretrained(cfg_of("--checkpoint", str(tmp_path / "ckpt.pt")))
    assert arch == "tiny" and pre_cfg.data == "synthetic" and weights.keys() == net.state_dict().keys()
    assert path == str(tmp_path / "ckpt.pt")
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ConfigError, match="give --arch"):
        transfer.load_pretrained(cfg_of("--checkpoint", str(tmp_path / "plain.pth")))
    assert transfer.load_pretrained(cfg_of("--checkpoint", str(tmp_path / "plain.pth"), "--arch", "x"))[3] == "x"
    for bad in ([1, 2], {}):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="neither a pretrain.py checkpoint nor a state_dict"):
            transfer.load_pretrained(cfg_of("--checkpoint", str(tmp_path / "bad.pt")))
    with pytest.raises(CheckpointError, match="does not exist"):
        transfer.load_pretrained(cfg_of("--checkpoint", str(tmp_path / "missing.pt")))


def test_demo_class_map_comes_from_the_demo_concepts():
    from wslfast.data.synthetic import CONCEPTS
    from wslfast.transfer.task import demo_class_map

    forms, _, wnid = CONCEPTS[0]
    assert demo_class_map([forms[0], "not-a-concept"]) == {forms[0]: wnid}
