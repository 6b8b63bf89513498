"""benchmarks/profile_step.py: op kinds are assigned as documented and the per-kind records add up."""
import importlib.util
import json
from pathlib import Path

import pytest


def _module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name, kind", [
    ("wslfast::conv_bn_relu_train_backward", "wslfast conv+BN+ReLU"),
    ("wslfast::bn_update_running_stats", "wslfast conv+BN+ReLU"),
    ("wslfast::soft_ce_backward", "wslfast soft-target CE"),
    ("aten::convolution_backward", "convolution"),
    ("aten::cudnn_convolution", "convolution"),
    ("aten::native_batch_norm_backward", "batch norm"),
    ("aten::addmm", "matmul / linear"),
    ("aten::_foreach_add_", "optimizer"),
    ("aten::threshold_backward", "elementwise"),
    ("aten::add_", "elementwise"),
    ("aten::max_pool2d_with_indices", "pooling"),
    ("aten::empty_strided", "memory set-up"),
    ("aten::_to_copy", "copies and casts"),
    ("aten::something_new", "other"),
])
def test_kinds(name, kind):
    assert _module().kind_of(name) == kind


@pytest.mark.slow
def test_fused_and_unfused_profiles(tmp_path, monkeypatch):
    mod = _module()
    out = tmp_path / "prof.json"
    for extra in ([], ["--unfused"]):
        monkeypatch.setattr("sys.argv", ["profile_step.py", "--batch-size", "4", "--image-size", "32", "--steps", "1",
                                         "--num-classes", "50", "--threads", "1", "--out", str(out), *extra])
        mod.main()
    records = json.loads(out.read_text())
    by_fused = {True: {}, False: {}}
    for r in records:
        assert r["bench"] == "profile_step" and r["ms_p50"] >= 0
        by_fused[r["case"]["fused"]][r["case"]["kind"]] = r
    for fused, kinds in by_fused.items():
        assert sum(r["share"] for r in kinds.values()) == pytest.approx(1.0, abs=1e-3)
        assert kinds["convolution"]["ms_p50"] > 0
    assert by_fused[True]["wslfast conv+BN+ReLU"]["ms_p50"] > 0
    assert "wslfast conv+BN+ReLU" not in by_fused[False]
    assert by_fused[False]["batch norm"]["ms_p50"] > 0
