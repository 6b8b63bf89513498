"""A model of the work the fused conv + BN CUDA kernels do per layer, before and after issue 20's changes.

    python benchmarks/model_conv_bn.py                  # ResNeXt-101 32x4d/8d/48d, RegNetY 16/32/128GF, N=256,
                                                        # the CUDA tests' shapes; bf16 and float32 (TF32)
    python benchmarks/model_conv_bn.py --dtypes float32 # TF32 tiles only (k steps of 8, at most 32 columns)
    python benchmarks/model_conv_bn.py --batch 32 --out FILE.json

No GPU and no timing: the figures are counts, computed from the launch plans. "after" is the code in this
checkout: benchmarks/model_conv_bn_plan.cpp compiles csrc/conv_bn/conv_bn_mma_plan.h (the functions the
launchers take their tiles, grids, splits and merge blocks from) for the host, once per source version.
"before" is the plan of commit cf8d547 (main before issue 20), mirrored below in `before_*` (it had no
plan header): 16/32/64-column tiles, whole 32-wide k tiles, 128-row tiles always multiplied, the dense
data gradient over all R*S taps, grid (m-tile, n-tile, group) with the m-tile fastest, 16-slice serial
merges, one wgrad workspace of every split.

Per layer (unique shapes of the layers each model runs through the fused op, with their count):
  *_useful_mma   useful multiply-adds (an input element times a weight; taps on padding do not count) /
                 multiply-adds issued to the tensor cores (fwd, dgrad, wgrad);
  *_bytes        device-memory bytes, an estimate: every tensor once, times the sector waste of a pass that
                 reads or writes only part of each 32-byte sector while the passes that share the sector run
                 far apart (blocks of one group / column tile run before the next; the tensor larger than half
                 of a 50 MiB L2), plus the statistics partials and the weight gradient's workspace traffic;
  finalize_depth, reduce_depth   serial merges on the longest chain of the forward finalize and the
                 backward's reduce_parts; *_blocks their blocks;
  wgrad_workspace_bytes, wgrad_launches, launches   (launches: conv forward, finalize, backward sums and
                 reduce, data gradient, weight gradient and its split sums; the elementwise passes and the
                 weight transpose, unchanged, are not counted).
Records (flat, like the other results files: bench, case, impl before|after, metrics, commit, time) replace
benchmarks/results/model_conv_bn.json (the model is a function of the code: a rerun gives the same figures).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLAN_SOURCE = HERE / "model_conv_bn_plan.cpp"
PLAN_HEADERS = [ROOT / "csrc" / "conv_bn" / n for n in
                ("conv_bn_mma_plan.h", "conv_bn_mma_geometry.h", "conv_bn_mma_index.h", "conv_bn_cuda.h")]
BENCH = "model_conv_bn"
BEFORE_COMMIT = "cf8d547"
L2_BYTES = 50 << 20
SECTOR = 32
TILE_M, TILE_K = 128, 32
MODELS = ("resnext101_32x4d", "resnext101_32x8d", "resnext101_32x48d", "regnet_y_16gf", "regnet_y_32gf",
          "regnet_y_128gf")
# The CUDA tests' shapes (tests/ops/test_conv_bn_cuda.py): (N, C, H, W, groups, stride) 3x3 and 1x1 (N, C,
# H, W, K, stride), padding kernel // 2.
TEST_3X3 = [(4, 128, 56, 56, 32, 1), (4, 256, 28, 28, 32, 1), (4, 512, 14, 14, 32, 1), (4, 1024, 7, 7, 32, 1),
            (2, 256, 56, 56, 32, 2), (2, 2048, 7, 7, 32, 1), (3, 256, 15, 13, 32, 2)]
TEST_1X1 = [(4, 256, 28, 28, 512, 1), (4, 512, 28, 28, 1024, 2), (3, 64, 9, 11, 256, 1)]


# ---- the plans of this checkout, through csrc/conv_bn/conv_bn_mma_plan.h ----

def plan_library() -> ctypes.CDLL:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise SystemExit("model_conv_bn: needs a C++ compiler (g++) to read the kernels' launch plans")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in [PLAN_SOURCE, *PLAN_HEADERS])).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"wslfast-model-conv-bn-{digest}.so"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.so")
        r = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", str(PLAN_SOURCE), "-o", str(tmp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("model_conv_bn: compiling the plan library failed:\n" + r.stderr[-3000:])
        os.replace(tmp, out)
    lib = ctypes.CDLL(str(out))
    P, I, I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    for name, res, args in [("plan_gemm", None, [P, I, I, P]), ("plan_gemm_phase", None, [P, I, I, I64, P]),
                            ("plan_wgrad", None, [P, I64, P]), ("plan_wgrad_splits", None, [I64, I64, P]),
                            ("plan_merge", None, [I64, I64, P]), ("plan_backward_parts", I64, [I64]),
                            ("plan_tile_rows", I64, []), ("plan_wgrad_limit", I64, [])]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def _call(fn, ints, n_out, *scalars):
    arr = (ctypes.c_int64 * max(1, len(ints)))(*ints)
    out = (ctypes.c_int64 * n_out)()
    if ints:
        fn(arr, *scalars, out)
    else:
        fn(*scalars, out)
    return list(out)


class Layer:
    """One conv of the fused op: input N x C x H x W, K outputs, R x S taps, stride, pad, groups."""

    def __init__(self, N, C, H, W, K, R, S, stride, pad, groups):
        self.N, self.C, self.H, self.W, self.K, self.R, self.S = N, C, H, W, K, R, S
        self.stride, self.pad, self.groups = stride, pad, groups
        self.P = (H + 2 * pad - R) // stride + 1
        self.Q = (W + 2 * pad - S) // stride + 1
        self.cg, self.kg = C // groups, K // groups
        self.M = N * self.P * self.Q
        # multiply-adds of the conv with an input element (and of each gradient): taps on padding excluded
        rows = sum(1 for p in range(self.P) for r in range(R) if 0 <= p * stride - pad + r < H)
        cols = sum(1 for q in range(self.Q) for s in range(S) if 0 <= q * stride - pad + s < W)
        self.useful = N * rows * cols * K * self.cg

    def fast(self):
        return self.cg % 4 == 0 and self.kg % 4 == 0

    def fwd_dims(self):
        return [self.N, self.H, self.W, self.C, self.P, self.Q, self.K, self.R, self.S, self.stride, self.pad,
                self.groups]

    def dgrad_dims(self):
        return [self.N, self.P, self.Q, self.K, self.H, self.W, self.C, self.R, self.S, self.stride, self.pad,
                self.groups]

    def wgrad_dims(self):
        return [self.N, self.H, self.W, self.C, self.K, self.R, self.S, self.P, self.Q, self.stride, self.pad,
                self.groups]

    def case(self):
        return dict(N=self.N, C=self.C, H=self.H, W=self.W, K=self.K, R=self.R, S=self.S, stride=self.stride,
                    pad=self.pad, groups=self.groups)


def ceil_to(v, m):
    return -(-v // m) * m


def sector_waste(channels_per_pass, elem, tensor_bytes, passes_apart):
    """How many times a tensor's sectors cross the memory bus when each pass touches `channels_per_pass`
    contiguous channels of every pixel and the passes that share a sector run far apart."""
    if not passes_apart or tensor_bytes <= L2_BYTES // 2:
        return 1.0
    return max(1.0, SECTOR / (channels_per_pass * elem))


def tensor_bytes(n, c, h, w, elem):
    return n * c * h * w * elem


# ---- after: this checkout's plans ----

def after_metrics(lib, L: Layer, f32: bool, elem: int) -> dict:
    kstep = 8 if f32 else 16
    x_b, z_b = tensor_bytes(L.N, L.C, L.H, L.W, elem), tensor_bytes(L.N, L.K, L.P, L.Q, elem)
    w_b = L.K * L.R * L.S * L.cg * elem
    m = {}
    # forward
    bn, _vec, pix, _gx, ntiles, mtiles, _ph = _call(lib.plan_gemm, L.fwd_dims(), 7, 0, int(f32))
    Mr, Kg = _call(lib.plan_gemm_phase, L.fwd_dims(), 2, 0, pix, 0)
    issued = L.groups * ntiles * ceil_to(Mr, 16) * ceil_to(Kg, kstep) * bn
    nparts = mtiles
    m["fwd_tile"] = f"{bn}x{pix}px"
    m["fwd_useful_mma"] = L.useful / issued
    m["fwd_bytes"] = x_b + z_b + w_b + 2 * nparts * L.K * 8
    # finalize
    ch, lanes, depth = _call(lib.plan_merge, [], 3, L.K, nparts)
    m["finalize_depth"], m["finalize_blocks"] = depth, -(-L.K // ch)
    m["finalize_bytes"] = 2 * nparts * L.K * 8
    # backward sums -> reduce_parts
    bparts = lib.plan_backward_parts(L.M)
    ch, lanes, depth = _call(lib.plan_merge, [], 3, L.K, bparts)
    m["reduce_depth"], m["reduce_blocks"] = depth, -(-L.K // ch)
    # data gradient: one GEMM per phase, only the taps that reach it
    bn, _vec, pix, _gx, ntiles, mtiles, phases = _call(lib.plan_gemm, L.dgrad_dims(), 7, 1, int(f32))
    issued = 0
    for ph in range(phases):
        Mr, Kg = _call(lib.plan_gemm_phase, L.dgrad_dims(), 2, 1, pix, ph)
        issued += L.groups * ntiles * ceil_to(Mr, 16) * ceil_to(Kg, kstep) * bn
    m["dgrad_tile"] = f"{bn}x{pix}px/{phases}ph"
    m["dgrad_useful_mma"] = L.useful / issued
    m["dgrad_bytes"] = 2 * z_b + x_b + w_b
    # weight gradient
    bn, _vec, pix, J, Mw, splits, per, per_round, rounds, ws, in_place = _call(lib.plan_wgrad, L.wgrad_dims(), 11, 0)
    ntiles = -(-(L.kg * pix) // bn)
    lens = [min(per, Mw - s * per) for s in range(splits)]
    issued = L.groups * ntiles * ceil_to(J, 16) * sum(ceil_to(n, kstep) for n in lens) * bn
    dw_b = L.K * L.R * L.S * L.cg * 4
    if splits == 1:
        ws_traffic, launches = dw_b, 1
    elif in_place:
        ws_traffic, launches = (2 * splits - 1) * dw_b, splits
    else:
        ws_traffic, launches = 2 * splits * dw_b + (2 * rounds - 1) * dw_b, 2 * rounds
    m["wgrad_tile"] = f"{bn}x{pix}px"
    m["wgrad_useful_mma"] = L.useful / issued
    m["wgrad_bytes"] = x_b + 2 * z_b + ws_traffic
    m["wgrad_workspace_bytes"] = ws * 4
    m["wgrad_splits"], m["wgrad_launches"] = splits, launches
    m["launches"] = 1 + 1 + 2 + 1 + launches
    return m


# ---- before: commit cf8d547's plans, mirrored ----

def before_bn(cols, kmax):
    return 16 if cols <= 16 else 32 if (cols <= 32 or kmax == 32) else 64


def before_metrics(lib, L: Layer, f32: bool, elem: int) -> dict:
    kstep_pad = TILE_K  # every k tile multiplied whole
    x_b, z_b = tensor_bytes(L.N, L.C, L.H, L.W, elem), tensor_bytes(L.N, L.K, L.P, L.Q, elem)
    w_b = L.K * L.R * L.S * L.cg * elem
    m = {}
    # forward: grid (m-tiles, n-tiles, groups), m fastest
    bn = before_bn(L.kg, 32 if f32 else 64)
    ntiles, mtiles = -(-L.kg // bn), -(-L.M // TILE_M)
    issued = L.groups * ntiles * mtiles * TILE_M * ceil_to(L.R * L.S * L.cg, kstep_pad) * bn
    m["fwd_tile"] = f"{bn}x1px"
    m["fwd_useful_mma"] = L.useful / issued
    amp_x = sector_waste(L.cg, elem, x_b, L.groups > 1) * (ntiles if x_b > L2_BYTES // 2 else 1)
    amp_z = sector_waste(L.kg, elem, z_b, L.groups > 1)
    m["fwd_bytes"] = x_b * amp_x + z_b * amp_z + w_b + 2 * mtiles * L.K * 8
    # finalize: blocks of 32 channels x 16 slices, slices merged in order by one thread
    m["finalize_depth"] = -(-mtiles // 16) + 15
    m["finalize_blocks"] = -(-L.K // 32)
    m["finalize_bytes"] = 2 * mtiles * L.K * 8
    bparts = lib.plan_backward_parts(L.M)  # unchanged
    m["reduce_depth"], m["reduce_blocks"] = -(-bparts // 16) + 15, -(-L.K // 32)
    # data gradient: the dense GEMM over all R*S taps of every input pixel
    bn = before_bn(L.cg, 32 if f32 else 64)
    ntiles, mtiles = -(-L.cg // bn), -(-(L.N * L.H * L.W) // TILE_M)
    issued = L.groups * ntiles * mtiles * TILE_M * ceil_to(L.R * L.S * L.kg, kstep_pad) * bn
    m["dgrad_tile"] = f"{bn}x1px/dense"
    m["dgrad_useful_mma"] = L.useful / issued
    amp_in = sector_waste(L.kg, elem, z_b, L.groups > 1) * (ntiles if z_b > L2_BYTES // 2 else 1)
    amp_out = sector_waste(L.cg, elem, x_b, L.groups > 1)
    m["dgrad_bytes"] = 2 * z_b * amp_in + x_b * amp_out + w_b
    # weight gradient: all splits' partials in one workspace, summed by a second kernel
    bn = before_bn(L.kg, 64)
    splits, per = _call(lib.plan_wgrad_splits, [], 2, L.M, L.groups)
    J = L.R * L.S * L.cg
    lens = [min(per, L.M - s * per) for s in range(splits)]
    issued = L.groups * -(-L.kg // bn) * ceil_to(J, TILE_M) * sum(ceil_to(n, kstep_pad) for n in lens) * bn
    dw_b = L.K * J * 4
    m["wgrad_tile"] = f"{bn}x1px"
    m["wgrad_useful_mma"] = L.useful / issued
    amp_x = sector_waste(L.cg, elem, x_b, L.groups > 1)
    amp_g = sector_waste(L.kg, elem, z_b, L.groups > 1)
    m["wgrad_bytes"] = x_b * amp_x + 2 * z_b * amp_g + (2 * splits * dw_b + dw_b if splits > 1 else dw_b)
    m["wgrad_workspace_bytes"] = splits * dw_b if splits > 1 else 0
    m["wgrad_splits"], m["wgrad_launches"] = splits, 2 if splits > 1 else 1
    m["launches"] = 1 + 1 + 2 + 1 + m["wgrad_launches"]
    return m


# ---- the layers each model runs through the fused op ----

def model_layers(name: str, batch: int, size: int = 224):
    """[(Layer, count)] of the convs `name` passes to the fused op, found by running it on the meta device
    with the fused call replaced by a recorder."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from wslfast.models import create_model
    from wslfast.models import regnet as regnet_mod
    from wslfast.models import resnext as resnext_mod

    seen = {}

    def record(conv, bn, x, relu=True, residual=None):
        L = Layer(x.shape[0], x.shape[1], x.shape[2], x.shape[3], conv.out_channels, conv.kernel_size[0],
                  conv.kernel_size[1], conv.stride[0], conv.padding[0], conv.groups)
        key = tuple(L.case().values())
        seen[key] = (L, seen.get(key, (L, 0))[1] + 1)
        return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, 1, conv.groups)

    saved = resnext_mod.fused_conv_bn, regnet_mod.fused_conv_bn
    resnext_mod.fused_conv_bn = regnet_mod.fused_conv_bn = record
    try:
        with torch.device("meta"):
            model = create_model(name, fused=True)
            model(torch.empty(batch, 3, size, size))
    finally:
        resnext_mod.fused_conv_bn, regnet_mod.fused_conv_bn = saved
    return list(seen.values())


