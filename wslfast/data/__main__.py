"""python -m wslfast.data {vocab,shards,synthetic,demo,setup-wordnet} ... (see --help of each)."""
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
    v.add_argument("--wordnet-nouns", action="store_true", help="canonicalize to WordNet nouns (the default)")
    v.add_argument("--images", default=".", help="images folder (for YFCC --tags lookups)")
    v.add_argument("--top", type=int, default=None, help="keep the N most frequent synsets")
    v.add_argument("--min-count", type=int, default=1)
    v.add_argument("--out", required=True)

    s = sub.add_parser("shards", help="write webdataset shards")
    s.add_argument("--images", required=True)
    s.add_argument("--tags", required=True, nargs="+",
                   help="TAGS files or globs: JSONL or YFCC100M metadata (detected per file), plain or "
                        ".gz/.bz2/.xz/.zst (e.g. the split yfcc100m_dataset-*.bz2 as released)")
    s.add_argument("--vocab", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument("--label-noise", type=float, default=0.0)
    s.add_argument("--sampling", choices=("natural", "sqrt", "uniform"), default="natural")
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

    w = sub.add_parser("setup-wordnet", help="copy the Debian WordNet files where nltk reads them")
    w.add_argument("--nltk-data", default=None, help="default: $WSLFAST_NLTK_DATA or ~/.cache/wslfast/nltk_data")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "vocab":
            from .format import read_counts
            from .labels import HashtagVocabulary
            from .sources import count_tags

            if args.imagenet1k:
                vocab = HashtagVocabulary.imagenet1k()
            else:
                counts = read_counts(args.counts) if args.counts else count_tags(args.tags, args.images)
                vocab = HashtagVocabulary.from_counts(counts, min_count=args.min_count, top=args.top)
            vocab.save(args.out)
            print(f"{args.out}: {len(vocab)} labels, {vocab.num_hashtags} hashtags")
        elif args.cmd == "shards":
            from .build import write_shards
            from .build.dedup import DEFAULT_RADIUS

            radius = DEFAULT_RADIUS if args.dedup_radius is None else args.dedup_radius
            m = write_shards(args.images, args.tags, args.vocab, args.out, shard_size=args.shard_size,
                             label_noise=args.label_noise, sampling=args.sampling,
                             dedup_against=args.dedup_against, workers=args.workers, seed=args.seed,
                             name=args.name, dedup_radius=radius, progress=True, ray_address=args.ray_address,
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


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
