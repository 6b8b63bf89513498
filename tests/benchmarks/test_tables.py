"""benchmarks/tables.py: the committed docs/benchmarks.md is what the committed records give, and the
tables' figures follow the page's rules (medians, per-run ratios, best rounds, newest sessions), checked on
records small enough to work out by hand."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tables.py"


def _module():
    spec = importlib.util.spec_from_file_location("tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tables = _module()


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def rec(bench, impl, ms=None, *, case=None, mode="fwdbwd", commit="aaaaaaa", t=0, **extra):
    ms = None if ms is None else float(ms)  # as the benchmarks write them
    r = {"bench": bench, "case": case or {"V": 10}, "impl": impl, "mode": mode, "ms_p20": ms, "ms_p50": ms,
         "ms_p80": ms, "peak_mem_bytes": None, "device": "cpu", "torch": "2.14.1", "commit": commit,
         "time": f"2026-01-01T00:00:{t:02d}+00:00"}
    r.update(extra)
    return r


def rows_of(block: str, title: str) -> list[list[str]]:
    """The body rows of the table under `#### title` (cells stripped)."""
    part = block.split(f"#### {title}\n", 1)[1].split("\n#### ", 1)[0]
    lines = [ln for ln in part.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def block_for(tmp_path, records, name="cpu.json") -> str:
    (tmp_path / name).write_text(json.dumps(records))
    return tables.generate(tmp_path)


def test_the_committed_page_is_what_the_committed_records_give():
    r = run("--check")
    assert r.returncode == 0, r.stderr


def test_a_hand_edited_figure_fails_the_check(tmp_path):
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    line = next(ln for ln in page.splitlines() if ln.startswith("| ") and "x (" in ln)
    (tmp_path / "page.md").write_text(page.replace(line, line.replace("x (", "5x (", 1)))
    r = run("--check", "--page", str(tmp_path / "page.md"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "run python benchmarks/tables.py" in r.stderr


def test_a_new_record_fails_the_check_until_the_tables_are_redrawn(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    records = json.loads((ROOT / "benchmarks" / "results" / "cpu.json").read_text())
    records.append(rec("soft_ce", "wslfast", 1.0, case={"B": 256, "V": 99, "k": 1, "dtype": "float32"},
                       commit="fffffff", t=1) | {"time": "2099-01-01T00:00:00+00:00"})
    (results / "cpu.json").write_text(json.dumps(records))
    page = tmp_path / "page.md"
    page.write_text((ROOT / "docs" / "benchmarks.md").read_text())
    assert run("--check", "--results", str(results), "--page", str(page)).returncode == 1
    assert run("--results", str(results), "--page", str(page)).returncode == 0
    assert run("--check", "--results", str(results), "--page", str(page)).returncode == 0
    assert "| 1.00 | 1 | 2099-01-01 | fffffff |" in page.read_text()  # the soft-CE table: its newest session


def test_medians_and_the_median_of_per_run_ratios(tmp_path):
    # ours 1, 2, 4 ms; the peer's two impls per run: min(3, 2)=2, min(3, 8)=3, min(3, 9)=3 -> 2, 3, 3
    records = [rec("soft_ce", "wslfast", 1, t=1), rec("soft_ce", "eager_cross_entropy", 3, t=2),
               rec("soft_ce", "eager_logsoftmax", 2, t=3),
               rec("soft_ce", "wslfast", 2, t=4), rec("soft_ce", "eager_cross_entropy", 3, t=5),
               rec("soft_ce", "eager_logsoftmax", 8, t=6),
               rec("soft_ce", "wslfast", 4, t=7), rec("soft_ce", "eager_cross_entropy", 3, t=8),
               rec("soft_ce", "eager_logsoftmax", 9, t=9)]
    (row,) = rows_of(block_for(tmp_path, records), tables.SPECS["soft_ce"].title)
    # per-run ratios 2/1, 3/2, 3/4; their median 1.5, while the medians 2 and 3 would give 1.5 too: so
    # also check the listed runs, the run count, date and commit
    assert row == ["2.00", "3.00", "1.50x (2.00, 1.50, 0.75)", "3", "2026-01-01", "aaaaaaa"]


def test_the_ratio_is_the_median_of_per_run_ratios_not_the_ratio_of_medians(tmp_path):
    # ours 1, 10, 10; peer 5, 11, 100 -> per-run 5.0, 1.1, 10.0 -> median 5.0 (medians: 11 / 10 = 1.1)
    records = []
    for i, (o, p) in enumerate([(1, 5), (10, 11), (10, 100)]):
        records += [rec("conv_bn", "wslfast", o, t=2 * i), rec("conv_bn", "eager", p, t=2 * i + 1)]
    (row,) = rows_of(block_for(tmp_path, records), tables.SPECS["conv_bn"].title)
    assert row[:3] == ["10.0", "11.0", "5.00x (5.00, 1.10, 10.0)"]


def test_only_the_newest_session_counts(tmp_path):
    old = [rec("conv_bn", "wslfast", 100, commit="0ld0000", t=1), rec("conv_bn", "eager", 1, commit="0ld0000", t=2),
           rec("conv_bn", "eager", 1, case={"V": 3}, commit="0ld0000", t=3)]  # a case the new session dropped
    new = [rec("conv_bn", "wslfast", 2, commit="new0000", t=4), rec("conv_bn", "eager", 3, commit="new0000", t=5)]
    rows = rows_of(block_for(tmp_path, old + new), tables.SPECS["conv_bn"].title)
    assert rows == [["2.00", "3.00", "1.50x", "1", "2026-01-01", "new0000"]]


def test_best_rounds_for_the_training_step_and_rates_compare_ours_over_theirs(tmp_path):
    case = {"arch": "resnext_tiny", "batch": 16}
    records = [rec("train_step", "wslfast", case=case, mode="step", t=1, img_per_s=100.0),
               rec("train_step", "stock", case=case, mode="step", t=2, img_per_s=80.0),
               rec("train_step", "wslfast", case=case, mode="step", t=3, img_per_s=90.0),
               rec("train_step", "stock", case=case, mode="step", t=4, img_per_s=120.0)]
    (row,) = rows_of(block_for(tmp_path, records), tables.SPECS["train_step"].title)
    assert row[:3] == ["100", "120", "0.83x (1.25, 0.75)"]  # best 100 / best 120


def test_a_per_impl_table_against_its_baseline_takes_each_impls_newest_record(tmp_path):
    def shards(impl, n, workers, rate, t, mem=2**20):
        return rec("data_shards", impl, case={"records": n, "workers": workers}, mode="build", t=t,
                   records_per_s=rate) | {"peak_mem_bytes": mem}
    records = [shards("wslfast-local", 100, 1, 50.0, 1), shards("before", 100, 2, 100.0, 2),
               shards("wslfast-local", 100, 1, 300.0, 3, mem=3 * 2**20),  # a rerun: the newest counts
               shards("wslfast-local", 10_000, 1, 30.0, 4)]
    rows = rows_of(block_for(tmp_path, records), tables.SPECS["data_shards"].title)
    assert rows == [["100", "wslfast-local", "1", "300", "3.00", "3.00x", "1", "2026-01-01", "aaaaaaa"],
                    ["100", "before", "2", "100", "1.00", "", "1", "2026-01-01", "aaaaaaa"],
                    ["10,000", "wslfast-local", "1", "30.0", "1.00", "-", "1", "2026-01-01", "aaaaaaa"]]


def test_a_bench_without_a_spec_gets_a_table(tmp_path):
    records = [rec("new_bench", "wslfast", case={"n": 2}, mode="step", t=1, widgets_per_s=7.5),
               rec("new_bench", "other", case={"n": 2}, mode="step", t=2, widgets_per_s=5.0),
               {"bench": "counts", "case": {"n": 1}, "impl": "after", "time": "2026-01-02T00:00:00", "launches": 4}]
    block = block_for(tmp_path, records, "h200.json")
    assert "### h200.json" in block
    assert rows_of(block, "new_bench") == [["wslfast", "7.50", "1", "2026-01-01", "aaaaaaa"],
                                           ["other", "5.00", "1", "2026-01-01", "aaaaaaa"]]
    assert rows_of(block, "counts") == [["after", "4", "1", "2026-01-02", "-"]]
    assert "widgets/s" in block and "launches" in block


@pytest.mark.parametrize("content, message", [
    ("not json", "not readable as JSON"),
    ('{"bench": "x"}', "expected a JSON list of records"),
    ('[1]', "record 0 is not an object"),
    ('[{"bench": "x", "case": {}, "impl": "y"}]', "record 0 has no time"),
])
def test_a_bad_results_file_is_one_line(tmp_path, content, message):
    (tmp_path / "cpu.json").write_text(content)
    r = run("--print", "--results", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.startswith("error: cpu.json: ") and message in r.stderr and r.stderr.count("\n") == 1


def test_a_page_without_markers_is_one_line(tmp_path):
    (tmp_path / "page.md").write_text("# no tables here\n")
    r = run("--check", "--page", str(tmp_path / "page.md"))
    assert r.returncode == 2 and "markers are missing" in r.stderr and r.stderr.count("\n") == 1
