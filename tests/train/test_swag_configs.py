"""SWAG's recipes: the fine-tuning configs load against transfer.py's own defaults and hold the maintainers'
recipe (SWAG issue #8); the pretraining configs name their arch and optimizer consistently."""
import ast
import glob
import os

import pytest

from tests.train.conftest import PRETRAIN, ROOT, TRANSFER
from wslfast.engine import load_config
from wslfast.models import model_family


def defaults_of(script) -> dict:
    tree = ast.parse(open(script).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    raise AssertionError(f"{script} has no DEFAULTS = dict(...)")


TRANSFER_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "train", "configs", "transfer", "*.yaml")))
SWAG_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "train", "configs", "*swag*.yaml")))


def test_there_are_swag_configs():
    assert len(TRANSFER_CONFIGS) >= 1 and len(SWAG_CONFIGS) >= 4


@pytest.mark.parametrize("path", TRANSFER_CONFIGS, ids=os.path.basename)
def test_transfer_config_loads(path):
    cfg = load_config(defaults_of(TRANSFER), ["--config", path])
    assert cfg.mode in ("linear", "finetune", "zeroshot")
    if "regnet_y_128gf" in path:  # SWAG issue #8
        assert (cfg.epochs, cfg.mixup, cfg.image_size, cfg.arch) == (8, 0.1, 384, "regnet_y_128gf")
        assert 0 < cfg.ema < 1 and cfg.ema_warmup == 0.05


@pytest.mark.parametrize("path", SWAG_CONFIGS, ids=os.path.basename)
def test_pretrain_swag_config(path):
    cfg = load_config(defaults_of(PRETRAIN), ["--config", path])
    family = model_family(cfg.arch)
    assert cfg.optimizer == ("adamw" if family == "vit" else "sgd") and cfg.image_size == 224