def test_layers():
    out = [(Layer(n, c, h, w, c, 3, 3, s, 1, g), 1) for n, c, h, w, g, s in TEST_3X3]
    out += [(Layer(n, c, h, w, k, 1, 1, s, 0, 1), 1) for n, c, h, w, k, s in TEST_1X1]
    return out


# ---- report ----

def git_commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


KINDS = ("fwd", "dgrad", "wgrad")


def summarize(rows):
    """Per impl: useful fraction of all issued mma work (count-weighted), bytes, worst depth, workspace."""
    out = {}
    for impl in ("before", "after"):
        rs = [r for r in rows if r["impl"] == impl]
        s = {}
        for k in KINDS:
            useful = sum(r["useful_macs"] * r["count"] for r in rs)
            issued = sum(r["useful_macs"] / r[f"{k}_useful_mma"] * r["count"] for r in rs)
            s[f"{k}_useful"] = useful / issued
            s[f"{k}_gb"] = sum(r[f"{k}_bytes"] * r["count"] for r in rs) / 1e9
        s["finalize_depth"] = max(r["finalize_depth"] for r in rs)
        s["reduce_depth"] = max(r["reduce_depth"] for r in rs)
        s["ws_mib"] = max(r["wgrad_workspace_bytes"] for r in rs) / 2 ** 20
        s["launches"] = sum(r["launches"] * r["count"] for r in rs)
        out[impl] = s
    return out


