"""The emulated kernel tests' cases on the real GPU, next to the same cases in emulation (the GPU session's
emu-compare phase, scripts/gpu_session.sh): the drivers of tests/ops/kernel_emu built twice, with nvcc against
the real kernels and with g++ against the emulated ones, every family run on both, each checking its outputs
against the same float64 references, and every compared output written and compared between the two.

    python scripts/emu_gpu_compare.py --out DIR [--arch 90a] [--families conv_fast_forward ...]

Writes DIR/gpu/ and DIR/emu/ (each output as float64), DIR/<side>_<family>.log, DIR/compare.json and
DIR/compare.txt: per family whether each side passed its checks; per output the largest |gpu - emu| next to
the largest |value|, the share of bit-equal elements and whether NaN sits in the same places. Exit status:
0 when the GPU passed every check and NaN patterns agree; 1 otherwise; 2 when it could not run (no nvcc, no
GPU, no g++).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ops"))

from kernel_emu import build as emu  # noqa: E402

FAMILIES = ["softce_forward", "softce_backward", "softce_loss", "softce_grad_rows", "softce_split_gradient",
            "conv_fast_forward", "conv_fast_dgrad", "conv_fast_wgrad", "conv_simple", "bn_finalize", "bn_elementwise"]
FOLDER = {f: ("soft_ce" if f.startswith("softce") else "conv_bn") for f in FAMILIES}


def compare_dumps(gpu: Path, emulated: Path) -> list[dict]:
    """One record per output file found on either side (relative path, sizes, differences)."""
    names = sorted({p.relative_to(gpu).as_posix() for p in gpu.rglob("*.f64")} |
                   {p.relative_to(emulated).as_posix() for p in emulated.rglob("*.f64")})
    out = []
    for name in names:
        g, e = gpu / name, emulated / name
        rec = {"output": name}
        if not (g.exists() and e.exists()):
            rec["missing_on"] = "gpu" if not g.exists() else "emu"
            out.append(rec)
            continue
        a, b = np.fromfile(g, np.float64), np.fromfile(e, np.float64)
        rec["n"] = int(b.size)
        if a.size != b.size:
            rec["size_gpu"] = int(a.size)
            out.append(rec)
            continue
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        rec["nan_same"] = bool((nan_a == nan_b).all())
        both = ~nan_a & ~nan_b & np.isfinite(a) & np.isfinite(b)
        diff = np.abs(a[both] - b[both])
        rec["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
        rec["max_abs"] = float(np.abs(b[both]).max()) if diff.size else 0.0
        rec["bit_equal"] = float((a.view(np.uint64) == b.view(np.uint64)).mean()) if a.size else 1.0
        out.append(rec)
    return out


def summary_line(r) -> str:
    lines = r.stdout.strip().splitlines()
    return lines[-1] if lines else f"exit {r.returncode}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", default=os.environ.get("WSLFAST_CUDA_ARCHS", "90a").split(";")[0])
    ap.add_argument("--families", nargs="*", default=FAMILIES, choices=FAMILIES)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    problem = emu.toolchain_problem("plain")
    if problem:
        print(f"emu-compare: {problem}", file=sys.stderr)
        return 2
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = (pool.submit(emu.build_cuda, None, args.arch), pool.submit(emu.build, "plain"))
        try:
            cuda, plain = (j.result() for j in jobs)
        except emu.BuildError as e:
            print(f"emu-compare: build failed: {e}", file=sys.stderr)
            return 2
    print(f"built in {time.perf_counter() - t0:.0f} s ({'; '.join(cuda.notes) or 'kernels compiled by nvcc'})",
          flush=True)

    def run(side, family):
        exe = (cuda if side == "gpu" else plain).binaries[FOLDER[family]]
        r = emu.run(exe, family, timeout=600, dump=args.out / side)
        (args.out / f"{side}_{family}.log").write_text(r.stdout + r.stderr)
        return side, family, r

    results = {}
    # the GPU one family at a time; the emulator on every core
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        emu_jobs = [pool.submit(run, "emu", f) for f in args.families]
        for f in args.families:
            side, fam, r = run("gpu", f)
            if r.returncode == 2 and "no CUDA device" in r.stderr:
                print(f"emu-compare: {r.stderr.strip()}", file=sys.stderr)
                return 2
            results[("gpu", fam)] = r
        for j in emu_jobs:
            side, fam, r = j.result()
            results[(side, fam)] = r
    records = compare_dumps(args.out / "gpu", args.out / "emu")
    report = {"families": {f: {side: {"rc": results[(side, f)].returncode, "summary": summary_line(results[(side, f)])}
                               for side in ("gpu", "emu")} for f in args.families},
              "outputs": records, "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "compare.json").write_text(json.dumps(report, indent=1))
    lines = [f"{'family':24} {'gpu':5} {'emu':5}  gpu summary"]
    for f in args.families:
        g, e = results[("gpu", f)], results[("emu", f)]
        lines.append(f"{f:24} {'pass' if g.returncode == 0 else 'FAIL':5} {'pass' if e.returncode == 0 else 'FAIL':5}  "
                     f"{summary_line(g)[:110]}")
    bad_nan = [r["output"] for r in records if r.get("nan_same") is False or "missing_on" in r or "size_gpu" in r]
    worst = sorted((r for r in records if r.get("max_abs")), key=lambda r: -r["max_abs_diff"] / r["max_abs"])[:10]
    lines.append(f"{len(records)} outputs compared; NaN placement or size differs in {len(bad_nan)}: {bad_nan[:5]}")
    lines.append("largest |gpu - emu| / max |value|:")
    lines += [f"  {r['max_abs_diff'] / r['max_abs']:.2e}  bit-equal {r['bit_equal']:.0%}  {r['output']}" for r in worst]
    (args.out / "compare.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    gpu_failed = any(results[("gpu", f)].returncode != 0 for f in args.families)
    return 1 if gpu_failed or bad_nan else 0


if __name__ == "__main__":
    sys.exit(main())
