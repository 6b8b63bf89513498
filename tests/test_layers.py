"""The package's layers (pyproject.toml's import-linter contracts): they hold on this tree, and each one
fails when one wrong import is added to a copy of the tree (so the check can fail)."""
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    """`lint-imports` on the tree at root (all contracts, or only those named); exit status 1 = broken."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -r requirements.txt")
    args = [a for c in contracts for a in ("--contract", c)]
    return subprocess.run([exe, "--no-cache", "--no-logo", *args], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "COLUMNS": "200"}, timeout=120)


def test_the_layers_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(CONFIG['contracts'])} kept, 0 broken." in r.stdout


def _copy_tree(dst: Path) -> Path:
    shutil.copytree(ROOT / "wslfast", dst / "wslfast", ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.txt"))
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


WRONG_IMPORTS = [  # (file, the import added, the contract it breaks)
    ("wslfast/data/loaders/dali.py", "from ..build import passes", "loaders-read-only-the-format"),
    ("wslfast/data/loaders/folder.py", "from ..sources import TagFiles", "loaders-read-only-the-format"),
    ("wslfast/data/format.py", "from .labels import vocab", "data-layers"),
    ("wslfast/data/build/passes.py", "from ..demo import prepare_demo", "data-layers"),
    ("wslfast/data/build/driver.py", "from ...models import resnext", "wslfast-layers"),
    ("wslfast/engine/schedule.py", "from ..models import resnext", "wslfast-layers"),
    ("wslfast/data/sources/base.py", "from ...engine import config", "wslfast-layers"),
    ("wslfast/engine/metrics.py", "from ..data import format", "wslfast-layers"),
    ("wslfast/ops/__init__.py", "from ..nn import conv_bn", "wslfast-layers"),
    ("wslfast/nn/__init__.py", "from .. import models", "wslfast-layers"),
    ("wslfast/errors.py", "import wslfast.data.format", "wslfast-layers"),
    ("wslfast/data/demo.py", "import train.pretrain", "package-not-scripts"),
    ("wslfast/models/__init__.py", "from benchmarks import common", "package-not-scripts"),
]


@pytest.mark.parametrize("path,line,contract", WRONG_IMPORTS, ids=[f"{p.split('/', 1)[1]}:{c}" for p, _, c in
                                                                    WRONG_IMPORTS])
def test_a_wrong_import_breaks_its_contract(tmp_path, path, line, contract):
    root = _copy_tree(tmp_path)
    f = root / path
    assert f.is_file(), path
    f.write_text(f.read_text() + f"\n{line}  # a wrong import, added by the test\n")
    r = lint_imports(root, contract)
    assert r.returncode == 1 and "Contracts: 0 kept, 1 broken." in r.stdout, r.stdout + r.stderr
    importer = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert re.search(rf"^-\s+{re.escape(importer)} -> ", r.stdout, re.M), r.stdout  # names the wrong import


def _modules(package: Path, dotted: str) -> set[str]:
    """The top-level modules and subpackages of a package folder, dotted."""
    out = set()
    for p in package.iterdir():
        if p.is_dir() and (p / "__init__.py").is_file():
            out.add(f"{dotted}.{p.name}")
        elif p.suffix == ".py" and p.name != "__init__.py":
            out.add(f"{dotted}.{p.stem}")
    return out


def test_the_loaders_contract_lists_every_other_module():
    """The loaders' contract is an allow-list written as a forbidden list: a module added to wslfast or
    wslfast.data must be added to it (or, if loaders may use it, here)."""
    allowed = {"wslfast.data", "wslfast.data.format", "wslfast.data.loaders", "wslfast.errors", "wslfast.atomic",
               "wslfast.sparse_targets", "wslfast._version", "wslfast._ext"}
    every = _modules(ROOT / "wslfast", "wslfast") | _modules(ROOT / "wslfast" / "data", "wslfast.data")
    contract = next(c for c in CONFIG["contracts"] if c["id"] == "loaders-read-only-the-format")
    missing = every - allowed - set(contract["forbidden_modules"])
    assert not missing, f"add to the loaders' forbidden_modules in pyproject.toml: {sorted(missing)}"
