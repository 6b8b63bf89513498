import gzip
import re
from pathlib import Path

import pytest

from wslfast.data.labels import wordnet as W


def test_lexnames_match_the_man_page():
    rows = [line.split("\t") for line in W.lexnames_text().splitlines()]
    assert len(rows) == 45
    assert [int(r[0]) for r in rows] == list(range(45))
    cat = {"noun": "1", "verb": "2", "adj": "3", "adv": "4"}
    assert all(r[2] == cat[r[1].split(".")[0]] for r in rows)
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if man.is_file():  # the table of lexnames(5WN) itself, as the independent reference
        text = gzip.open(man, "rt").read()
        ref = re.findall(r"^(\d\d)\t(\S+)\s", text, flags=re.M)
        assert [(r[0], r[1]) for r in rows] == ref


def test_missing_wordnet_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "DEBIAN_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(W.WordNetMissingError, match="apt-get install wordnet-base wordnet-sense-index"):
        W.ensure_wordnet(tmp_path / "nltk_data")


@pytest.mark.slow
def test_copies_real_files_once(wordnet, tmp_path):
    corpus = W.ensure_wordnet(tmp_path)
    assert corpus == tmp_path / "corpora" / "wordnet"
    for name in W.WORDNET_FILES + ("lexnames",):
        p = corpus / name
        assert p.is_file() and not p.is_symlink()
    mtime = (corpus / "data.noun").stat().st_mtime_ns
    assert W.ensure_wordnet(tmp_path) == corpus
    assert (corpus / "data.noun").stat().st_mtime_ns == mtime  # reused, not copied again
    reader = W._reader(str(corpus))
    assert reader.get_version() == "3.0"
    assert reader.synset("brown_bear.n.01").lexname() == "noun.animal"


def test_nltk_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WSLFAST_NLTK_DATA", str(tmp_path))
    assert W.default_nltk_data_dir() == tmp_path
