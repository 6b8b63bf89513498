"""benchmarks/bench_data.py's photo case (benchmarks/data_images.py) runs end to end on a few records and
writes the records it says (impls, modes, the speedup and pHash fields); its timings are not checked here."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest


def _module(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))  # its `common`
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "data_images.py"
    spec = importlib.util.spec_from_file_location("data_images", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_photo_case_writes_its_records(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    bench = _module(monkeypatch)
    out = tmp_path / "results.json"
    args = argparse.Namespace(image_records=[3, 2], image_repeats=1, out=str(out))
    recs = bench.bench_images(args, tmp_path)
    assert json.loads(out.read_text()) == recs
    assert {(r["case"]["size"], r["impl"], r["mode"]) for r in recs} == {
        (size, impl, mode) for size in ("640x480", "1600x1200")
        for impl, mode in (("plain-decode", "decode"), ("before", "check+phash+write"), ("wslfast", "check+phash+write"),
                           ("before", "check+write"), ("wslfast", "check+write"))}
    for r in recs:
        assert r["records_per_s"] > 0 and r["bench"] == "data_check_write"
        if r["impl"] == "wslfast":
            assert r["speedup_vs_before"] > 0
        if r["impl"] == "wslfast" and r["mode"] == "check+phash+write":
            assert len(r["phash_hamming_vs_before"]) == 32 and max(r["phash_hamming_vs_before"]) <= 4
