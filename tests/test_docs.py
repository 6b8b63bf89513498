"""The README and docs/ hold what they promise: the two commands, a short README, the layer map that
pyproject.toml's contracts check, links that lead somewhere, and Python that names things that exist."""
import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "wslfast" / "data" / "README.md"]
TWO_COMMANDS = ["bash scripts/setup.sh && .venv/bin/python train/pretrain.py",
                "bash scripts/setup.sh && .venv/bin/python -m pytest -q"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_is_short_and_holds_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for command in TWO_COMMANDS:
        assert command in text, command
    # .ci/run runs the second one, as the README says
    assert TWO_COMMANDS[1].replace(" -q", " -q -p no:cacheprovider") in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_no_lab_notebook():
    """Measurements live in benchmarks/results and their generated tables, history in the git log."""
    text = README.read_text()
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a date in the README"
    assert not re.search(r"\bcommit [0-9a-f]{7,40}\b", text), "a commit id in the README"
    assert not re.search(r"\b(an earlier run|load average|busy machine|quiet machine)\b", text, re.I)


def test_the_readme_map_shows_the_contracts_layers():
    """Each `layers` contract of pyproject.toml appears in the README's map, its layers top to bottom."""
    text = README.read_text()
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = [c for c in contracts if c["type"] == "layers"]
    assert layered
    for contract in layered:
        (container,) = contract["containers"]
        m = re.search(rf"^{re.escape(container)}:.*?(?=^\s*$|^```)", text, re.M | re.S)
        assert m, f"no map of {container} in the README"
        lines = [line.split(":", 1)[-1].split("(")[0].strip() for line in m.group(0).splitlines()]
        assert lines == contract["layers"], (container, lines)


def _links(page: Path):
    in_code = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
        if not in_code:
            for target in LINK.findall(line):
                yield n, target


def _anchors(page: Path) -> set:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces as dashes."""
    heads = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    checked = 0
    for n, target in _links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)}:{n}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.relative_to(ROOT)}:{n}: no heading #{anchor} in {path}"
        checked += 1
    assert checked or page.name != "README.md", "the README links to no page"


def test_the_docs_pages_are_linked_from_the_readme():
    targets = {t for _, t in _links(README)}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in targets, page.name


def _python_imports(page: Path):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    for block in blocks:
        for line in block.splitlines():
            m = re.match(r"from (wslfast[\w.]*) import (.+?)\s*(#.*)?$", line)
            if m:
                yield m.group(1), [n.strip() for n in m.group(2).split(",")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_in_the_docs_names_what_exists(page):
    """Every `from wslfast... import ...` line of the pages' Python blocks (lazy exports by their __all__)."""
    for module, names in _python_imports(page):
        mod = importlib.import_module(module)
        for name in names:
            assert name in getattr(mod, "__all__", ()) or hasattr(mod, name), f"{page.name}: {module}.{name}"
