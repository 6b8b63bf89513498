"""Fixtures for the data tests: WordNet (skipped with a reason when absent), a small synthetic corpus."""
import pytest

from wslfast.data.labels.wordnet import WordNetMissingError, ensure_wordnet


@pytest.fixture(scope="session")
def wordnet():
    try:
        ensure_wordnet()
    except WordNetMissingError as e:
        pytest.skip(f"WordNet not installed ({e}); CI installs wordnet-base wordnet-sense-index")
    from wslfast.data.labels.wordnet import get_wordnet

    return get_wordnet()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from wslfast.data.synthetic import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_images=240, seed=1, image_size=48,
                                 num_target_classes=4, target_train_per_class=6, target_val_per_class=5)


@pytest.fixture(scope="session")
def vocab():
    """The synthetic concepts' vocabulary: built without WordNet, so shard and loader tests run anywhere
    (test_synthetic checks it against WordNet where WordNet is installed)."""
    from wslfast.data.synthetic import concept_vocabulary

    return concept_vocabulary()


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, corpus, vocab):
    from wslfast.data.build import write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards(corpus["images"], corpus["tags"], vocab, out, shard_size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def yfcc_row():
    """Builds one YFCC100M metadata line (24 fields, plus the leading line number by default)."""
    def _yfcc_row(photo_id, photo_hash, tags, marker="0", line_number=True):
        fields = [photo_id, photo_hash, "12345@N00", "nick", "2010-01-01", "1262304000", "Canon", "title", "desc",
                  tags, "", "", "", "", "http://page", "http://dl", "licence", "http://lic", "1", "2", "s", "so",
                  "jpg", marker]
        return "\t".join(([str(photo_id)] if line_number else []) + fields)

    return _yfcc_row
