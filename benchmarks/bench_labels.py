"""Labelling speed: captions/s and tag-lists/s of wslfast.data.labels.SenseTagger on one core, and the cost of
its WordNet tables (build once, then load).

Texts: CC12M-like captions (10-15 words: people, animals, objects, places, with adjectives, verbs and
prepositions; many ambiguous nouns such as crane, bass, bat, glasses, bank, plate) and Flickr-like tag lists
(4-8 tags), made here from word lists with a fixed seed (no data set is downloaded). Each is timed on
--texts texts, best of --repeats passes, in two states: `cold` (a new SenseTagger: its per-word memos empty,
the first pass over a corpus) and `warm` (the same texts again); times are wall clock (perf_counter) and the
process's CPU time, both recorded (CPU time is the fairer figure on a shared machine). ms_p20/p50/p80: per
1,000 texts, over the passes. Peak memory: the process's peak RSS after the run.

    python benchmarks/bench_labels.py                      # 50,000 texts each
    python benchmarks/bench_labels.py --texts 5000 --build  # also time a cold build of the tables

Appends records (bench 'labels') to benchmarks/results/cpu.json (or --out).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import append_results, peak_rss_bytes, record  # noqa: E402

PEOPLE = "man woman girl boy child kid baby couple family bride groom player musician chef farmer tourist " \
         "soldier student doctor dancer surfer skier driver pilot fisherman".split()
ANIMALS = "dog cat horse cow sheep bird crane duck bass bat mouse seal deer bear fox rabbit elephant lion " \
          "eagle owl turkey goat kitten puppy butterfly bee fish".split()
THINGS = "car bike plane boat train bus truck table chair sofa bed lamp glasses glass cup plate bowl knife " \
         "phone laptop camera guitar piano drum ball kite umbrella bag hat dress shirt shoes boots ring " \
         "watch book flowers tree palm cake pizza bread apple orange coffee wine tank pen pool bank club".split()
PLACES = "beach park street city forest mountain lake river garden kitchen office field bridge market " \
         "church stadium airport farm island desert harbor station restaurant village".split()
ADJS = "beautiful young old little big red white black blue green wooden happy cute small modern " \
       "vintage sunny snowy colorful empty busy quiet".split()
VERBS = "sitting standing walking running playing holding eating drinking riding looking flying swimming " \
        "lying waiting carrying wearing reading cooking".split()
PREPS = "on in at near under beside behind with by".split()
META = "photo of|stock image of|close up of|view of|illustration of||||||".split("|")
TAG_EXTRA = "nature travel summer winter sunset instagood photooftheday love cute art landscape wildlife " \
            "canon nikon bw macro portrait".split()


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        subj = rng.choice(PEOPLE + ANIMALS)
        obj = rng.choice(THINGS + ANIMALS)
        words = [rng.choice(META), "a", rng.choice(ADJS), subj, rng.choice(VERBS), rng.choice(PREPS), "the",
                 rng.choice(ADJS), rng.choice(PLACES), "with", "a", rng.choice(THINGS)]
        if rng.random() < 0.5:
            words += ["and", "a", obj]
        out.append(" ".join(w for w in words if w))
    return out


def make_tag_lists(n: int, seed: int = 1) -> list[list[str]]:
    rng = random.Random(seed)
    pool = PEOPLE + ANIMALS + THINGS + PLACES + TAG_EXTRA
    return [["#" + t for t in rng.sample(pool, rng.randint(4, 8))] for _ in range(n)]


def time_passes(fn, texts, repeats: int) -> tuple[list[float], list[float]]:
    """Per-pass (wall s, cpu s) of fn over texts."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for t in texts:
            fn(t)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--build", action="store_true", help="also time building the WordNet tables from scratch")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from wslfast.data.labels import lexicon
    from wslfast.data.labels.senses import SenseTagger
    from wslfast.data.labels.wordnet import ensure_wordnet

    device = torch.device("cpu")
    records = []
    corpus = ensure_wordnet()
    if args.build:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            lexicon._load(str(corpus), d)
            build_s = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in Path(d).iterdir())
        print(f"tables: built in {build_s:.1f} s, cache {size / 2**20:.1f} MiB")
        records.append(record("labels", {"what": "build tables"}, "wslfast", "build", None, None, device,
                              seconds=round(build_s, 2), cache_bytes=size))
        lexicon._load.cache_clear()
    t0 = time.perf_counter()
    lexicon.get_lexicon()
    load_s = time.perf_counter() - t0
    print(f"tables: loaded in {load_s:.2f} s")
    records.append(record("labels", {"what": "load tables"}, "wslfast", "load", None, None, device,
                          seconds=round(load_s, 2)))

    captions = make_captions(args.texts)
    tag_lists = make_tag_lists(args.texts)
    words = statistics.mean(len(c.split()) for c in captions)
    for kind, texts in (("caption", captions), ("tags", tag_lists)):
        tagger = SenseTagger()
        fn = tagger.caption if kind == "caption" else tagger.tags
        cold_wall, cold_cpu = time_passes(fn, texts, 1)  # memos fill as new words come
        wall, cpu = time_passes(fn, texts, args.repeats)
        for state, w, c in (("cold", cold_wall, cold_cpu), ("warm", wall, cpu)):
            per_k = sorted(x / len(texts) * 1e6 for x in w)  # ms per 1,000 texts
            rate_wall, rate_cpu = len(texts) / min(w), len(texts) / min(c)
            print(f"{kind:8s} {state}: {rate_wall:9.0f}/s wall, {rate_cpu:9.0f}/s cpu "
                  f"({len(texts)} texts{f', {words:.1f} words each' if kind == 'caption' else ''})")
            q = (per_k[0], statistics.median(per_k), per_k[-1])
            records.append(record("labels", {"kind": kind, "texts": len(texts), "state": state,
                                             "mean_words": round(words, 1) if kind == "caption" else None},
                                  "wslfast", "label", q, peak_rss_bytes(), device,
                                  texts_per_s_wall=round(rate_wall), texts_per_s_cpu=round(rate_cpu)))
    path = append_results(records, args.out, device)
    print(f"peak RSS {peak_rss_bytes() / 2**20:.0f} MiB; records appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
