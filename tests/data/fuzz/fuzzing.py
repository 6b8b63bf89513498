"""Shared helpers of the data build's fuzz suite (issue 18 item 5): seeded, bounded Hypothesis settings,
byte-level mutations of a valid input (AFL's kinds: bit flips, byte sets, interesting values, cuts,
deletions, insertions, duplications, zeroed ranges), and a guard that turns a hang into a failure.

Used by test_fuzz_images.py (mutated image files); TAGS lines and compressed files reuse `mutate` /
`mutations` and `no_hang` (import `fuzzing` from a test in this folder: pytest puts the folder on the path).
"""
from __future__ import annotations

import faulthandler
import signal
import sys
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["fuzz_settings", "mutations", "mutate", "no_hang", "Hang", "INTERESTING"]


class Hang(BaseException):
    """Raised by no_hang. A BaseException, so no `except Exception` guard under test can swallow it
    (a TimeoutError is an OSError, which image and stream readers count as a bad input)."""


def fuzz_settings(max_examples: int):
    """Seeded (derandomize: the same examples on every run, so CI is reproducible), no example database on
    disk, no per-example deadline (a shared CI machine), every example bounded by no_hang instead."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# Values that tend to break parsers: sizes and counts at their type limits.
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00"]

# One mutation: (kind, position as a fraction of the length, a size or value, bytes); fractions keep a
# mutation meaningful for inputs of any length, and shrink towards the start of the input.
_MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "interesting", "cut", "delete", "insert", "duplicate", "zero"]),
    st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 4096), st.binary(min_size=1, max_size=64))


def mutations(max_count: int = 8):
    """A Hypothesis strategy: a list of 1 to max_count mutations, for `mutate`."""
    return st.lists(_MUTATION, min_size=1, max_size=max_count)


def mutate(data: bytes, muts) -> bytes:
    """Apply mutations in order (a pure function of data and muts, so a failing example replays)."""
    d = bytearray(data)
    for kind, frac, n, blob in muts:
        if not d:
            d = bytearray(blob)
            continue
        i = int(frac * len(d))
        if kind == "flip":
            d[i] ^= 1 << (n % 8)
        elif kind == "set":
            d[i] = blob[0]
        elif kind == "interesting":
            v = INTERESTING[n % len(INTERESTING)]
            d[i:i + len(v)] = v
        elif kind == "cut":
            del d[i:]
        elif kind == "delete":
            del d[i:i + 1 + n % 512]
        elif kind == "insert":
            d[i:i] = blob
        elif kind == "duplicate":
            d[i:i] = d[i:i + 1 + n % 512]
        elif kind == "zero":
            j = min(len(d), i + 1 + n % 512)
            d[i:j] = bytes(j - i)
    return bytes(d)


@contextmanager
def no_hang(seconds: float = 20):
    """Fail instead of hanging: SIGALRM raises Hang in Python code after `seconds`; a hang inside
    C code (where no Python runs) dumps every thread's stack and ends the process at 3x, so CI stops with
    the place of the hang rather than at its own time limit. Main thread only (pytest runs tests there)."""
    def timeout(*_):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True, file=sys.__stderr__)  # capsys-proof
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()
