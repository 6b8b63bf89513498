"""SIGTERM / SIGUSR1 turned into a flag the training loop polls, so it can checkpoint and exit cleanly.

SLURM and torchrun send SIGTERM before killing a job (SLURM can send SIGUSR1 ahead of the time limit with
`--signal=USR1@120`). The handler only records the signal; the loop decides when to stop, at a step
boundary, after all ranks agree (see pretrain.py), so no rank blocks in a collective the others never join.
"""
from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals"]


class StopSignals:
    """with StopSignals() as stop: ... if stop.received: save and exit."""

    def __init__(self, signums=(signal.SIGTERM, signal.SIGUSR1)):
        self.signums = tuple(signums)
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def __enter__(self) -> "StopSignals":
        # Handlers can only be set from the main thread; elsewhere (e.g. a notebook worker) run without.
        if threading.current_thread() is threading.main_thread():
            for s in self.signums:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