def print_layers(group, rows):
    print(f"\n{group}: per layer (before -> after); useful = useful / issued tensor-core multiply-adds")
    hdr = (f"{'layer (N C HxW K RxS/stride g)':38s} {'n':>3s} {'fwd useful':>13s} {'dgrad useful':>13s} "
           f"{'wgrad useful':>13s} {'fin depth':>11s} {'red depth':>10s} {'ws MiB':>11s} {'bytes GB':>13s}")
    print(hdr)
    by = {}
    for r in rows:
        by.setdefault(json.dumps(r["case"], sort_keys=True), {})[r["impl"]] = r
    for key, d in by.items():
        b, a = d["before"], d["after"]
        c = b["case"]
        name = f"{c['N']} {c['C']} {c['H']}x{c['W']} {c['K']} {c['R']}x{c['S']}/{c['stride']} g{c['groups']}"
        gb = lambda r: sum(r[f"{k}_bytes"] for k in KINDS) / 1e9  # noqa: E731
        print(f"{name:38s} {b['count']:3d} {b['fwd_useful_mma']:5.0%} -> {a['fwd_useful_mma']:4.0%} "
              f"{b['dgrad_useful_mma']:5.0%} -> {a['dgrad_useful_mma']:4.0%} "
              f"{b['wgrad_useful_mma']:5.0%} -> {a['wgrad_useful_mma']:4.0%} "
              f"{b['finalize_depth']:4d} -> {a['finalize_depth']:3d} {b['reduce_depth']:3d} -> {a['reduce_depth']:3d} "
              f"{b['wgrad_workspace_bytes'] / 2**20:4.0f} -> {a['wgrad_workspace_bytes'] / 2**20:3.0f} "
              f"{gb(b):5.2f} -> {gb(a):5.2f}")


