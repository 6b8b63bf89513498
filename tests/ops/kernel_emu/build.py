"""Builds the project's CUDA kernels for the host (transform.py + the shim) with the drivers, and runs them.

One binary per op folder of csrc/ that has a driver (drivers/<folder>.cpp): emu_soft_ce, emu_conv_bn. Each
runs one case family a call (`emu_conv_bn conv_fast_forward [--quick] [--dump DIR]`; no argument lists
them). Variants: `asan` (AddressSanitizer + UBSan: the value checks), `tsan` (ThreadSanitizer: barrier
races), `plain` (no sanitizer: the mutation script, the GPU comparison). Every object is cached under
build/emu/ by the hash of what makes it (its transformed source, every header, the shim, the flags, the
compiler), so a second run compiles nothing and a mutant recompiles only the file it touches.

    python tests/ops/kernel_emu/build.py asan            # build (or find) the binaries, print their paths
    python tests/ops/kernel_emu/build.py asan --run      # and run every family
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SHIM = HERE / "shim"
DRIVERS = HERE / "drivers"
try:
    from . import transform
except ImportError:  # run as a script
    sys.path.insert(0, str(HERE))
    import transform  # noqa: E402

COMMON = ["-std=c++20", "-O1", "-g1", "-fno-fast-math", "-ffp-contract=off", "-Wno-unknown-pragmas", "-pthread"]
KERNEL = ["-D__CUDACC__", "-D__CUDA_ARCH__=900", "-include", "emu.h"]
VARIANTS = {
    "plain": {"san": [], "defs": []},
    "asan": {"san": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
             "defs": ["-DEMU_ASAN"]},
    "tsan": {"san": ["-fsanitize=thread"], "defs": ["-DEMU_TSAN"]},
}
# What the sanitizers do at run time: stop at the first ASan/UBSan error; TSan reports every race and exits 66.
RUN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=0:exitcode=66:report_signal_unsafe=0",
}


class BuildError(RuntimeError):
    """The emulated build failed: the message has the compiler's or the transform's own words."""


@dataclass
class Build:
    variant: str
    binaries: dict[str, Path]
    compiled: int                      # objects compiled by this call (0: all from the cache)
    seconds: float
    notes: list[str] = field(default_factory=list)


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++")


def cache_root() -> Path:
    return Path(os.environ.get("WSLFAST_EMU_CACHE", ROOT / "build" / "emu"))


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _compiler_id(cxx: str) -> str:
    r = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return cxx + " " + r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else cxx


def toolchain_problem(variant: str) -> str | None:
    """Why this variant cannot be built here (None: it can): no g++, not Linux, no sanitizer runtime."""
    if platform.system() != "Linux":
        return f"the kernel emulator needs Linux (mmap'd fiber stacks), not {platform.system()}"
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler (g++ or $CXX) to build the emulated kernels"
    flags = VARIANTS[variant]["san"]
    stamp = cache_root() / "probe" / _digest(_compiler_id(cxx), flags)
    if stamp.exists():
        return stamp.read_text() or None
    stamp.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("#include <cstdio>\nint main() { std::puts(\"ok\"); return 0; }\n")
        exe = Path(tmp) / "probe"
        r = subprocess.run([cxx, "-std=c++20", *flags, str(src), "-o", str(exe)], capture_output=True, text=True)
        problem = ""
        if r.returncode != 0:
            problem = f"{cxx} cannot build with {' '.join(flags) or 'no flags'}: {r.stderr.strip()[-300:]}"
        else:
            rr = subprocess.run([str(exe)], capture_output=True, text=True, env={**os.environ, **RUN_ENV})
            if rr.returncode != 0 or "ok" not in rr.stdout:
                problem = f"a {variant} build does not run here: {(rr.stderr or rr.stdout).strip()[-300:]}"
    stamp.write_text(problem)
    return problem or None


SELFTEST = HERE / "selftest"


def transformed_tree(csrc: Path) -> tuple[Path, list[str]]:
    """csrc/ rewritten by transform.py (and the emulator's self-test kernels beside it, as selftest/),
    stored once per content under build/emu/src/."""
    files = [(csrc, p) for p in sorted(csrc.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    files += [(SELFTEST, p) for p in sorted(SELFTEST.iterdir())]
    key = _digest(*(f"{p.relative_to(base).as_posix()}\n".encode() + p.read_bytes() for base, p in files),
                  (HERE / "transform.py").read_bytes(), (SHIM / "emu_ptx.h").read_bytes(), Path(__file__).read_bytes())
    dst = cache_root() / "src" / key
    if not (dst / ".done").exists():
        tmp = dst.with_name(f"{key}.tmp{os.getpid()}")
        log = transform.transform_tree(csrc, tmp)
        log += transform.transform_tree(SELFTEST, tmp / "selftest")
        (tmp / "transform.log").write_text("\n".join(log) + "\n")
        (tmp / ".done").write_text("")
        try:
            tmp.rename(dst)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return dst, (dst / "transform.log").read_text().splitlines()


INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def included_files(source: Path, dirs: list[Path]) -> list[Path]:
    """Every file `source` includes with #include "..." (found next to the includer or in dirs), recursively:
    what an object depends on, so a change elsewhere leaves it cached."""
    seen: dict[Path, None] = {}
    todo = [source]
    while todo:
        f = todo.pop()
        for name in INCLUDE.findall(f.read_text(errors="replace")):
            for d in [f.parent, *dirs]:
                cand = (d / name).resolve()
                if cand.is_file():
                    if cand not in seen:
                        seen[cand] = None
                        todo.append(cand)
                    break
    return sorted(seen)


@dataclass
class _Job:
    source: Path
    flags: list[str]
    deps: bytes
    obj: Path = Path()


def _compile(cxx: str, job: _Job) -> tuple[bool, str]:
    if job.obj.exists():
        return False, ""
    job.obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.obj.with_suffix(f".{os.getpid()}.tmp.o")
    lang = ["-x", "c++"] if job.source.suffix == ".cu" and "nvcc" not in Path(cxx).name else []
    r = subprocess.run([cxx, *job.flags, "-c", *lang, str(job.source), "-o", str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {job.source} ({' '.join(job.flags)}):\n{r.stderr[-6000:]}")
    os.replace(tmp, job.obj)
    return True, r.stderr


def prune(keep_objects: int = 120, keep_binaries: int = 40, keep_trees: int = 8) -> None:
    """Drops the least recently used cache entries beyond these counts (a build touches what it uses)."""
    root = cache_root()
    for sub, keep in (("obj", keep_objects), ("bin", keep_binaries), ("src", keep_trees)):
        d = root / sub
        if not d.is_dir():
            continue
        entries = sorted(d.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in entries[keep:]:
            if ".tmp" in p.name:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _touch(p: Path) -> None:
    try:
        os.utime(p)
    except OSError:
        pass


def build(variant: str, csrc: Path | None = None, jobs: int | None = None) -> Build:
    """The variant's binaries for csrc (default: this checkout's), compiled where the cache lacks them."""
    t0 = time.perf_counter()
    problem = toolchain_problem(variant)
    if problem:
        raise BuildError(problem)
    cxx = compiler()
    csrc = Path(csrc or ROOT / "csrc").resolve()
    tree, log = transformed_tree(csrc)
    notes = [line for line in log if "note:" in line]
    cfg = VARIANTS[variant]
    ident = _compiler_id(cxx)
    objdir = cache_root() / "obj"
    search = [SHIM, DRIVERS, tree]

    def job(source: Path, flags: list[str], forced: list[Path] = ()) -> _Job:
        deps = [*forced, *included_files(source, search)] + [d for f in forced for d in included_files(f, search)]
        j = _Job(source, flags, b"".join(d.read_bytes() for d in sorted(set(deps))))
        # the key leaves out where the transformed tree lives (a path per csrc content): a change to one file
        # keeps every object that does not include it
        key_flags = [f.replace(str(tree), "<tree>") for f in flags]
        j.obj = objdir / f"{source.stem}-{variant}-{_digest(ident, key_flags, source.read_bytes(), j.deps)}.o"
        return j

    # reports and sanitizer traces name csrc/<file> (and tests/ops/kernel_emu/selftest/<file>), not the tree
    names = [f"-ffile-prefix-map={tree}/=csrc/", f"-ffile-prefix-map={tree}/selftest/={SELFTEST.relative_to(ROOT)}/"]
    kernel_flags = [*COMMON, *cfg["san"], *cfg["defs"], *KERNEL, *names, f"-I{SHIM}", f"-I{tree}"]
    driver_flags = [*COMMON, *cfg["san"], *cfg["defs"], "-DWSLFAST_EMU", *names, f"-I{SHIM}", f"-I{DRIVERS}",
                    f"-I{tree}"]
    runtime = [job(p, [*COMMON, *cfg["defs"], f"-I{SHIM}"]) for p in sorted(SHIM.glob("*.cpp"))]  # not instrumented
    harness = job(DRIVERS / "harness.cpp", driver_flags, [SHIM / "emu.h"])
    folders: dict[str, tuple[list[_Job], list[_Job]]] = {}
    for folder in sorted({p.parent for p in tree.rglob("*.cu")}):
        name = folder.name
        drivers = sorted(DRIVERS.glob(f"{name}.cpp")) + sorted(DRIVERS.glob(f"{name}_*.cpp"))
        if not drivers:
            notes.append(f"csrc/{name}: no driver in {DRIVERS.relative_to(ROOT)}, its kernels are not run")
            continue
        kernels = [job(p, kernel_flags, [SHIM / "emu.h"]) for p in sorted(folder.glob("*.cu"))]
        folders[name] = (kernels, [job(d, driver_flags, [SHIM / "emu.h"]) for d in drivers])
    all_jobs = [*runtime, harness] + [j for k, d in folders.values() for j in k + d]
    # the biggest sources first, so the slowest compiles overlap the rest
    all_jobs.sort(key=lambda j: -j.source.stat().st_size)
    compiled = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        for did, _ in pool.map(lambda j: _compile(cxx, j), all_jobs):
            compiled += did
    binaries = {}
    for name, (kernels, drivers) in folders.items():
        objs = [j.obj for j in runtime] + [harness.obj] + [j.obj for j in kernels + drivers]
        exe = cache_root() / "bin" / f"{variant}-{_digest(*(o.name for o in objs))}" / f"emu_{name}"
        if not exe.exists():
            exe.parent.mkdir(parents=True, exist_ok=True)
            tmp = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
            r = subprocess.run([cxx, *cfg["san"], "-pthread", *map(str, objs), "-o", str(tmp)], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise BuildError(f"linking emu_{name}:\n{r.stderr[-4000:]}")
            os.replace(tmp, exe)
        binaries[name] = exe
        for p in [*objs, exe.parent]:
            _touch(p)
    _touch(tree)
    prune()
    return Build(variant, binaries, compiled, time.perf_counter() - t0, notes)


def nvcc_path() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cands = [str(Path(home) / "bin" / "nvcc")] if home else []
    cands += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    return next((c for c in cands if c and Path(c).exists()), None)


def build_cuda(csrc: Path | None = None, arch: str = "90a", jobs: int | None = None) -> Build:
    """The same drivers against the real kernels: csrc/**/*.cu compiled by nvcc for one GPU architecture (or
    the objects `setup.py build_ext` left in build/temp*/ for them, when newer than every file they include),
    the drivers as host C++; binaries gpu_<folder>. For the GPU session's comparison (scripts/emu_gpu_compare.py)."""
    t0 = time.perf_counter()
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("no nvcc (CUDA_HOME, PATH or /usr/local/cuda) to build the drivers for the GPU")
    csrc = Path(csrc or ROOT / "csrc").resolve()
    ident = _compiler_id(nvcc)
    objdir = cache_root() / "obj-cuda"
    gencode = f"-gencode=arch=compute_{arch},code=sm_{arch}"
    kernel_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", gencode, "-Xcompiler", "-fPIC"]
    driver_flags = ["-O1", "-std=c++17", "-x", "c++", f"-I{DRIVERS}", f"-I{csrc}"]
    notes, jobs_list, folders = [], [], {}

    def job(source: Path, flags: list[str]) -> _Job:
        deps = included_files(source, [DRIVERS, csrc])
        j = _Job(source, flags, b"".join(d.read_bytes() for d in deps))
        fresh = [o for o in sorted(ROOT.glob(f"build/temp*/{source.relative_to(ROOT).as_posix()[:-3]}.o"))
                 if source.is_relative_to(ROOT) and source.suffix == ".cu" and
                 o.stat().st_mtime > max(p.stat().st_mtime for p in [source, *deps])]
        j.obj = fresh[0] if fresh else objdir / f"{source.stem}-sm{arch}-{_digest(ident, flags, source.read_bytes(), j.deps)}.o"
        return j

    harness = job(DRIVERS / "harness.cpp", driver_flags)
    jobs_list.append(harness)
    for folder in sorted({p.parent for p in csrc.rglob("*.cu")}):
        drivers = sorted(DRIVERS.glob(f"{folder.name}.cpp")) + sorted(DRIVERS.glob(f"{folder.name}_*.cpp"))
        if not drivers:
            continue
        ks = [job(p, kernel_flags) for p in sorted(folder.glob("*.cu"))]
        ds = [job(d, driver_flags) for d in drivers]
        folders[folder.name] = ks + ds
        jobs_list += ks + ds
    reused = sum(not j.obj.is_relative_to(objdir) for j in jobs_list)
    if reused:
        notes.append(f"{reused} kernel objects from setup.py's build reused")
    compiled = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        for did, _ in pool.map(lambda j: _compile(nvcc, j), sorted(jobs_list, key=lambda j: -j.source.stat().st_size)):
            compiled += did
    binaries = {}
    for name, js in folders.items():
        objs = [harness.obj] + [j.obj for j in js]
        exe = cache_root() / "bin" / f"cuda-sm{arch}-{_digest(*(str(o) for o in objs))}" / f"gpu_{name}"
        if not exe.exists():
            exe.parent.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([nvcc, gencode, *map(str, objs), "-o", str(exe)], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"linking gpu_{name}:\n{r.stderr[-4000:]}")
        binaries[name] = exe
    return Build(f"cuda-sm{arch}", binaries, compiled, time.perf_counter() - t0, notes)


