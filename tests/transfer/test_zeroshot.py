"""Zero-shot scores against a hand-computed case, the WordNet hyponym sets (a hand-made tree, and real
WordNet where installed), class maps and bad input."""
import math

import pytest
import torch

from wslfast.data.labels.vocab import HashtagVocabulary
from wslfast.transfer import (class_hashtag_sets, load_vocabulary, read_class_map, resolve_class_synsets,
                              zeroshot_evaluate, zeroshot_scores)


def test_scores_match_a_hand_computed_case():
    # softmax of [0, ln2, ln3, 0] = [1, 2, 3, 1] / 7
    logits = torch.tensor([[0.0, math.log(2), math.log(3), 0.0]])
    sets = [[1, 2], [0], [], [3, 0]]
    lse = zeroshot_scores(logits, sets, "logsumexp")[0]
    assert lse[0].item() == pytest.approx(math.log(5 / 7), abs=1e-6)
    assert lse[1].item() == pytest.approx(math.log(1 / 7), abs=1e-6)
    assert lse[2].item() == float("-inf")
    assert lse[3].item() == pytest.approx(math.log(2 / 7), abs=1e-6)
    mx = zeroshot_scores(logits, sets, "max")[0]
    assert mx[0].item() == pytest.approx(math.log(3 / 7), abs=1e-6)
    assert mx[3].item() == pytest.approx(math.log(1 / 7), abs=1e-6)


class FakeSynset:
    def __init__(self, offset, children=()):
        self._offset, self._children = offset, list(children)

    def offset(self):
        return self._offset

    def hyponyms(self):
        return self._children

    def instance_hyponyms(self):
        return []

    def closure(self, rel):
        out, todo = [], list(rel(self))
        while todo:
            s = todo.pop()
            out.append(s)
            todo += rel(s)
        return out


class FakeWordNet:
    """animal(1) -> dog(2) -> puppy(3), beagle(4); animal -> cat(5)."""

    def __init__(self):
        puppy, beagle, cat = FakeSynset(3), FakeSynset(4), FakeSynset(5)
        dog = FakeSynset(2, [puppy, beagle])
        self.by_offset = {1: FakeSynset(1, [dog, cat]), 2: dog, 3: puppy, 4: beagle, 5: cat}

    def synset_from_pos_and_offset(self, pos, offset):
        return self.by_offset[offset]


def fake_vocab():
    # labels: 0 beagle, 1 cat, 2 dog, 3 car (not in the tree); animal itself is no label
    return HashtagVocabulary(["beagle.n.01", "cat.n.01", "dog.n.01", "car.n.01"],
                             ["n00000004", "n00000005", "n00000002", "n00000099"],
                             {"beagle": 0, "cat": 1, "dog": 2, "car": 3})


def test_hashtag_sets_follow_the_hyponym_tree():
    vocab, wn = fake_vocab(), FakeWordNet()
    sets = class_hashtag_sets(["n00000002", "n00000005", "n00000001", "n00000003"], vocab, wordnet=wn)
    assert sets == [[0, 2], [1], [0, 1, 2], []]  # dog: itself + beagle; animal: all three; puppy: none
    assert class_hashtag_sets(["n00000002", "n00000001"], vocab, hyponyms=False) == [[2], []]


def test_evaluate_end_to_end_with_a_fixed_hashtag_head():
    vocab, wn = fake_vocab(), FakeWordNet()
    sets = class_hashtag_sets(["n00000002", "n00000005"], vocab, wordnet=wn)  # dog vs cat

    class Head(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)  # the "images" are the hashtag logits themselves

    images = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 5.0], [0, 0, 1.0, 0]])
    labels = torch.tensor([0, 1, 0, 1])  # beagle -> dog (right), cat (right), car -> tie, dog-ish -> wrong
    top1, top5, scores, y = zeroshot_evaluate(Head(), [(images[:2], labels[:2]), (images[2:], labels[2:])], sets)
    assert scores.shape == (4, 2) and torch.equal(y, labels)
    # row 2: dog = log(2e^0/Z) > cat = log(1/Z): predicted dog, right; row 3: dog wins too, wrong
    assert top1 == pytest.approx(75.0) and top5 == pytest.approx(100.0)


