"""python -m wslfast.data {vocab,shards,label,synthetic,demo,setup-wordnet} ... (see --help of each)."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError, WordNetMissingError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wslfast.data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("vocab", help="build a hashtag vocabulary (WordNet noun synsets)")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--counts", help="COUNTS.tsv: hashtag<TAB>count a line")
    src.add_argument("--tags", nargs="+", help="count the hashtags of TAGS files (JSONL or YFCC100M; several "
                     "files or globs; .gz/.bz2/.xz/.zst read as streams) instead")
    src.add_argument("--imagenet1k", action="store_true", help="the 1,000 ImageNet-1k synsets")
    src.add_argument("--webdataset", nargs="+", help="count over webdataset / img2dataset tars instead: "
                     "'DIR/{00000..00999}.tar', globs, folders; local or fsspec URLs (s3://, gs://, ...)")
    v.add_argument("--wordnet-nouns", action="store_true", help="canonicalize to WordNet nouns (the default)")
    v.add_argument("--images", default=None, help="images folder: YFCC records whose image is not there are not "
                   "counted (default: no lookup, every photo's tags count)")
    v.add_argument("--top", type=int, default=None, help="keep the N most frequent synsets")
    v.add_argument("--min-count", type=int, default=1)
    v.add_argument("--out", required=True)
    _yfcc_arguments(v)
    _label_arguments(v)

    s = sub.add_parser("shards", help="write webdataset shards")
    s.add_argument("--images", default=None, help="images folder (with --tags)")
    inputs = s.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--tags", nargs="+",
                        help="TAGS files or globs: JSONL or YFCC100M metadata (detected per file), plain or "
                             ".gz/.bz2/.xz/.zst (e.g. the split yfcc100m_dataset-*.bz2 as released)")
    inputs.add_argument("--webdataset", nargs="+",
                        help="webdataset / img2dataset tars in place of --images/--tags: 'DIR/{00000..00999}.tar', "
                             "globs, folders; local or fsspec URLs; images read from inside the tars")
    s.add_argument("--vocab", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument("--label-noise", type=float, default=0.0)
    s.add_argument("--sampling", choices=("natural", "sqrt", "uniform", "cap"), default="natural",
                   help="copies per image: natural (once), sqrt / uniform (resampled by label frequency, total "
                        "kept), cap (MetaCLIP: a label on n > --cap images keeps each with probability cap/n)")
    s.add_argument("--cap", type=int, default=None, help="--sampling cap: the per-label threshold t (default 20000)")
    s.add_argument("--target-weights", choices=("uniform", "idf"), default="uniform",
                   help="what an image's k labels share: 1/k each (uniform) or IDF-weighted (SuperClass: "
                        "ln(N/df) per label, normalized; stored in the manifest, used by the loaders)")
    s.add_argument("--dedup-against", default=None)
    s.add_argument("--dedup-radius", type=int, default=None)
    s.add_argument("--workers", type=int, default=1,
                   help="CPUs; 1 (the default) runs in this process; > 1 runs a process pool on this machine "
                        "(neither opens a port)")
    s.add_argument("--engine", choices=("local", "pool", "ray"), default=None,
                   help="who runs the passes (default: local for --workers 1, pool above, ray with --ray-address); "
                        "'ray' without --ray-address starts an embedded Ray of --workers CPUs")
    s.add_argument("--ray-address", default=None,
                   help="run on a running Ray cluster: HOST:PORT of its head, or 'auto' ($RAY_ADDRESS, else the "
                        "cluster last started here; $RAY_ADDRESS is read only then); --out must be a folder every "
                        "node sees")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--name", default=None, help="dataset name (default role-source-I-L, e.g. train-local-2k-25)")
    _yfcc_arguments(s)
    s.add_argument("--max-pixels", type=_count, default=None,
                   help="skip images of more pixels, read from their header before decoding (default 64e6: "
                        "every camera photo, no decompression bomb)")
    s.add_argument("--follow-symlinks", action="store_true",
                   help="let symlinks inside --images lead outside it (refused and counted by default)")
    _label_arguments(s)

    y = sub.add_parser("synthetic", help="make the small demo corpus")
    y.add_argument("--out", required=True)
    y.add_argument("--num-images", type=int, default=2000)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--image-size", type=int, default=64)
    y.add_argument("--num-target-classes", type=int, default=10)

    d = sub.add_parser("demo", help="synthetic corpus + vocabulary + shards in one go (reused if done)")
    d.add_argument("--out", required=True)
    d.add_argument("--num-images", type=int, default=2000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-size", type=int, default=64)

    from .labels.label_cli import add_parser as add_label_parser  # text -> synsets: labels/label_cli.py

    add_label_parser(sub)

    w = sub.add_parser("setup-wordnet", help="copy the Debian WordNet files where nltk reads them")
    w.add_argument("--nltk-data", default=None, help="default: $WSLFAST_NLTK_DATA or ~/.cache/wslfast/nltk_data")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "vocab":
            from .format import read_counts
            from .labels import HashtagVocabulary
            from .sources import count_tags

            skipped: dict = {}
            if args.imagenet1k:
                vocab = HashtagVocabulary.imagenet1k()
            elif args.webdataset or args.kind == "caption" or (args.tags and args.tag_senses == "context"):
                vocab = _vocab_from_source(args)
            else:
                counts = read_counts(args.counts) if args.counts else \
                    count_tags(_tag_source(args, args.images), args.images, skipped)
                vocab = HashtagVocabulary.from_counts(counts, min_count=args.min_count, top=args.top)
            vocab.save(args.out)
            print(f"{args.out}: {len(vocab)} labels, {vocab.num_hashtags} hashtags")
            if args.tags and skipped:
                print(f"records not counted: {json.dumps(skipped, sort_keys=True)}")
        elif args.cmd == "shards":
            from .build import write_shards
            from .build.dedup import DEFAULT_RADIUS
            from .build.targets import DEFAULT_CAP

            radius = DEFAULT_RADIUS if args.dedup_radius is None else args.dedup_radius
            from .build.images import DEFAULT_MAX_PIXELS

            if args.cap is not None and args.sampling != "cap":
                raise UserError("--cap goes with --sampling cap")
            if args.tags and args.images is None:
                raise UserError("--tags needs --images (the folder the TAGS lines' images are in)")
            if args.webdataset and args.images is not None:
                raise UserError("--webdataset reads the images from inside the tars: drop --images")
            m = write_shards(args.images, _web_source(args) if args.webdataset else _tag_source(args, args.images), args.vocab, args.out,
                             shard_size=args.shard_size, label_noise=args.label_noise, sampling=args.sampling,
                             dedup_against=args.dedup_against, workers=args.workers, seed=args.seed,
                             name=args.name, dedup_radius=radius, progress=True, ray_address=args.ray_address,
                             kind=args.kind, tag_senses=args.tag_senses, target_weights=args.target_weights,
                             cap=DEFAULT_CAP if args.cap is None else args.cap,
                             max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, follow_symlinks=args.follow_symlinks,
                             engine=args.engine)
            print(json.dumps({k: m[k] for k in ("name", "num_samples", "num_images", "num_classes", "skipped",
                                                "reencoded")}, indent=1))
        elif args.cmd == "synthetic":
            from .synthetic import make_synthetic_corpus

            out = make_synthetic_corpus(args.out, num_images=args.num_images, seed=args.seed,
                                        image_size=args.image_size, num_target_classes=args.num_target_classes)
            print(json.dumps({k: out[k] for k in ("images", "tags", "counts", "target", "num_images")}, indent=1))
        elif args.cmd == "demo":
            from .demo import prepare_demo

            info = prepare_demo(args.out, num_images=args.num_images, seed=args.seed, image_size=args.image_size)
            print(json.dumps({k: v for k, v in info.items() if k != "settings"}, indent=1))
        elif args.cmd == "label":
            from .labels.label_cli import run as run_label

            return run_label(args)
        elif args.cmd == "setup-wordnet":
            from .labels import get_wordnet

            wn = get_wordnet(args.nltk_data)
            print(f"WordNet {wn.get_version()} ready for nltk in {wn.root}")
    except WordNetMissingError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    # The library's errors for bad input (wslfast.errors), missing files, and the ValueErrors of argument
    # checks: one line. Anything else is a bug and keeps its traceback.
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _yfcc_arguments(p):
    p.add_argument("--text", default="tags",
                   help="YFCC100M: what each record carries, comma-separated from tags,title,description "
                        "(default tags: the user tags, for the hashtag vocabulary; title/description: their "
                        "decoded text, for caption labels, also kept in each sample's .json as 'text')")
    p.add_argument("--subset", default=None,
                   help="YFCC100M: keep only the photos of this list, e.g. OpenAI's YFCC15M "
                        "yfcc100m_subset_data.tsv(.bz2) (line, photo id, hash a line), or 'id<TAB>hash' or one id "
                        "a line; sorted once into $WSLFAST_CACHE (40 bytes per id on disk, memory-mapped)")
    p.add_argument("--yfcc-hash", default=None,
                   help="YFCC100M: the yfcc100m_hash file (photo id<TAB>hash), to find images stored by hash "
                        "(the image bucket's layout) for files without a hash column; sorted once like --subset")


def _tag_source(args, images):
    """The TAGS files as a Source, with the YFCC options (subset / hash tables sorted on first use)."""
    from ..errors import ConfigError
    from .sources import IdIndex, TagFiles, YfccOptions, expand_inputs

    text = YfccOptions(text=tuple(t.strip() for t in args.text.split(",") if t.strip())).text
    if "tags" not in text and getattr(args, "kind", None) != "caption":
        raise ConfigError(f"--text {args.text}: labels come from the user tags here; titles and descriptions "
                          f"become labels only through caption labels (add tags to --text)")
    tables = {}
    for kind, path in (("subset", args.subset), ("hash", args.yfcc_hash)):
        if path:
            table = IdIndex(path, kind)
            if not table.ready:
                print(f"note: sorting {path} into {table.dir} (once)", file=sys.stderr, flush=True)
            tables[kind] = table.build()
    opts = YfccOptions(text=text, subset=tables.get("subset"), hashes=tables.get("hash"))
    return TagFiles(expand_inputs(args.tags), images, lookup=images is not None, yfcc=opts)


def _count(text: str) -> int:
    """A whole number >= 1, also as 64e6 or 64_000_000 (argparse type)."""
    try:
        v = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels such as 64e6, got {text!r}") from None
    if not v >= 1 or v != int(v):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(v)


def _label_arguments(p):
    p.add_argument("--tag-senses", choices=("context", "first"), default="context",
                   help="--kind tags with WordNet: each hashtag's sense from the image's other tags (context, the "
                        "default: the vocabulary counts the senses the build will label) or its most frequent "
                        "sense (first: the plain lookup)")
    p.add_argument("--kind", choices=("tags", "caption"), default=None,
                   help="what becomes labels: the hashtags (tags: the default for --tags) or the caption text "
                        "through the sense tagger (caption: the default for --webdataset; CatLIP-style labels)")
    p.add_argument("--text-field", default=None,
                   help="--webdataset: the caption is this field of each sample's .json (or of the img2dataset "
                        "parquet) instead of its .txt")
    p.add_argument("--tags-field", default=None,
                   help="--webdataset: hashtags from this field of each sample's .json (or parquet): a list of "
                        "strings, or one comma-separated string")


def _web_source(args):
    from .sources import WebDataset, expand_urls

    return WebDataset(expand_urls(args.webdataset), text_field=args.text_field, tags_field=args.tags_field)


def _vocab_from_source(args):
    """`vocab --webdataset ...` or `vocab --tags ...` (unless --tag-senses first): streaming counts over the
    records, then the top-N synsets with a minimum count (CatLIP's caption vocabulary; for hashtags, the
    senses the sense tagger gives each tag beside the record's others), or, with --tag-senses first, a
    hashtag vocabulary by each tag's most frequent sense."""
    from .build.labelling import count_source
    from .labels import HashtagVocabulary
    from .labels.vocabulary import caption_vocabulary

    if args.tags:
        source = _tag_source(args, args.images)
    else:
        source = _web_source(args)
    kind = args.kind or ("caption" if args.webdataset else "tags")
    counts, used, skipped = count_source(source, kind, progress=True, tag_senses=args.tag_senses)
    if skipped:
        print(f"records not counted: {json.dumps(skipped, sort_keys=True)}")
    if not used:
        raise UserError(f"no usable record to count in {len(source.paths)} input(s) (skipped: {skipped})")
    if kind == "caption" or args.tag_senses == "context":
        return caption_vocabulary(counts, top=args.top, min_count=args.min_count,
                                  source="wordnet-captions" if kind == "caption" else "wordnet-nouns")
    return HashtagVocabulary.from_counts(counts, min_count=args.min_count, top=args.top)


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
