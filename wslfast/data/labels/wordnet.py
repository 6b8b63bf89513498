"""WordNet 3.0 for nltk, from the Debian packages, with no download at run time.

Debian's `wordnet-base` and `wordnet-sense-index` put the database in /usr/share/wordnet. nltk needs the
files as real copies (it does not follow the package's layout) in `<nltk_data>/corpora/wordnet/`, plus a
`lexnames` file that Debian does not ship; `ensure_wordnet` copies them once and writes that table.
"""
from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

from ...errors import WordNetMissingError

__all__ = ["ensure_wordnet", "get_wordnet", "wordnet_available", "WordNetMissingError", "INSTALL_HINT"]

INSTALL_HINT = ("apt-get install wordnet-base wordnet-sense-index "
                "(then `python -m wslfast.data setup-wordnet`)")
DEBIAN_DIRS = ("/usr/share/wordnet",)
# The files nltk's WordNetCorpusReader opens (index.sense comes from wordnet-sense-index).
WORDNET_FILES = ("cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
                 "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")

# lexnames(5WN): file number, lexicographer file name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv).
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
             "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
             "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
             "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
             "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
             "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
             "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
             "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


def default_nltk_data_dir() -> Path:
    env = os.environ.get("WSLFAST_NLTK_DATA")
    return Path(env) if env else Path.home() / ".cache" / "wslfast" / "nltk_data"


def _find_debian_dir() -> Path | None:
    for d in DEBIAN_DIRS:
        if all((Path(d) / f).is_file() for f in WORDNET_FILES):
            return Path(d)
    return None


def _is_complete(corpus: Path) -> bool:
    return (corpus / "lexnames").is_file() and all(
        (corpus / f).is_file() and not (corpus / f).is_symlink() for f in WORDNET_FILES)


def ensure_wordnet(nltk_data_dir: str | os.PathLike | None = None) -> Path:
    """Make `<nltk_data_dir>/corpora/wordnet` readable by nltk; returns that corpus folder.

    Copies the Debian files once (a copy already in place is reused), writes `lexnames`, and adds the
    folder to `nltk.data.path`. Raises WordNetMissingError with the apt command when the files are absent.
    """
    root = Path(nltk_data_dir) if nltk_data_dir is not None else default_nltk_data_dir()
    corpus = root / "corpora" / "wordnet"
    if not _is_complete(corpus):
        src = _find_debian_dir()
        if src is None:
            raise WordNetMissingError(
                f"WordNet 3.0 not found in {', '.join(DEBIAN_DIRS)} nor in {corpus}. Install it with: "
                f"{INSTALL_HINT}")
        corpus.mkdir(parents=True, exist_ok=True)
        for name in WORDNET_FILES:
            tmp = corpus / f"{name}.{os.getpid()}.tmp"  # ranks starting together never share a tmp file
            shutil.copyfile(src / name, tmp)  # a real copy: nltk does not read the symlinked layout
            os.replace(tmp, corpus / name)
        tmp = corpus / f"lexnames.{os.getpid()}.tmp"
        tmp.write_text(lexnames_text())
        os.replace(tmp, corpus / "lexnames")
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return corpus


@functools.lru_cache(maxsize=None)
def _reader(corpus: str):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with warnings.catch_warnings():  # "multilingual functions are not available": we only use English
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(corpus, None)


def get_wordnet(nltk_data_dir: str | os.PathLike | None = None):
    """An nltk WordNetCorpusReader over the local copy (made on first use)."""
    return _reader(str(ensure_wordnet(nltk_data_dir)))


def wordnet_available() -> bool:
    try:
        ensure_wordnet()
        return True
    except (WordNetMissingError, OSError):
        return False