def run(binary: Path, family: str, quick: bool = False, timeout: float = 600,
        dump: Path | None = None) -> subprocess.CompletedProcess:
    args = [str(binary), family] + (["--quick"] if quick else []) + (["--dump", str(dump)] if dump else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **RUN_ENV})


def families(binary: Path) -> list[str]:
    """The case families a driver binary runs (its usage text lists them)."""
    r = subprocess.run([str(binary)], capture_output=True, text=True, env={**os.environ, **RUN_ENV})
    lines = r.stderr.split("families:", 1)[-1].splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("--csrc", type=Path, help="another csrc/ folder (default: this checkout's)")
    ap.add_argument("--run", action="store_true", help="run every family of every binary")
    ap.add_argument("--quick", action="store_true", help="with --run: the first case of each kernel only")
    args = ap.parse_args()
    try:
        b = build(args.variant, args.csrc)
    except BuildError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{args.variant}: {b.compiled} objects compiled in {b.seconds:.1f} s")
    for n in b.notes:
        print(n)
    failed = 0
    for name, exe in b.binaries.items():
        print(f"{name}: {exe}")
        if not args.run:
            continue
        for fam in families(exe):
            t = time.perf_counter()
            r = run(exe, fam, args.quick)
            failed += r.returncode != 0
            tail = (r.stdout.strip().splitlines() or [""])[-1]
            print(f"  {fam}: rc={r.returncode} in {time.perf_counter() - t:.1f} s  {tail}")
            if r.returncode != 0:
                print("\n".join(r.stderr.strip().splitlines()[-15:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
