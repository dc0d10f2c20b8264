"""SIGTERM/SIGINT as a flag: the train loop polls it, saves and exits cleanly.

Kept free of heavy imports (no JAX), so `llm-jax train` installs it in its first
milliseconds and a signal during imports, data preparation or compilation is a clean
stop too.
"""

from __future__ import annotations

import signal
from typing import Any

# EX_TEMPFAIL: stopped by a signal after saving; rerunning the same command resumes. The
# trainer exits with it and the sweep runner reads it.
PREEMPTED_EXIT_CODE = 75


class PreemptionGuard:
    """While active, SIGTERM and SIGINT set `requested` instead of killing the process.

    A second SIGINT restores the default behaviour (so Ctrl-C twice still stops a
    stuck run). Use as a context manager; the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> PreemptionGuard:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
