"""wslfast.data's front door: its public names, and what importing the build costs (no torch, no DALI)."""
import subprocess
import sys
from pathlib import Path

import pytest

import wslfast.data as data

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,module", [("HashtagVocabulary", "labels.vocab"), ("normalize_hashtag", "labels.vocab"),
                                         ("write_shards", "build.driver"), ("list_shards", "format"),
                                         ("read_manifest", "format"), ("verify_shard", "format"),
                                         ("train_loader", "loaders.factory"), ("eval_loader", "loaders.factory"),
                                         ("make_synthetic_corpus", "synthetic"), ("prepare_demo", "demo")])
def test_public_names(name, module):
    obj = getattr(data, name)
    assert obj.__module__ == f"wslfast.data.{module}" and name in data.__all__ and name in dir(data)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        data.nothing


def test_the_build_and_the_cli_load_neither_torch_nor_dali():
    """The data tools and their Ray workers never load libtorch (a few hundred MB per process)."""
    code = ("import sys, wslfast.data.build, wslfast.data.__main__, wslfast.data.demo; "
            "print(sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
