"""Every shipped config loads against the scripts' own declared keys (names and types checked), and the
paper's numbers in them agree with each other."""
import glob
import os

import pytest

from tests.train.conftest import PRETRAIN, ROOT, TRANSFER, load_script
from wslfast.engine import config_keys, load_config
from wslfast.models import model_family

PretrainConfig = load_script(PRETRAIN).PretrainConfig
TransferConfig = load_script(TRANSFER).TransferConfig
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "train", "configs", "*.yaml")))
TRANSFER_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "train", "configs", "transfer", "*.yaml")))


def test_there_are_configs():
    assert len(CONFIGS) >= 3 and len(TRANSFER_CONFIGS) >= 1
    assert len([p for p in CONFIGS if "swag" in p]) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_pretrain_config_loads_and_is_consistent(path):
    cfg = load_config(PretrainConfig, ["--config", path])
    assert cfg.lr_schedule in ("step", "cosine", "constant") and cfg.amp in ("none", "bf16")
    assert (cfg.warmup_images or cfg.warmup_fraction * cfg.total_images) < cfg.total_images / 2
    if "ig3.5b" in path:  # paper: 24 images per GPU on 336 GPUs, LR 0.1 x 8,064 / 256
        assert cfg.batch_size * 336 == 8064
        assert cfg.lr == pytest.approx(0.1 * 8064 / 256, abs=5e-3)
    if "swag" in path:
        assert cfg.optimizer == ("adamw" if model_family(cfg.arch) == "vit" else "sgd") and cfg.image_size == 224
    if cfg.optimizer == "adamw":
        assert cfg.lr is not None and (cfg.betas is None or len(cfg.betas) == 2)


def test_demo_config_is_the_defaults():
    cfg = load_config(PretrainConfig, ["--config", os.path.join(ROOT, "train", "configs", "demo_cpu.yaml")])
    assert {k.name: cfg[k.name] for k in config_keys(PretrainConfig)} == \
        {k.name: k.default for k in config_keys(PretrainConfig)}


@pytest.mark.parametrize("path", TRANSFER_CONFIGS, ids=os.path.basename)
def test_transfer_config_loads(path):
    cfg = load_config(TransferConfig, ["--config", path])
    assert cfg.mode in ("linear", "finetune", "zeroshot")
    if "regnet_y_128gf" in path:  # SWAG issue #8
        assert (cfg.epochs, cfg.mixup, cfg.image_size, cfg.arch) == (8, 0.1, 384, "regnet_y_128gf")
        assert 0 < cfg.ema < 1 and cfg.ema_warmup == 0.05


@pytest.mark.parametrize("schema", [PretrainConfig, TransferConfig], ids=["pretrain", "transfer"])
def test_every_key_has_help(schema):
    assert all(k.help for k in config_keys(schema)), [k.name for k in config_keys(schema) if not k.help]
