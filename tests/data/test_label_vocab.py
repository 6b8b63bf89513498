"""Caption vocabularies from streaming synset counts (CatLIP: top-N, minimum count) and IDF target weights
(SuperClass) against a direct float64 computation."""
import math
import random

import pytest

from wslfast.data.labels.vocabulary import document_frequencies, idf_weights


def test_count_synsets_and_caption_vocabulary(wordnet, tmp_path):
    from wslfast.data.labels.senses import SenseTagger
    from wslfast.data.labels.vocabulary import caption_vocabulary, count_synsets
    from wslfast.data.labels.vocab import HashtagVocabulary

    tagger = SenseTagger()
    texts = iter(["a dog and a dog on the beach", "dog with a ball", "a cat on the beach", "photo of a crane"])
    counts = count_synsets(texts, tagger)  # streamed from an iterator
    assert counts["dog.n.01"] == 2  # per text, not per word
    assert counts["beach.n.01"] == 2 and counts["cat.n.01"] == 1 and "photograph.n.01" not in counts
    v = caption_vocabulary(counts, min_count=2)
    assert v.synsets == ["dog.n.01", "beach.n.01"]  # by count, ties by offset; cat (1) left out
    assert v.counts == [2, 2] and v.source == "wordnet-captions"
    assert v.label_of("#dogs") == v.synsets.index("dog.n.01")  # a normal HashtagVocabulary table
    v.save(tmp_path / "v.json")
    assert HashtagVocabulary.load(tmp_path / "v.json") == v
    assert caption_vocabulary(counts, top=1).synsets == ["dog.n.01"]
    tags = count_synsets([["#crane", "#bird"], ["#crane", "#construction"]], tagger, kind="tags")
    assert tags["crane.n.05"] == 1 and tags["crane.n.04"] == 1
    with pytest.raises(ValueError, match="no synset has 5 or more texts"):
        caption_vocabulary(counts, min_count=5)
    with pytest.raises(ValueError, match="min_count"):
        caption_vocabulary(counts, min_count=0)
    with pytest.raises(ValueError, match="not a WordNet noun synset"):
        caption_vocabulary({"nosuch.n.01": 3})
    with pytest.raises(ValueError, match="top"):
        caption_vocabulary(counts, top=0)
    with pytest.raises(ValueError, match="kind"):
        count_synsets([], tagger, kind="words")


def test_idf_weights_against_direct_formula():
    rng = random.Random(0)
    samples = [rng.sample(range(30), rng.randint(1, 6)) for _ in range(500)]
    df, n = document_frequencies(iter(samples))
    assert n == 500 and sum(df.values()) == sum(len(s) for s in samples)
    for labels in samples[:50]:
        w = idf_weights(labels, df, n)
        raw = [math.log(n / sum(j in s for s in samples)) for j in labels]  # brute-force df
        assert w == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)
        assert sum(w) == pytest.approx(1.0)
    assert idf_weights([], df, n) == []


def test_idf_weights_edge_cases():
    assert idf_weights([3], {3: 10}, 100) == [1.0]
    assert idf_weights([1, 2], {1: 10, 2: 10}, 10) == [0.5, 0.5]  # in every document: back to 1/k
    w = idf_weights([1, 2], {1: 1, 2: 50}, 100)
    assert w[0] > w[1] and w[0] == pytest.approx(math.log(100) / (math.log(100) + math.log(2)))
    assert idf_weights([0, 1], [4, 2], 8) == pytest.approx([1 / 3, 2 / 3])  # df as a sequence
    with pytest.raises(ValueError, match="no document frequency"):
        idf_weights([5], {1: 2}, 10)
    with pytest.raises(ValueError, match="outside"):
        idf_weights([1], {1: 0}, 10)
    with pytest.raises(ValueError, match="outside"):
        idf_weights([1], {1: 11}, 10)
    with pytest.raises(ValueError, match="distinct"):
        idf_weights([1, 1], {1: 2}, 10)
    with pytest.raises(ValueError, match="num_docs"):
        idf_weights([1], {1: 1}, 0)
