"""scripts/emu_gpu_compare.py (the GPU session's emu-compare phase): its comparison of two dump folders, on
synthetic dumps (the GPU run itself needs a GPU)."""
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("emu_gpu_compare", ROOT / "scripts" / "emu_gpu_compare.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)


def write(folder, name, values):
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(values, np.float64).tofile(p)


def test_compare_reports_differences_nan_placement_and_missing_outputs(tmp_path):
    gpu, emu = tmp_path / "gpu", tmp_path / "emu"
    write(gpu, "fam/z.f64", [1.0, 2.0, np.nan, 4.0])
    write(emu, "fam/z.f64", [1.0, 2.5, np.nan, 4.0])
    write(gpu, "fam/nan.f64", [np.nan, 1.0])
    write(emu, "fam/nan.f64", [0.0, 1.0])
    write(gpu, "fam/short.f64", [1.0])
    write(emu, "fam/short.f64", [1.0, 2.0])
    write(emu, "fam/only_emu.f64", [3.0])
    recs = {r["output"]: r for r in mod.compare_dumps(gpu, emu)}
    z = recs["fam/z.f64"]
    assert z["nan_same"] and z["max_abs_diff"] == 0.5 and z["max_abs"] == 4.0 and z["bit_equal"] == 0.75
    assert recs["fam/nan.f64"]["nan_same"] is False
    assert recs["fam/short.f64"]["size_gpu"] == 1
    assert recs["fam/only_emu.f64"]["missing_on"] == "gpu"
    assert set(mod.FOLDER.values()) == {"soft_ce", "conv_bn"}


def test_the_comparison_runs_every_family_the_emulated_tests_run():
    import ast
    tree = ast.parse((ROOT / "tests" / "ops" / "test_kernels_emulated.py").read_text())
    families = next(ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FAMILIES")
    assert set(mod.FAMILIES) == set(families)
    assert all(mod.FOLDER[f] == folder for f, folder in families.items())