def print_goals(records, dtype):
    """Issue 20 item 3's goals, each from the records: the figure before and after, and whether it is met."""
    rs = [r for r in records if r["case"]["dtype"] == dtype]

    def pick(model, pred):
        return [r for r in rs if r["case"]["model"] == model and pred(r["case"])]

    print(f"\ngoals ({dtype}):")
    grouped = lambda c: c["groups"] == 32 and c["R"] == 3 and c["H"] in (56, 28) and c["C"] in (128, 256)  # noqa: E731
    order = lambda r: (-r["case"]["H"], r["case"]["stride"], r["impl"] != "before")  # noqa: E731
    for r in sorted(pick("resnext101_32x4d", grouped), key=order):
        c = r["case"]
        worst = min(r[f"{k}_useful_mma"] for k in KINDS)
        goal = f"   (goal >= 50%: {'met' if worst >= 0.5 else 'NOT met'})" if r["impl"] == "after" else ""
        print(f"  32x4d 3x3 g32 {c['C']} ch {c['H']}x{c['W']}/{c['stride']} {r['impl']:6s}: useful mma fwd "
              f"{r['fwd_useful_mma']:.0%} dgrad {r['dgrad_useful_mma']:.0%} wgrad {r['wgrad_useful_mma']:.0%}{goal}")
    for impl in ("before", "after"):
        s2 = [r for r in rs if r["impl"] == impl and r["case"]["stride"] == 2 and r["case"]["model"] != "tests"]
        fin = [r for r in rs if r["impl"] == impl and r["case"]["model"] != "tests"]
        ws = max(r["wgrad_workspace_bytes"] for r in fin) / 2 ** 20
        print(f"  {impl:6s}: stride-2 data gradients useful mma {min(r['dgrad_useful_mma'] for r in s2):.0%} to "
              f"{max(r['dgrad_useful_mma'] for r in s2):.0%}; finalize depth <= {max(r['finalize_depth'] for r in fin)}"
              f" on >= {min(r['finalize_blocks'] for r in fin)} blocks, reduce depth <= "
              f"{max(r['reduce_depth'] for r in fin)}; wgrad workspace <= {ws:.0f} MiB"
              + (f" (goal <= 64 MiB: {'met' if ws <= 64 else 'NOT met'})" if impl == "after" else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtypes", default="bfloat16,float32", help="bfloat16 (fp16 has the same plans), float32 (TF32)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    ap.add_argument("--details", default="resnext101_32x4d,tests",
                    help="groups whose layers are printed one by one ('tests': the CUDA tests' shapes)")
    ap.add_argument("--out", default=str(HERE / "results" / "model_conv_bn.json"))
    args = ap.parse_args()
    if args.batch < 1:
        raise SystemExit("--batch must be >= 1")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or any(d not in ("bfloat16", "float16", "float32") for d in dtypes):
        raise SystemExit(f"--dtypes: expected bfloat16, float16 and/or float32, got {args.dtypes!r}")
    lib = plan_library()
    commit, now = git_commit(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    groups = {name: model_layers(name, args.batch) for name in args.models.split(",") if name}
    groups["tests"] = test_layers()
    records = []
    for dtype in dtypes:
        f32 = dtype == "float32"
        elem = 4 if f32 else 2
        for group, layers in groups.items():
            rows = []
            for L, count in layers:
                if not L.fast():
                    continue  # the simple kernels (channels a group not a multiple of 4: the stem)
                case = dict(model=group, dtype=dtype, **L.case())
                for impl, fn in (("before", before_metrics), ("after", after_metrics)):
                    rec = dict(bench=BENCH, case=case, impl=impl, count=count, useful_macs=L.useful)
                    rec.update({k: (int(v) if k.endswith("_bytes") else round(v, 4) if isinstance(v, float) else v)
                                for k, v in fn(lib, L, f32, elem).items()})
                    rec.update(commit=commit if impl == "after" else BEFORE_COMMIT, time=now)
                    rows.append(rec)
            records += rows
            if group in args.details.split(",") and dtype == dtypes[0]:
                print_layers(f"{group} ({dtype})", rows)
        print(f"\nwhole models, {dtype}, batch {args.batch} (count-weighted; depth and workspace: the worst layer)")
        print(f"{'model':20s} {'impl':6s} {'fwd useful':>10s} {'dgrad':>6s} {'wgrad':>6s} {'fwd GB':>7s} "
              f"{'dgrad GB':>8s} {'wgrad GB':>8s} {'fin depth':>9s} {'red depth':>9s} {'ws MiB':>7s} {'launches':>8s}")
        for group in groups:
            rows = [r for r in records if r["case"]["model"] == group and r["case"]["dtype"] == dtype]
            if not rows:
                continue
            for impl, s in summarize(rows).items():
                print(f"{group:20s} {impl:6s} {s['fwd_useful']:10.0%} {s['dgrad_useful']:6.0%} "
                      f"{s['wgrad_useful']:6.0%} {s['fwd_gb']:7.1f} {s['dgrad_gb']:8.1f} {s['wgrad_gb']:8.1f} "
                      f"{s['finalize_depth']:9d} {s['reduce_depth']:9d} {s['ws_mib']:7.0f} {s['launches']:8d}")
        print_goals(records, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"\n{len(records)} records written to {args.out}")


if __name__ == "__main__":
    main()
