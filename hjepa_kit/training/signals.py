"""SIGINT/SIGTERM during training: a flag the loop checks, so that a run stops at a step boundary.

The first signal asks the run to finish its current optimizer step and write a checkpoint; a
second Ctrl-C stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["Interrupt"]

log = logging.getLogger("hjepa_kit")


class Interrupt:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step.

    A context manager: the handlers are installed on entry (from the main thread only; Python
    allows signal handlers nowhere else) and the previous ones restored on exit.

    Attributes:
        signal: the name of the signal received (``SIGINT``, ``SIGTERM``), or None.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, then writing a checkpoint", self.signal)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
