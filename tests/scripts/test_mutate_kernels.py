"""scripts/mutate_kernels.py: its list of known-bad kernel edits and how one is applied (the mutation run
itself builds and runs the emulated tests per mutant, minutes: run by hand, see its docstring)."""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mutate_kernels", ROOT / "scripts" / "mutate_kernels.py")
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod  # its dataclass looks itself up there
spec.loader.exec_module(mod)


def test_mutants_cover_both_kernel_families_with_distinct_ids():
    ids = [m.id for m in mod.MUTANTS]
    assert len(ids) == len(set(ids)) and len(ids) >= 8
    assert {m.file.split("/")[0] for m in mod.MUTANTS} == {"soft_ce", "conv_bn"}
    assert any(m.race for m in mod.MUTANTS)  # removed barriers, for the race detector
    assert all(m.old != m.new and (ROOT / "csrc" / m.file).exists() for m in mod.MUTANTS)


def test_every_mutant_still_applies_to_the_kernels():
    # a kernel change that removes a mutant's text leaves that edit untested: refresh it (scripts/mutate_kernels.py
    # --check lists them) in the same change
    stale = [m.id for m in mod.MUTANTS if (ROOT / "csrc" / m.file).read_text().count(m.old) != 1]
    assert not stale, f"mutants whose text is no longer once in csrc/: {stale} (python scripts/mutate_kernels.py --check)"


def test_a_mutant_changes_its_one_occurrence_and_refuses_a_stale_text(tmp_path):
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc" / "soft_ce", csrc / "soft_ce")
    m = mod.Mutant("T1", "soft_ce/soft_ce_math.h", "return (a > b || a != a) ? a : b;", "return (a > b) ? a : b;",
                   "test")
    if (csrc / m.file).read_text().count(m.old) != 1:
        pytest.skip("nan_max was rewritten")
    mod.apply(m, csrc)
    assert m.new in (csrc / m.file).read_text() and m.old not in (csrc / m.file).read_text()
    with pytest.raises(LookupError, match="occurs 0 times"):
        mod.apply(m, csrc)
