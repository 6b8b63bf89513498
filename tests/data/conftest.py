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


@pytest.fixture(scope="session")
def yfcc_line():
    """One YFCC100M metadata line in a released form (wslfast/data/sources/yfcc.py): 23 (Webscope's split
    files: photo id first, no line number, no hash), 25 (line number, photo id, photo hash first), "24"
    (photo id, hash) or "24n" (line number, photo id). Realistic Flickr values; the hash is the image
    bucket's key (MD5 of the download URL, '%x' a byte) unless given. Returns (line, hash)."""
    from wslfast.data.sources.yfcc import flickr_hash

    def _line(photo_id, form=23, tags="", title="", description="", marker="0", line_no=1, ext="jpg",
              photo_hash=None, url=None):
        pid = int(photo_id)
        server, farm, secret = 7000 + pid % 997, 1 + pid % 9, f"{pid * 2654435761 % (1 << 40):010x}"
        url = f"http://farm{farm}.staticflickr.com/{server}/{pid}_{secret}.jpg" if url is None else url
        h = photo_hash or flickr_hash(url)
        core = [str(pid), f"{10_000_000 + pid % 5000}@N0{pid % 8}", "some+nick", "2012-04-29 12:49:23.0",
                "1335749363", "Canon+EOS+400D+DIGITAL", title, description, tags, "", "-152.308655", "58.156174",
                "12", f"http://www.flickr.com/photos/{10_000_000 + pid % 5000}@N0{pid % 8}/{pid}/", url,
                "Attribution-NonCommercial-ShareAlike+License", "http://creativecommons.org/licenses/by-nc-sa/2.0/",
                str(server), str(farm), secret, f"{pid * 40503 % (1 << 40):010x}", ext, marker]
        fields = {23: core, 25: [str(line_no), core[0], h] + core[1:], "24": [core[0], h] + core[1:],
                  "24n": [str(line_no)] + core}[form]
        return "\t".join(fields), h

    return _line
