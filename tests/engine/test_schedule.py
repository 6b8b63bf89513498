"""LR schedules against values worked out by hand."""
import math

import pytest

from wslfast.engine import ConfigError, LRSchedule, peak_learning_rate


def test_linear_warmup_from_goyal_start_then_step_halvings():
    s = LRSchedule(peak_lr=3.2, total_images=1000, warmup_images=100, kind="step", halvings=3)
    assert s(0) == pytest.approx(0.1)
    assert s(50) == pytest.approx(0.1 + (3.2 - 0.1) * 0.5)
    assert s(100) == pytest.approx(3.2)
    # 900 images after warm-up in 4 stretches of 225
    assert s(100 + 224) == pytest.approx(3.2)
    assert s(100 + 225) == pytest.approx(1.6)
    assert s(100 + 450) == pytest.approx(0.8)
    assert s(100 + 675) == pytest.approx(0.4)
    assert s(999) == pytest.approx(0.4) and s(5000) == pytest.approx(0.4)


def test_cosine_and_constant():
    c = LRSchedule(peak_lr=1.0, total_images=200, warmup_images=0, kind="cosine", min_lr=0.1)
    assert c(0) == pytest.approx(1.0)
    assert c(100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert c(200) == pytest.approx(0.1)
    assert c(50) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    k = LRSchedule(peak_lr=0.5, total_images=10, warmup_images=5, kind="constant", warmup_start_lr=0.0)
    assert k(0) == 0.0 and k(5) == 0.5 and k(9) == 0.5


def test_warmup_start_never_above_peak():
    s = LRSchedule(peak_lr=0.0125, total_images=100, warmup_images=10)
    assert s(0) == pytest.approx(0.0125) and s(5) == pytest.approx(0.0125)


def test_warmup_covering_the_whole_run():
    s = LRSchedule(peak_lr=1.0, total_images=10, warmup_images=10, warmup_start_lr=0.0)
    assert s(5) == pytest.approx(0.5) and s(10) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="linear"), "kind"), (dict(peak_lr=0.0), "peak_lr"), (dict(peak_lr=float("nan")), "peak_lr"),
    (dict(total_images=0), "total_images"), (dict(warmup_images=2000), "warmup_images"),
    (dict(halvings=-1), "halvings"),
])
def test_bad_arguments(kwargs, match):
    args = dict(peak_lr=0.1, total_images=1000, warmup_images=0, kind="step")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LRSchedule(**args)


def test_state_dict_rebuilds_the_same_schedule():
    s = LRSchedule(peak_lr=2.0, total_images=500, warmup_images=50, kind="cosine", min_lr=0.01)
    t = LRSchedule(**{k: v for k, v in s.state_dict().items()})
    assert all(s(x) == t(x) for x in range(0, 600, 7))


@pytest.mark.parametrize("lr,optimizer,batch,demo,expected", [
    (0.3, "sgd", 512, False, (0.3, "given")),
    (1e-3, "adamw", 4096, True, (1e-3, "given")),
    (None, "sgd", 8064, False, (3.15, "paper's rule 0.1 x batch/256")),   # Mahajan et al.: 336 GPUs x 24
    (None, "sgd", 256, False, (0.1, "paper's rule 0.1 x batch/256")),
    (None, "sgd", 8, False, (0.003125, "paper's rule 0.1 x batch/256")),
    (None, "sgd", 32, True, (0.4, "demo rule 0.4 x batch/32")),
    (None, "sgd", 64, True, (0.8, "demo rule 0.4 x batch/32")),
])
def test_peak_learning_rate_rule(lr, optimizer, batch, demo, expected):
    peak, rule = peak_learning_rate(lr, optimizer, batch, demo_data=demo)
    assert peak == pytest.approx(expected[0], rel=1e-12) and rule == expected[1] and type(peak) is float


def test_peak_learning_rate_needs_lr_for_adamw():
    with pytest.raises(ConfigError, match="optimizer adamw needs --lr"):
        peak_learning_rate(None, "adamw", 256)
    with pytest.raises(ConfigError, match="global batch must be >= 1"):
        peak_learning_rate(None, "sgd", 0)
