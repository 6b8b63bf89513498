"""Every shipped config loads against pretrain.py's own defaults (keys and types checked), and the paper's
numbers in them agree with each other."""
import ast
import glob
import os

import pytest

from tests.train.conftest import PRETRAIN, ROOT
from wslfast.engine import load_config


def pretrain_defaults() -> dict:
    """DEFAULTS = dict(...) read from pretrain.py without running the script."""
    tree = ast.parse(open(PRETRAIN).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    raise AssertionError("pretrain.py has no DEFAULTS = dict(...)")


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "train", "configs", "*.yaml")))


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_is_consistent(path):
    cfg = load_config(pretrain_defaults(), ["--config", path])
    assert cfg.lr_schedule in ("step", "cosine", "constant") and cfg.amp in ("none", "bf16")
    assert (cfg.warmup_images or cfg.warmup_fraction * cfg.total_images) < cfg.total_images / 2
    if "ig3.5b" in path:  # paper: 24 images per GPU on 336 GPUs, LR 0.1 x 8,064 / 256
        assert cfg.batch_size * 336 == 8064
        assert cfg.lr == pytest.approx(0.1 * 8064 / 256, abs=5e-3)


def test_demo_config_is_the_defaults():
    defaults = pretrain_defaults()
    cfg = load_config(defaults, ["--config", os.path.join(ROOT, "train", "configs", "demo_cpu.yaml")])
    assert {k: cfg[k] for k in defaults} == defaults
