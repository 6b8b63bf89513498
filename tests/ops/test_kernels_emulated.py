"""Every CUDA launcher of csrc/ run on the CPU, without a GPU: the project's own .cu sources compiled for the
host (tests/ops/kernel_emu: a syntactic transform and a SIMT shim; no hand copies of kernel code), each
output compared with a float64 reference over odd shapes, every storage dtype, NaN / -inf, broken CSR rows
and the split paths, under AddressSanitizer + UBSan (exact-size buffers, outputs pre-filled with NaN); the
first cases of every kernel again under ThreadSanitizer, where a missing __syncthreads is a data race.

One test per case family, so a failure names its kernels. The builds (about a minute each on 2 cores) are
cached in build/emu/ by source hash; skipped where g++ or a sanitizer runtime is missing. The emulator's own
checks are tested on kernels with known faults (kernel_emu/selftest)."""
import re

import pytest

from kernel_emu import build as emu

pytestmark = pytest.mark.slow  # a build of about a minute a variant, then seconds a family

# family -> the driver binary (csrc folder) that runs it
FAMILIES = {
    "softce_forward": "soft_ce",
    "softce_backward": "soft_ce",
    "softce_split_gradient": "soft_ce",
    "softce_loss": "soft_ce",
    "softce_grad_rows": "soft_ce",
    "conv_fast_forward": "conv_bn",
    "conv_fast_dgrad": "conv_bn",
    "conv_fast_wgrad": "conv_bn",
    "conv_simple": "conv_bn",
    "bn_finalize": "conv_bn",
    "bn_elementwise": "conv_bn",
}
# its kernels are softce_forward's and softce_backward's, race-checked there
NOT_UNDER_TSAN = {"softce_split_gradient"}
SUMMARY = re.compile(r"(\d+) checks, (\d+) failures, (\d+) emulator errors")

_builds: dict = {}


def binary(variant: str, folder: str):
    """The variant's driver binary for a csrc folder: built once per session (and per source hash on disk)."""
    if variant not in _builds:
        problem = emu.toolchain_problem(variant)
        try:
            _builds[variant] = problem or emu.build(variant)
        except emu.BuildError as e:
            _builds[variant] = e
    b = _builds[variant]
    if isinstance(b, str):
        pytest.skip(b)
    if isinstance(b, Exception):
        pytest.fail(f"the emulated {variant} build failed:\n{b}", pytrace=False)
    return b.binaries[folder]


def explain(r) -> str:
    lines = (r.stderr + r.stdout).strip().splitlines()
    return f"exit {r.returncode}:\n" + "\n".join(lines[-40:])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kernels_match_float64_under_asan(family):
    r = emu.run(binary("asan", FAMILIES[family]), family)
    summary = SUMMARY.search(r.stdout)
    assert r.returncode == 0 and summary, explain(r)
    checks, failures, errors = map(int, summary.groups())
    assert checks > 0 and failures == 0 and errors == 0, explain(r)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in NOT_UNDER_TSAN])
def test_kernels_have_no_unordered_accesses_under_tsan(family):
    r = emu.run(binary("tsan", FAMILIES[family]), family, quick=True)
    assert "ThreadSanitizer" not in r.stderr and r.returncode == 0, explain(r)
    assert SUMMARY.search(r.stdout), explain(r)


# Kernels with one known fault each (kernel_emu/selftest): the report each must give.
CANARIES = [
    ("asan", "clean", 0, "0 failures, 0 emulator errors"),
    ("asan", "race", 1, "values wrong"),  # the stale read shows in the values too
    ("asan", "overrun", None, "heap-buffer-overflow"),
    ("asan", "divergent_barrier", 1, "threads meet at different barriers"),
    ("asan", "deadlock", 3, "DEADLOCK"),
    ("asan", "exited_lane_shuffle", 1, "names lanes that exited"),
    ("asan", "launch_bounds", 1, "__launch_bounds__(64)"),
    ("asan", "shared_limit", 1, "exceeds 48 KiB"),
    ("tsan", "clean", 0, "0 failures, 0 emulator errors"),
    ("tsan", "race", 66, "ThreadSanitizer: data race"),
]


@pytest.mark.parametrize("variant,family,code,words", CANARIES, ids=[f"{v}-{f}" for v, f, _, _ in CANARIES])
def test_the_emulator_reports_each_known_fault(variant, family, code, words):
    r = emu.run(binary(variant, "selftest"), family, timeout=120)
    assert (r.returncode != 0 if code is None else r.returncode == code), explain(r)
    assert words in r.stdout + r.stderr, explain(r)
    if variant == "tsan" and family == "race":
        assert "emu_selftest.cu:19" in r.stderr  # the report names the kernel's line
