"""`python -m wslfast.data label`: what each line of a caption or tag file turns into.

```bash
python -m wslfast.data label --kind caption captions.txt             # one caption a line
python -m wslfast.data label --kind caption data.jsonl --text-field caption --vocab vocab.json
python -m wslfast.data label --kind tags tags.txt                     # '#cat #kitty' or 'cat, kitty' a line
python -m wslfast.data label --kind tags data.jsonl --tags-field tags --details
cat captions.txt | python -m wslfast.data label --kind caption -     # '-' reads stdin
python -m wslfast.data label --kind caption captions.txt --count-stats --save-stats stats.json
```
Prints one JSON object per input line, in order: `{"text": ..., "synsets": ["crane.n.05", ...],
"labels": [...]}`; `labels` (vocabulary ids) only with `--vocab`, whose synsets then bound the sense choice;
`units` (per word: span, lemmas, synset, why dropped, best candidates with scores) with `--details`.
Input lines: for captions the line itself, or with `--text-field F` a JSON object whose field F is the text;
for tags a JSON list of strings (a line starting with '['), or with `--tags-field F` a JSON object whose field
F is that list, or else hashtags separated by whitespace and/or commas. A line that cannot be read (not
UTF-8, not the JSON expected, a field missing or of the wrong type) prints `{"line": n, "error": ...,
"synsets": []}` and is counted; the count and the first reasons go to stderr at the end; the run goes on.
`--count-stats` first counts co-occurrence over FILE (cooccur.py; not with stdin), `--stats` reads counts
saved by `--save-stats`.
"""
from __future__ import annotations

import json
import sys

__all__ = ["add_parser", "run", "parse_line"]


def add_parser(sub) -> None:
    p = sub.add_parser("label", help="show the WordNet synsets each caption or tag line turns into")
    p.add_argument("file", metavar="FILE", help="input file, one caption or tag list a line; '-' for stdin")
    p.add_argument("--kind", required=True, choices=("caption", "tags"))
    p.add_argument("--vocab", default=None, help="a vocabulary (from `vocab`): print its label ids too")
    p.add_argument("--text-field", default=None, help="captions: lines are JSON objects, the text in this field")
    p.add_argument("--tags-field", default=None, help="tags: lines are JSON objects, the tag list in this field")
    p.add_argument("--details", action="store_true", help="add per-word detail ('units')")
    p.add_argument("--stats", default=None, help="co-occurrence counts saved by --save-stats")
    p.add_argument("--count-stats", action="store_true", help="count co-occurrence over FILE first (2 passes)")
    p.add_argument("--save-stats", default=None, help="with --count-stats: save the counts here")


def parse_line(raw: bytes, kind: str, text_field: str | None, tags_field: str | None):
    """The caption (str) or tag list (list of str) of one input line; ValueError saying why not."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    field = text_field if kind == "caption" else tags_field
    if field is not None:
        try:
            obj = json.loads(line)
        except ValueError:
            raise ValueError("not a JSON object") from None
        if not isinstance(obj, dict):
            raise ValueError(f"not a JSON object but a {type(obj).__name__}")
        if field not in obj:
            raise ValueError(f"no field {field!r}")
        value = obj[field]
    elif kind == "tags" and line.lstrip().startswith("["):
        try:
            value = json.loads(line)
        except ValueError:
            raise ValueError("starts with '[' but is not a JSON list") from None
    elif kind == "tags":
        value = [t for t in line.replace(",", " ").split() if t]
    else:
        value = line
    if kind == "caption":
        if not isinstance(value, str):
            raise ValueError(f"the caption is a {type(value).__name__}, not a string")
    elif not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("the tags are not a list of strings")
    return value


def _lines(path: str):
    if path == "-":
        yield from sys.stdin.buffer
    else:
        with open(path, "rb") as f:
            yield from f


def run(args) -> int:
    from .vocab import HashtagVocabulary
    from .cooccur import ContextCounter
    from .senses import SenseTagger

    if args.count_stats and args.file == "-":
        print("error: --count-stats reads FILE twice; give a file, not stdin", file=sys.stderr)
        return 1
    if args.save_stats and not args.count_stats:
        print("error: --save-stats needs --count-stats", file=sys.stderr)
        return 1
    vocab = HashtagVocabulary.load(args.vocab) if args.vocab else None
    stats = None
    if args.stats or args.count_stats:
        counter = ContextCounter.load(args.stats, SenseTagger()) if args.stats else None
        if args.count_stats:
            fresh = ContextCounter(SenseTagger(), kind=args.kind)
            for raw in _lines(args.file):
                try:
                    fresh.add(parse_line(raw, args.kind, args.text_field, args.tags_field))
                except ValueError:
                    continue  # counted and reported by the labelling pass
            counter = fresh if counter is None else counter.merge(fresh)
            if args.save_stats:
                counter.save(args.save_stats)
        stats = counter.stats()
    tagger = SenseTagger(vocab=vocab, stats=stats)
    names = tagger.lex.names
    out = sys.stdout
    n = bad = 0
    reasons: list[str] = []
    try:
        for n, raw in enumerate(_lines(args.file), 1):
            try:
                value = parse_line(raw, args.kind, args.text_field, args.tags_field)
            except ValueError as e:
                bad += 1
                if len(reasons) < 5:
                    reasons.append(f"line {n}: {e}")
                out.write(json.dumps({"line": n, "error": str(e), "synsets": []}) + "\n")
                continue
            sids = tagger.synset_ids(value, args.kind)
            rec = {"text": value, "synsets": [names[s] for s in sids]}
            if vocab is not None:
                rec["labels"] = tagger.label_ids(sids)
            if args.details:
                units = tagger.explain_caption(value) if args.kind == "caption" else tagger.explain_tags(value)
                rec["units"] = [u.to_dict() for u in units]
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        out.flush()
    except BrokenPipeError:  # `| head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    msg = f"label: {n} lines, {bad} bad"
    print(msg + (f" ({'; '.join(reasons)})" if reasons else ""), file=sys.stderr)
    return 0