def test_vocabulary_from_vocab_json_or_manifest(tmp_path):
    import json

    vocab = fake_vocab()
    (tmp_path / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    (tmp_path / "manifest.json").write_text(json.dumps({"num_classes": 4, "vocab": vocab.to_dict()}))
    assert load_vocabulary(str(tmp_path / "vocab.json")) == vocab == load_vocabulary(str(tmp_path / "manifest.json"))
    with pytest.raises(ValueError, match="cannot read a hashtag vocabulary"):
        load_vocabulary(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="cannot read a hashtag vocabulary"):
        load_vocabulary(str(tmp_path / "bad.json"))


def test_class_names_and_maps(tmp_path):
    assert resolve_class_synsets(["n02084071", "dog.n.01"]) == ["n02084071", "dog.n.01"]
    with pytest.raises(ValueError, match="not a WordNet synset"):
        resolve_class_synsets(["n02084071", "doggo"])
    f = tmp_path / "map.tsv"
    f.write_text("# class  synset\ndoggo\tdog.n.01\nkitty n02122948\n")
    m = read_class_map(str(f))
    assert resolve_class_synsets(["doggo", "kitty"], m) == ["dog.n.01", "n02122948"]
    with pytest.raises(ValueError, match="missing from the class map"):
        resolve_class_synsets(["doggo", "bird"], m)
    f.write_text("doggo\tdog\n")
    with pytest.raises(ValueError, match=r"map.tsv:1: expected"):
        read_class_map(str(f))
    with pytest.raises(ValueError, match="pooling"):
        zeroshot_scores(torch.zeros(1, 2), [[0]], "mean")
    with pytest.raises(ValueError, match="outside"):
        zeroshot_scores(torch.zeros(1, 2), [[2]])


@pytest.mark.slow  # reading WordNet's noun database: ~10 s
def test_real_wordnet_hyponyms():
    from wslfast.data.labels.wordnet import wordnet_available

    if not wordnet_available():
        pytest.skip("WordNet is not installed")
    from wslfast.data.labels.wordnet import get_wordnet

    wn = get_wordnet()
    names = ["dog.n.01", "hound.n.01", "beagle.n.01", "tabby.n.01", "car.n.01", "kitten.n.01"]
    synsets = [wn.synset(n) for n in names]
    vocab = HashtagVocabulary(names, [f"n{s.offset():08d}" for s in synsets], {})
    sets = class_hashtag_sets(["n02084071", "domestic_cat.n.01", "beagle.n.01", "car.n.01"], vocab)
    # dog.n.01 holds hound and (hunting_dog -> hound ->) beagle; a tabby is a domestic cat, a kitten (a
    # young_mammal in WordNet) is not
    assert sets == [[0, 1, 2], [3], [2], [4]]


def test_calibration_against_a_hand_computed_case():
    # softmax of [0, ln2, ln3, 0] = [1, 2, 3, 1] / 7; the prior [1/2, 1/4, 1/8, 1/8] divided out (tau = 1):
    # p / prior = [2, 8, 24, 8] / 7; class {1, 2} -> 32/7, class {0} -> 2/7, class {3, 0} -> 10/7
    logits = torch.tensor([[0.0, math.log(2), math.log(3), 0.0]])
    sets = [[1, 2], [0], [3, 0]]
    log_prior = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    got = zeroshot_scores(logits, sets, "logsumexp", log_prior=log_prior, prior_strength=1.0)[0]
    assert got.tolist() == pytest.approx([math.log(32 / 7), math.log(2 / 7), math.log(10 / 7)], abs=1e-6)
    half = zeroshot_scores(logits, sets, "max", log_prior=log_prior, prior_strength=0.5)[0]
    # max over the set of p_j / prior_j^0.5: class {3, 0}: max(1/7 * sqrt 8, 1/7 * sqrt 2)
    assert half[2].item() == pytest.approx(math.log(math.sqrt(8) / 7), abs=1e-6)
    # temperature: the softmax of logits / T
    cold = zeroshot_scores(logits, sets, "logsumexp", temperature=0.5)[0]
    p = torch.softmax(logits[0].double() / 0.5, 0)
    assert cold.tolist() == pytest.approx([math.log(p[1] + p[2]), math.log(p[0]), math.log(p[3] + p[0])], abs=1e-6)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        zeroshot_scores(logits, sets, temperature=0.0)
    with pytest.raises(ValueError, match="needs a log prior of 4 labels"):
        zeroshot_scores(logits, sets, prior_strength=1.0)


def test_label_prior_is_smoothed_counts():
    from wslfast.transfer import log_label_prior

    got = log_label_prior([3, 0, 1])
    assert got.exp().tolist() == pytest.approx([4 / 7, 1 / 7, 2 / 7]) and math.isfinite(got[1].item())
    for bad in ([], [1, -1], [float("nan")]):
        with pytest.raises(ValueError, match="label counts"):
            log_label_prior(bad)
