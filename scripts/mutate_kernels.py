"""Mutation check of the emulated kernel tests (tests/ops/test_kernels_emulated.py): known-bad edits to the
CUDA kernels (loaders, statistics epilogue, dgrad valid bits and output phases, pixel-pair indices, backward
sums, the soft-CE dot bound, the peeled vector head and tail, the loss's reduction and norm, the finalize and
reduce_parts trees, the weight gradient's rounds, removed __syncthreads, split off-by-ones, ...), each applied
to a copy of csrc/, built through tests/ops/kernel_emu and run through the same case families the tests run
(ASan+UBSan; then the TSan subset for mutants that remove a barrier, or when nothing else caught them). Each
must be caught; prints a table and the score.

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
    "soft_ce": ["softce_forward", "softce_backward", "softce_loss", "softce_grad_rows", "softce_split_gradient"],
    "conv_bn": ["conv_fast_forward", "conv_fast_dgrad", "conv_fast_wgrad", "conv_simple", "bn_finalize",
                "bn_elementwise"],
}
TSAN_FAMILIES = {"soft_ce": ["softce_forward", "softce_backward", "softce_loss", "softce_grad_rows"],
                 "conv_bn": ASAN_FAMILIES["conv_bn"]}


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
    Mutant("S2", "soft_ce/soft_ce_cuda.cu", "for (int64_t sp = 0; sp < parts; ++sp) {\n    merge(t.st,",
           "for (int64_t sp = 0; sp < parts - 1; ++sp) {\n    merge(t.st,",
           "merge_parts (merge and finish kernels) drops the last split / vocabulary chunk"),
    Mutant("S3", "soft_ce/soft_ce_cuda.cu",
           "v < (v1 - v0) / kVec; v += blockDim.x) {\n    const uint4 raw = __ldg(zv + v);\n    const T* e",
           "v <= (v1 - v0) / kVec; v += blockDim.x) {\n    const uint4 raw = __ldg(zv + v);\n    const T* e",
           "forward: the vector loop reads one vector past its split"),
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
    Mutant("S8", "soft_ce/soft_ce_cuda.cu", "const int64_t lo = col_begin + v0 + v * kVec;",
           "const int64_t lo = col_begin + v0 + v * kVec + 1;", "backward (vector path): target ids off by one"),
    Mutant("S9", "soft_ce/soft_ce_math.h", "c1 = sp == splits - 1 ? cols : h + u1 * unit;",
           "c1 = sp == splits - 1 ? cols - 1 : h + u1 * unit;", "split_range_peeled: the last split stops one column short"),
    Mutant("S10", "soft_ce/soft_ce_math.h", "return static_cast<int64_t>((16 - (addr & 15)) & 15) / elem_bytes;",
           "return static_cast<int64_t>(16 - (addr & 15)) / elem_bytes;",
           "peel head: an aligned row still peels a whole vector as scalars (values right, one vector a row lost)"),
    Mutant("S11", "soft_ce/soft_ce_cuda.cu", "for (int64_t c = v1 + threadIdx.x; c < c1; c += blockDim.x) add_value(",
           "for (int64_t c = v1 + threadIdx.x; c + 1 < c1; c += blockDim.x) add_value(",
           "peel tail: the forward's scalar tail drops its last column"),
    Mutant("S12", "soft_ce/soft_ce_math.h", "v1 = v0 + (c1 - v0) / unit * unit;",
           "v1 = v0 + (c1 - v0 + unit - 1) / unit * unit;", "vector_span: a partial last vector read as a whole one"),
    Mutant("S13", "soft_ce/soft_ce_cuda.cu", "with_targets += offsets[r + 1] != offsets[r];", "with_targets += 1;",
           "finish: the mean divides by every row, not the rows with targets"),
    Mutant("S14", "soft_ce/soft_ce_cuda.cu", "const float g = gr.norm != nullptr ? gv / gr.norm[0] : gv;",
           "const float g = gv;", "backward: the upstream gradient of a mean not divided by norm"),
    Mutant("S15", "soft_ce/soft_ce_cuda.cu", "const float gv = gr.values[row * gr.stride];",
           "const float gv = gr.values[row];", "backward: GradRows' stride ignored"),
    Mutant("S16", "soft_ce/soft_ce_cuda.cu", "loss[0] = static_cast<float>(total / d);",
           "loss[0] = static_cast<float>(total / rows);", "finish: the reduced loss divided by the row count"),
    # ---- conv + BN ----
    Mutant("C1", "conv_bn/conv_bn_cuda_mma.cu", "gemm_b_offset(d, geo, g, n0 + slot.row, gemm_k(geo, kb + slot.col + h * kVec))",
           "gemm_b_offset(d, geo, g, n0 + slot.row, gemm_k(geo, kb + slot.col))",
           "B loader: every 4-wide piece loads the first"),
    Mutant("C2", "conv_bn/conv_bn_cuda_mma.cu", "((red[0][c] + red[1][c]) + red[2][c]) + red[3][c]",
           "(red[0][c] + red[1][c]) + red[2][c]", "statistics epilogue: warp 3's column sums dropped"),
    Mutant("C3", "conv_bn/conv_bn_cuda_mma.cu", "if (m >= geo.M) continue;", "if (m > geo.M) continue;",
           "statistics epilogue: one padding row past M counted"),
    Mutant("C4", "conv_bn/conv_bn_stats.h", "const double m2 = sq_dev_from_mf - n * c * c;",
           "const double m2 = sq_dev_from_mf + n * c * c;", "partial_from_sums: the mean correction's sign"),
    Mutant("C5", "conv_bn/conv_bn_cuda_mma_common.cuh", "    if (!((valid >> h) & 1u)) continue;\n", "",
           "dgrad loader: BN backward applied to padding pieces too (valid bits ignored)"),
    Mutant("C6", "conv_bn/conv_bn_mma_geometry.h", "g.r0 = (ph + pad) % st, g.s0 = (pw + pad) % st,",
           "g.r0 = (ph + pad + 1) % st, g.s0 = (pw + pad) % st,", "dgrad phases: a phase gathers the other rows' taps"),
    Mutant("C7", "conv_bn/conv_bn_cuda_mma.cu", "geo.M - m0);\n    __syncthreads();\n  }",
           "geo.M - m0);\n  }", "conv main loop: the __syncthreads after the tensor cores read the tile removed",
           race=True),
    Mutant("C8", "conv_bn/conv_bn_cuda_mma_wgrad.cu",
           "m_end = m_begin + m_per_split < M ? m_begin + m_per_split : M;",
           "m_end = m_begin + m_per_split - 1 < M ? m_begin + m_per_split - 1 : M;",
           "wgrad m-split: each split stops one row short"),
    Mutant("C9", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "for (int64_t sp = 0; sp < splits; ++sp) acc +=",
           "for (int64_t sp = 1; sp < splits; ++sp) acc +=", "sum_splits_kernel skips split 0"),
    Mutant("C10", "conv_bn/conv_bn_cuda.cu", "for (int half = blockDim.y / 2; half >= 1; half /= 2) {",
           "for (int half = blockDim.y / 2; half > 1; half /= 2) {",
           "reduce_parts_kernel: the tree stops one level short (lane 1's sums never added)"),
    Mutant("C11", "conv_bn/conv_bn_cuda_finalize.cu",
           "    __syncthreads();  // level `half` reads what level 2 * half (or the slices) wrote\n", "",
           "forward finalize: the __syncthreads before each tree level removed", race=True),
    Mutant("C12", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "ch[0] = wgrad_g_channel(d, g, col);",
           "ch[0] = col % (d.K / d.groups);", "wgrad B loader: BN coefficients of group 0's channels for every group"),
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
    Mutant("C17", "conv_bn/conv_bn_cuda_mma_wgrad.cu",
           "    __syncthreads();\n    mma_k_tile<BN>(As, Bs, acc, warp, lane, static_cast<int>(m_end - mb",
           "    mma_k_tile<BN>(As, Bs, acc, warp, lane, static_cast<int>(m_end - mb",
           "wgrad: the __syncthreads between storing the tiles and the tensor cores removed", race=True),
    Mutant("C18", "conv_bn/conv_bn_cuda_finalize.cu", "momentum * (var[c] * unbias)", "momentum * var[c]",
           "running variance without the unbiasing factor"),
    Mutant("C19", "conv_bn/conv_bn_mma_geometry.h", "g.wbase = (pw + pad - g.s0) / st + (pix - 1);",
           "g.wbase = (pw + pad - g.s0) / st;", "dgrad phases with pixel pairs: the window starts one column off"),
    Mutant("C20", "conv_bn/conv_bn_mma_geometry.h", "static_cast<int>(dq) * g.a", "static_cast<int>(dq)",
           "pixel pairs: the second pixel's taps shifted by one column, not by the stride"),
    Mutant("C21", "conv_bn/conv_bn_mma_geometry.h", "row1 = (r * g.U + s + d.stride) * cg + c;",
           "row1 = (r * g.U + s + 1) * cg + c;", "wgrad pixel pairs: the second pixel's rows of D at stride 1"),
    Mutant("C22", "conv_bn/conv_bn_cuda_finalize.cu", "const int other = me + half * nch;",
           "const int other = me + half;", "forward finalize tree: merges the wrong channel's lane"),
    Mutant("C23", "conv_bn/conv_bn_cuda.cu", "  for (int half = blockDim.y / 2; half >= 1; half /= 2) {\n    __syncthreads();\n",
           "  for (int half = blockDim.y / 2; half >= 1; half /= 2) {\n",
           "reduce_parts_kernel: the __syncthreads before each tree level removed", race=True),
    Mutant("C24", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "float acc = first ? 0.f : dw[e];", "float acc = 0.f;",
           "wgrad rounds: each round's sum overwrites the earlier rounds'"),
    Mutant("C25", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "(split == 0 ? 0.f : slice[off])", "(split == 1 ? 0.f : slice[off])",
           "wgrad in place: the sum restarts at split 1, not split 0"),
    Mutant("C26", "conv_bn/conv_bn_cuda_mma_wgrad.cu", "    __syncthreads();\n    const int64_t kg = d.K / d.groups;",
           "    const int64_t kg = d.K / d.groups;",
           "wgrad pixel pairs: the __syncthreads between storing D and summing its pairs removed", race=True),
    Mutant("C27", "conv_bn/conv_bn_cuda_mma.cu", "total = dq == 0 ? col : total + col;", "total = col;",
           "statistics epilogue with pixel pairs: the first pixel's column dropped"),
    Mutant("C28", "conv_bn/conv_bn_mma_plan.h", "(cout_g == 4 && (dgrad || out_w % 2 == 0))", "(cout_g == 4)",
           "forward: pixel pairs for an odd output width too (a statistics part no longer whole rows)"),
    Mutant("C29", "conv_bn/conv_bn_cuda_mma_common.cuh", "if (kk >= kvalid) break;", "if (kk + kStep > kvalid) break;",
           "mma_k_tile: the last partial k step skipped"),
    Mutant("C30", "conv_bn/conv_bn_cuda_mma.cu", "if (m0 >= geo.M) return;", "if (m0 >= geo.M || geo.Kg == 0) return;",
           "dgrad: a phase no tap reaches leaves its pixels unwritten (not zeros)"),
    Mutant("C31", "conv_bn/conv_bn_finalize.h", "var = static_cast<Coef>(v < 0.0 ? 0.0 : v);",
           "var = static_cast<Coef>(v > 0.0 ? v : 0.0);", "BN variance clamp turns NaN into 0 (the old finding)"),
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
