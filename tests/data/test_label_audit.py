"""The sense audit set (tests/data/sense_audit.jsonl): well formed, and our labeller right on >= 85% of it,
printed beside CatLIP's first-sense rule on the same items (dev and held-out parts separately)."""
from pathlib import Path

import pytest

AUDIT = Path(__file__).with_name("sense_audit.jsonl")


def test_audit_set_is_well_formed(wordnet):
    from wslfast.data.labels.audit import load_audit, word_senses

    items = load_audit(AUDIT)
    assert len(items) >= 150
    assert {it["split"] for it in items} == {"dev", "holdout"}
    assert sum(it["split"] == "holdout" for it in items) >= len(items) // 4
    assert {it["kind"] for it in items} == {"caption", "tags"}
    assert len({it["id"] for it in items}) == len(items)
    ambiguous = 0
    for it in items:
        for name in it["accept"]:
            wordnet.synset(name)  # raises on a name WordNet does not have
        ambiguous += len(word_senses(it["word"], it["kind"], wordnet)) > 1
    assert ambiguous >= len(items) // 2  # mostly words with several noun senses
    assert sum(not it["accept"] for it in items) >= 10  # meta words judged too


def test_load_audit_rejects_bad_items(tmp_path):
    from wslfast.data.labels.audit import load_audit

    p = tmp_path / "a.jsonl"
    p.write_text('{"kind": "tags", "text": "not a list", "word": "x", "accept": []}\n')
    with pytest.raises(ValueError, match=":1:"):
        load_audit(p)
    p.write_text("{oops\n")
    with pytest.raises(ValueError, match="not an audit item"):
        load_audit(p)


def test_item_scoring_rule(wordnet):
    from wslfast.data.labels.audit import item_right

    item = {"kind": "caption", "word": "crane", "accept": ["crane.n.05"]}
    assert item_right(item, ["crane.n.05", "marsh.n.01"], wordnet)
    assert not item_right(item, ["crane.n.05", "crane.n.04"], wordnet)  # another sense of the word too
    assert not item_right(item, ["marsh.n.01"], wordnet)
    meta = {"kind": "caption", "word": "photo", "accept": []}
    assert item_right(meta, ["dog.n.01"], wordnet) and not item_right(meta, ["photograph.n.01"], wordnet)


def test_audit_score_beats_first_sense_rule(wordnet, capsys):
    from wslfast.data.labels.audit import first_sense_labels, load_audit, score
    from wslfast.data.labels.senses import SenseTagger

    items = load_audit(AUDIT)
    tagger = SenseTagger()
    ours = score(items, lambda it: tagger.caption(it["text"]) if it["kind"] == "caption" else tagger.tags(it["text"]),
                 wordnet)
    first = score(items, lambda it: first_sense_labels(it["text"], it["kind"], wordnet), wordnet)
    with capsys.disabled():
        for part in ("all", "dev", "holdout"):
            print(f"\nsense audit {part}: ours {ours[part]['right']}/{ours[part]['items']} = "
                  f"{ours[part]['accuracy']:.1%}, first-sense rule {first[part]['right']}/{first[part]['items']} = "
                  f"{first[part]['accuracy']:.1%}")
    assert ours["all"]["accuracy"] >= 0.85
    assert ours["holdout"]["accuracy"] >= 0.80
    assert ours["all"]["accuracy"] > first["all"]["accuracy"] + 0.3
