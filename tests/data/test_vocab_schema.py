"""A saved vocabulary that breaks the schema is refused in one line naming the file and the field, by
`HashtagVocabulary.load`, by `from_dict` (manifests) and by the CLI; a good one still round-trips."""
import json

import pytest

from wslfast.data.__main__ import main
from wslfast.data.labels.vocab import HashtagVocabulary
from wslfast.data.synthetic import concept_vocabulary
from wslfast.errors import DataError

GOOD = concept_vocabulary().to_dict()
L = len(GOOD["synsets"])

# name: (what is changed, a word the message must contain)
BAD = {
    "hashtags an empty list": ({"hashtags": []}, "'hashtags' must be a non-empty object"),
    "hashtags an empty object": ({"hashtags": {}}, "'hashtags' must be a non-empty object"),
    "synsets a string": ({"synsets": "ab", "wnids": ["n1", "n2"], "hashtags": {"a": 0, "b": 1}},
                         "'synsets' must be a non-empty list of strings, got str 'ab'"),
    "true as a label": ({"hashtags": {**GOOD["hashtags"], "dog": True}}, "label True"),
    "false as a label": ({"hashtags": {"dog": False}}, "label False"),
    "a float label": ({"hashtags": {"dog": 1.0}}, "label 1.0"),
    "a string label": ({"hashtags": {"dog": "1"}}, "label '1'"),
    "a null label": ({"hashtags": {"dog": None}}, "label None"),
    "a label out of range": ({"hashtags": {"dog": L}}, f"label {L}: labels are integers in [0, {L})"),
    "a negative label": ({"hashtags": {"dog": -1}}, "label -1"),
    "duplicate synsets": ({"synsets": ["dog.n.01", "dog.n.01"], "wnids": ["n1", "n2"], "hashtags": {"dog": 0}},
                          "'synsets' lists 'dog.n.01' twice (labels 0 and 1)"),
    "duplicate wnids": ({"wnids": ["n02084071"] * L}, "'wnids' lists 'n02084071' twice"),
    "no synsets": ({"synsets": [], "wnids": [], "hashtags": {"dog": 0}}, "'synsets' must be a non-empty list"),
    "a number among synsets": ({"synsets": [*GOOD["synsets"][:-1], 7]}, f"'synsets'[{L - 1}] must be a non-empty"),
    "an empty synset": ({"synsets": [*GOOD["synsets"][:-1], ""]}, f"'synsets'[{L - 1}]"),
    "fewer wnids": ({"wnids": GOOD["wnids"][:-1]}, "one wnid per synset"),
    "wnids an object": ({"wnids": {"a": 1}}, "'wnids' must be a non-empty list of strings, got an object"),
    "an empty hashtag": ({"hashtags": {"": 0}}, "empty hashtag"),
    "counts a string": ({"counts": "abc"}, "'counts' must be null or"),
    "counts too short": ({"counts": [1] * (L - 1)}, "'counts' must be null or"),
    "a negative count": ({"counts": [-1] * L}, "'counts' must be null or"),
    "a boolean count": ({"counts": [True] * L}, "'counts' must be null or"),
    "source a number": ({"source": 3}, "'source' must be a string"),
    "a newer version": ({"version": 2}, "version 2 is not 1"),
    "no format tag": ({"format": "something-else"}, "missing format tag"),
    "no hashtags field": ({"hashtags": None}, "'hashtags' must be a non-empty object"),
}


def _write(tmp_path, obj, name="v.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_vocabulary_is_refused_in_one_line(case, tmp_path):
    change, words = BAD[case]
    d = {**GOOD, **change}
    path = _write(tmp_path, d)
    with pytest.raises(DataError) as e:
        HashtagVocabulary.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and words in msg, msg
    with pytest.raises(ValueError) as e:  # from_dict (a manifest's "vocab"): the same check
        HashtagVocabulary.from_dict(d)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_missing_field_and_not_an_object(tmp_path):
    for field in ("synsets", "wnids", "hashtags"):
        d = {k: v for k, v in GOOD.items() if k != field}
        with pytest.raises(DataError, match=f"field '{field}' is missing"):
            HashtagVocabulary.load(_write(tmp_path, d))
    for top in ([1, 2], "vocab", 3, None):
        with pytest.raises(DataError, match="not a wslfast hashtag vocabulary"):
            HashtagVocabulary.load(_write(tmp_path, top))


def test_a_folder_and_broken_json_are_named(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="is a folder, not a vocabulary file"):
        HashtagVocabulary.load(tmp_path / "d")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(DataError, match="is not a JSON vocabulary file"):
        HashtagVocabulary.load(tmp_path / "deep.json")
    with pytest.raises(FileNotFoundError):
        HashtagVocabulary.load(tmp_path / "missing.json")


def test_a_good_vocabulary_round_trips_and_labels_are_exact(tmp_path):
    v = concept_vocabulary()
    v.save(tmp_path / "v.json")
    w = HashtagVocabulary.load(tmp_path / "v.json")
    assert w == v and w.label_of("dogs") == v.label_of("dog") == 1
    counted = {**GOOD, "counts": list(range(L))}
    assert HashtagVocabulary.from_dict(counted).counts == list(range(L))
    with pytest.raises(ValueError, match="label True"):  # the constructor too
        HashtagVocabulary(["dog.n.01", "cat.n.01"], ["n1", "n2"], {"dog": True})


@pytest.mark.parametrize("case", ["hashtags an empty list", "synsets a string", "true as a label"])
def test_the_cli_prints_one_line(case, tmp_path, capsys):
    change, words = BAD[case]
    vocab = _write(tmp_path, {**GOOD, **change})
    (tmp_path / "images").mkdir()
    (tmp_path / "tags.jsonl").write_text('{"image": "a.jpg", "tags": ["dog"]}\n')
    assert main(["shards", "--images", str(tmp_path / "images"), "--tags", str(tmp_path / "tags.jsonl"),
                 "--vocab", str(vocab), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    (tmp_path / "vdir").mkdir()
    assert main(["shards", "--images", str(tmp_path / "images"), "--tags", str(tmp_path / "tags.jsonl"),
                 "--vocab", str(tmp_path / "vdir"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder" in err, err
