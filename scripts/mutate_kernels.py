"""Mutation check of the emulated kernel tests (tests/ops/test_kernels_emulated.py): known-bad edits to the
CUDA kernels (loaders, statistics epilogue, dgrad valid bits, backward sums, the soft-CE dot bound, removed
__syncthreads, split off-by-ones, ...), each applied to a copy of csrc/, built through tests/ops/kernel_emu
and run through the same case families the tests run (ASan+UBSan; then the TSan subset for mutants that
remove a barrier, or when nothing else caught them). Each must be caught; prints a table and the score.

    python scripts/mutate_kernels.py               # every mutant (~1 min each on 2 cores; run a few at a time)
    python scripts/mutate_kernels.py --list        # what each one changes
    python scripts/mutate_kernels.py S1 C7 --json out.json
    python scripts/mutate_kernels.py --check       # which mutants no longer apply to csrc/ (after kernel changes)

Objects are cached in build/emu-mutants/ (only the file a mutant touches is recompiled). A mutant whose
text is no longer in csrc/ is reported as stale (the kernel changed: update or drop it), never as caught.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ops"))

from kernel_emu import build as emu  # noqa: E402

ASAN_FAMILIES = {
    "soft_ce": ["softce_forward", "softce_backward", "softce_split_gradient"],
    "conv_bn": ["conv_fast_forward", "conv_fast_dgrad", "conv_fast_wgrad", "conv_simple", "bn_finalize",
                "bn_elementwise"],
}
TSAN_FAMILIES = {"soft_ce": ["softce_forward", "softce_backward"], "conv_bn": ASAN_FAMILIES["conv_bn"]}


@dataclass
class Mutant:
    id: str
    file: str       # under csrc/
    old: str        # must occur exactly once
    new: str
    what: str
    race: bool = False  # removes a barrier: run the TSan subset too


MUTANTS = [
    # ---- soft-CE ----
    Mutant("S1", "soft_ce/soft_ce_cuda.cu", "if (k >= c0 && k < c1) dot +=", "if (k >= c0 && k <= c1) dot +=",
           "forward: target dot bound includes the split's end column"),
    Mutant("S2", "soft_ce/soft_ce_cuda.cu", "for (int64_t sp = 0; sp < splits; ++sp) {\n    merge(st,",
           "for (int64_t sp = 0; sp < splits - 1; ++sp) {\n    merge(st,", "merge_kernel drops the last split"),
    Mutant("S3", "soft_ce/soft_ce_cuda.cu",
           "v < v1; v += blockDim.x) {\n      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(z) + v);\n"
           "      const T* e",
           "v <= v1; v += blockDim.x) {\n      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(z) + v);\n"
           "      const T* e", "forward: the vector loop reads one vector past its split"),
    Mutant("S4", "soft_ce/soft_ce_cuda.cu", "  __syncthreads();\n  if (lane == 0) scratch[warp] = v;",
           "  if (lane == 0) scratch[warp] = v;", "block_sum: the __syncthreads before reusing scratch removed",
           race=True),
    Mutant("S5", "soft_ce/soft_ce_math.h", "return (a > b || a != a) ? a : b;", "return (a > b) ? a : b;",
           "nan_max drops NaN in its first operand (the fmaxf bug)"),
    Mutant("S6", "soft_ce/soft_ce_cuda.cu", "if (p < pe && tg.indices[p] == id) y -= g * tg.weights[p];",
           "if (p < pe && tg.indices[p] == id) y -= tg.weights[p];",
           "backward (element path): target term without the row's gradient factor"),
    Mutant("S7", "soft_ce/soft_ce_cuda.cu", "return __syncthreads_and(ok) != 0;", "__syncthreads();\n  return ok;",
           "broken-CSR check: each thread keeps its own verdict (no block-wide AND)"),
    Mutant("S8", "soft_ce/soft_ce_cuda.cu", "const int64_t lo = col_begin + v * kVec;",
           "const int64_t lo = col_begin + v * kVec + 1;", "backward (vector path): target ids off by one"),
    Mutant("S9", "soft_ce/soft_ce_math.h", "c1 = sp == splits - 1 ? cols : u1 * unit;",
           "c1 = sp == splits - 1 ? cols - 1 : u1 * unit;", "split_range: the last split stops one column short"),
    # ---- conv + BN ----
    Mutant("C1", "conv_bn/conv_bn_cuda_mma.cu", "gemm_b_offset(d, g, n0 + slot.row, kb + slot.col + h * kVec)",
           "gemm_b_offset(d, g, n0 + slot.row, kb + slot.col)", "B loader: every 4-wide piece loads the first"),
    Mutant("C2", "conv_bn/conv_bn_cuda_mma.cu", "((red[0][tid] + red[1][tid]) + red[2][tid]) + red[3][tid]",
           "(red[0][tid] + red[1][tid]) + red[2][tid]", "statistics epilogue: warp 3's column sums dropped"),
    Mutant("C3", "conv_bn/conv_bn_cuda_mma.cu", "if (m >= M) continue;", "if (m > M) continue;",
           "statistics epilogue: one padding row past M counted"),
    Mutant("C4", "conv_bn/conv_bn_stats.h", "const double m2 = sq_dev_from_mf - n * c * c;",
           "const double m2 = sq_dev_from_mf + n * c * c;", "partial_from_sums: the mean correction's sign"),
    Mutant("C5", "conv_bn/conv_bn_cuda_mma_common.cuh", "    if (!((valid >> h) & 1u)) continue;\n", "",
           "dgrad loader: BN backward applied to padding pieces too (valid bits ignored)"),
    Mutant("C6", "conv_bn/conv_bn_mma_index.h", "th % stride != 0 || tw % stride != 0", "th % stride != 0",
           "dgrad gather: columns not on the stride grid taken"),
    Mutant("C7", "conv_bn/conv_bn_cuda_mma.cu",
           "    mma_k_tile<BN>(As, Bs, acc, warp, lane);\n    __syncthreads();\n  }\n\n  // Epilogue",
           "    mma_k_tile<BN>(As, Bs, acc, warp, lane);\n  }\n\n  // Epilogue",
           "conv main loop: the __syncthreads after the tensor cores read the tile removed", race=True),
    Mutant("C8", "conv_bn/conv_bn_cuda_mma_wgrad.cu",
           "m_end = m_begin + m_per_split < M ? m_begin + m_per_split : M;",
           "m_end = m_begin + m_per_split - 1 < M ? m_begin + m_per_split - 1 : M;",
           "wgrad m-split: each split stops one row short"),
    Mutant("C9", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "for (int64_t sp = 0; sp < splits; ++sp) acc +=",
           "for (int64_t sp = 1; sp < splits; ++sp) acc +=", "sum_splits_kernel skips split 0"),
    Mutant("C10", "conv_bn/conv_bn_cuda.cu",
           "for (int j = 1; j < kSlices; ++j) a0 += s0[j][threadIdx.x], a1 += s1[j][threadIdx.x];",
           "for (int j = 1; j < kSlices - 1; ++j) a0 += s0[j][threadIdx.x], a1 += s1[j][threadIdx.x];",
           "reduce_parts_kernel (backward sums) drops the last slice"),
    Mutant("C11", "conv_bn/conv_bn_cuda_finalize.cu", "  s2[threadIdx.y][threadIdx.x] = st.m2;\n  __syncthreads();",
           "  s2[threadIdx.y][threadIdx.x] = st.m2;", "forward finalize: the __syncthreads before merging slices",
           race=True),
    Mutant("C12", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "ch[0] = wgrad_g_channel(d, g, kk);", "ch[0] = kk;",
           "wgrad B loader: BN coefficients of group 0's channels for every group"),
    Mutant("C13", "conv_bn/conv_bn_cuda.cu",
           "bn_relu_grad(to_float(d_in.v[j]), to_float(s_in.v[j]), c0 + j,",
           "bn_relu_grad(to_float(d_in.v[j]), to_float(s_in.v[j]), c0,",
           "backward apply (vector path): one channel's coefficients for the whole vector"),
    Mutant("C14", "conv_bn/conv_bn_cuda.cu", "if (qw < 0 || qw % s.stride != 0 || qw / s.stride >= s.Q) continue;",
           "if (qw < 0 || qw / s.stride >= s.Q) continue;", "simple dgrad: columns off the stride grid taken"),
    Mutant("C15", "conv_bn/conv_bn_cuda.cu", "for (int j = 1; j < blockDim.y; ++j) chan_merge(",
           "for (int j = 1; j < blockDim.y - 1; ++j) chan_merge(", "simple statistics: the last row lane dropped"),
    Mutant("C16", "conv_bn/conv_bn_stats.h", "for (int64_t p = first; p < nparts; p += stride) {\n    const MeanM2",
           "for (int64_t p = first; p + 1 < nparts; p += stride) {\n    const MeanM2",
           "merge_parts: the last statistics part never merged"),
    Mutant("C17", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "    __syncthreads();\n    mma_k_tile<BN>(As, Bs, acc, warp, lane);",
           "    mma_k_tile<BN>(As, Bs, acc, warp, lane);",
           "wgrad: the __syncthreads between storing the tiles and the tensor cores removed", race=True),
    Mutant("C18", "conv_bn/conv_bn_cuda_finalize.cu", "momentum * (var[c] * unbias)", "momentum * var[c]",
           "running variance without the unbiasing factor"),
]


def apply(m: Mutant, csrc: Path) -> None:
    path = csrc / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise LookupError(f"{m.id}: the text to mutate occurs {n} times in csrc/{m.file}")
    path.write_text(text.replace(m.old, m.new))


def first_failure(r) -> str:
    for line in (r.stderr + r.stdout).splitlines():
        if any(w in line for w in ("FAIL", "EMU ERROR", "EMU:", "ERROR: AddressSanitizer", "runtime error",
                                   "SUMMARY: ThreadSanitizer", "WARNING: ThreadSanitizer")):
            return line.strip()[:150]
    return f"exit {r.returncode}"


def run_mutant(m: Mutant) -> dict:
    t0 = time.perf_counter()
    folder = m.file.split("/")[0]
    out = {"id": m.id, "file": m.file, "what": m.what, "caught_by": [], "detail": ""}
    with tempfile.TemporaryDirectory(prefix="wslfast-mutant-") as tmp:
        csrc = Path(tmp) / "csrc"
        shutil.copytree(ROOT / "csrc", csrc)
        try:
            apply(m, csrc)
        except LookupError as e:
            out.update(result="stale", detail=str(e))
            return out
        # ASan families until one fails; then the TSan subset if nothing failed yet, or always for a removed
        # barrier (to show that the race detector sees it, whatever the values did)
        for variant, families, quick in (("asan", ASAN_FAMILIES[folder], False),
                                         ("tsan", TSAN_FAMILIES[folder], True)):
            if variant == "tsan" and out["caught_by"] and not m.race:
                break
            try:
                exe = emu.build(variant, csrc).binaries[folder]
            except emu.BuildError as e:
                out.update(result="invalid", detail=f"does not build: {str(e).strip().splitlines()[-1][:150]}")
                return out
            for family in families:
                try:
                    r = emu.run(exe, family, quick=quick, timeout=900)
                    caught, detail = r.returncode != 0, first_failure(r)
                except Exception as e:  # a hang past the timeout: the tests fail on it too
                    caught, detail = True, f"timeout: {e}"
                if caught:
                    out["caught_by"].append(f"{family} [{variant}]")
                    out["detail"] += ("\n       " if out["detail"] else "") + detail
                    break
    out["result"] = "caught" if out["caught_by"] else "SURVIVED"
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--check", action="store_true", help="only say which mutants still apply to csrc/")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    if args.check:
        stale = []
        for m in chosen:
            n = (ROOT / "csrc" / m.file).read_text().count(m.old)
            if n != 1:
                stale.append(m.id)
                print(f"{m.id:4} stale: its text occurs {n} times in csrc/{m.file} ({m.what})")
        print(f"{len(chosen) - len(stale)} of {len(chosen)} mutants apply")
        return 1 if stale else 0
    if args.list or not chosen:
        for m in MUTANTS:
            print(f"{m.id:4} {m.file:36} {m.what}")
        return 0 if chosen or args.list else 2
    os.environ.setdefault("WSLFAST_EMU_CACHE", str(ROOT / "build" / "emu-mutants"))  # apart from the tests'
    os.environ.setdefault("EMU_LAUNCH_TIMEOUT", "120")  # an endless loop is caught sooner
    problem = emu.toolchain_problem("asan") or emu.toolchain_problem("tsan")
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    results = []
    for m in chosen:
        res = run_mutant(m)
        results.append(res)
        print(f"{res['id']:4} {res['result']:8} {', '.join(res['caught_by']) or '-':48} {res.get('seconds', 0):6.1f} s  "
              f"{res['what']}\n       {res['detail']}", flush=True)
    valid = [r for r in results if r["result"] in ("caught", "SURVIVED")]
    caught = sum(r["result"] == "caught" for r in valid)
    print(f"score: {caught}/{len(valid)} caught" + (f" ({len(results) - len(valid)} stale or invalid)"
                                                    if len(valid) < len(results) else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if caught == len(valid) else 1


if __name__ == "__main__":
    sys.exit(main())
