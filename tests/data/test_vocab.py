import json

import pytest

from wslfast.data import HashtagVocabulary, normalize_hashtag


def test_normalize():
    assert normalize_hashtag("#BrownBear") == "brownbear"
    assert normalize_hashtag("  ##Brown_Bear ") == "brownbear"
    assert normalize_hashtag("jack-o'-lantern") == "jackolantern"
    assert normalize_hashtag("＃ＤＯＧ") == "dog"  # full-width: NFKC
    assert normalize_hashtag("#") == ""
    assert normalize_hashtag("#Café") == "cafe" and normalize_hashtag("Crème_Brûlée") == "cremebrulee"
    assert normalize_hashtag("#猫") == "猫"  # other scripts are kept (they just match no WordNet lemma)
    with pytest.raises(TypeError):
        normalize_hashtag(3)


def test_synonyms_merge_and_others_do_not(wordnet):
    v = HashtagVocabulary.from_counts({"#brownbear": 10, "ursusarctos": 3, "#dog": 7, "#bear": 2, "#cat": 1})
    assert v.label_of("#BrownBear") == v.label_of("ursusarctos") == v.label_of("#Ursus_Arctos")
    assert v.name_of(v.label_of("brownbear")) == "brown_bear.n.01"
    assert len({v.label_of(t) for t in ("brownbear", "dog", "bear", "cat")}) == 4
    assert v.counts[v.label_of("brownbear")] == 13
    assert v.synsets[0] == "brown_bear.n.01"  # ordered by count
    assert v.label_of("#instagood") is None and v.label_of("") is None
    # 'bruin' (unseen) means bruin.n.01 first, brown_bear.n.01 second: its best sense in the vocabulary
    assert v.label_of("bruin") == v.label_of("brownbear")
    assert "canisfamiliaris" in v.hashtags_of(v.label_of("dog"))


def test_plurals(wordnet):
    v = HashtagVocabulary.from_counts({"dogs": 3, "mice": 2, "#strawberries": 1, "boxes": 1, "dog": 1})
    assert v.name_of(v.label_of("dogs")) == "dog.n.01" == v.name_of(v.label_of("dog"))
    assert v.name_of(v.label_of("mice")) == "mouse.n.01"
    assert v.name_of(v.label_of("strawberries")) == "strawberry.n.01"
    assert v.name_of(v.label_of("boxes")) == "box.n.01"
    assert v.label_of("#Mouses") == v.label_of("mouse")  # regular rule on the saved table
    assert len(v) == 4


def test_most_frequent_sense_matches_nltk(wordnet):
    words = ["crane", "bank", "bear", "box", "mouse", "glasses", "seal", "apple"]
    v = HashtagVocabulary.from_counts({w: 1 for w in words})
    for w in words:  # nltk lists a lemma's senses in WordNet's frequency order
        assert v.name_of(v.label_of(w)) == wordnet.synsets(w, "n")[0].name(), w


def test_min_count_and_top(wordnet):
    counts = {"dog": 9, "cat": 5, "horse": 3, "tree": 1}
    assert [s.split(".")[0] for s in HashtagVocabulary.from_counts(counts, min_count=3).synsets] == \
        ["dog", "cat", "horse"]
    top = HashtagVocabulary.from_counts(counts, top=2)
    assert top.synsets == ["dog.n.01", "cat.n.01"] and top.label_of("horse") is None
    with pytest.raises(ValueError, match="top"):
        HashtagVocabulary.from_counts(counts, top=0)
    with pytest.raises(ValueError, match="no hashtag"):
        HashtagVocabulary.from_counts({"instagood": 4, "nofilter": 2})
    with pytest.raises(ValueError, match="negative"):
        HashtagVocabulary.from_counts({"dog": -1})
    with pytest.raises(ValueError, match="source"):
        HashtagVocabulary.from_counts(counts, source="freebase")


def test_imagenet1k(wordnet):
    v = HashtagVocabulary.imagenet1k()
    assert len(v) == 1000 and len(set(v.wnids)) == 1000 and v.wnids == sorted(v.wnids)
    assert 1500 <= v.num_hashtags <= 1900
    for label in (0, 294, 999):  # wnid offset and synset agree with nltk
        s = wordnet.synset(v.name_of(label))
        assert v.wnid_of(label) == f"n{s.offset():08d}"
    assert v.wnid_of(0) == "n01440764" and v.name_of(v.label_of("tench")) == "tench.n.01"
    assert v.label_of("#brownbear") == v.label_of("ursusarctos") == 294
    crane = v.label_of("crane")  # two ImageNet synsets share 'crane': the better-ranked sense wins
    senses = [s.name() for s in wordnet.synsets("crane", "n")]
    in_vocab = [n for n in senses if n in v.synsets]
    assert len(in_vocab) == 2 and v.name_of(crane) == in_vocab[0]
    with pytest.raises(IndexError):
        v.name_of(1000)
    with pytest.raises(IndexError):
        v.hashtags_of(-1)


def test_save_load_roundtrip(wordnet, tmp_path):
    v = HashtagVocabulary.from_counts({"#brownbear": 10, "ursusarctos": 3, "#dog": 7})
    v.save(tmp_path / "v.json")
    w = HashtagVocabulary.load(tmp_path / "v.json")
    assert w == v and len(w) == 2 and w.label_of("UrsusArctos") == v.label_of("brownbear")
    assert w.hashtags_of(0) == v.hashtags_of(0)
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a wslfast hashtag vocabulary"):
        HashtagVocabulary.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="outside"):
        HashtagVocabulary(["dog.n.01"], ["n02084071"], {"dog": 3})


def test_counts_leave_out_what_the_tagger_never_labels(wordnet):
    """#love (a feeling) and #photo (the picture itself) get no label in a build, so they make no class."""
    v = HashtagVocabulary.from_counts({"#dog": 5, "#love": 9, "#photo": 4, "#picture": 2, "#cat": 1})
    assert [v.name_of(i) for i in range(len(v))] == ["dog.n.01", "cat.n.01"]
    assert v.label_of("#love") is None and v.label_of("#photo") is None


def test_vocab_from_tags_counts_the_senses_in_context(wordnet, tmp_path):
    """`vocab --tags`: each tag counts toward the sense the build gives it beside the record's other tags
    (#kitty beside #cat is a cat, not the betting pool; #crane beside #bird the bird, beside #construction
    the machine); --tag-senses first keeps the most-frequent-sense rule (the pool, one crane)."""
    from wslfast.data.__main__ import main

    lines = [["#kitty", "#cat"], ["#kitty", "#cat", "#cute"], ["#dog", "#love"], ["#crane", "#bird", "#lake"],
             ["#crane", "#construction", "#site"]]
    tags = tmp_path / "t.jsonl"
    tags.write_text("".join(json.dumps({"image": f"{i}.jpg", "tags": t}) + "\n" for i, t in enumerate(lines)))
    for senses in ("context", "first"):
        assert main(["vocab", "--tags", str(tags), "--tag-senses", senses, "--out", str(tmp_path / senses)]) == 0
    context = set(json.loads((tmp_path / "context").read_text())["synsets"])
    first = set(json.loads((tmp_path / "first").read_text())["synsets"])
    assert "pool.n.07" in first and "pool.n.07" not in context
    assert {"crane.n.04", "crane.n.05"} <= context and not {"crane.n.04", "crane.n.05"} & first
    assert "love.n.01" not in context | first
