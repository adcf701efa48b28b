"""Give the allocator's free pages back to the operating system during training.

The masks change the number of tokens every step, so the tensors of one step have other sizes
than those of the last. glibc's allocator keeps the pages such tensors freed inside its heap and
reuses them only for allocations that fit, so the resident memory of a run creeps up long after
its live memory has stopped growing. ``malloc_trim(0)`` every few steps hands those pages back and
keeps the resident memory flat at no measurable cost in speed (the figures are on
docs/performance.md, "Memory over the epochs"). The other half of the creep was oneDNN's kernel
cache, which ``import hjepa_kit`` caps.

``malloc_trim`` exists only in glibc; elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable

__all__ = ["malloc_trim", "HeapTrimmer"]

log = logging.getLogger("hjepa_kit")


@functools.lru_cache(maxsize=1)
def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim(pad)``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` every ``every_steps`` optimizer steps (0: never).

    Attributes:
        every_steps: the period in optimizer steps.
        calls: trims done so far.
        seconds: time spent trimming so far.
        enabled: whether trimming runs (a period above 0 and a C library that has it).
    """

    def __init__(self, every_steps: int) -> None:
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        self.every_steps = every_steps
        self._trim = malloc_trim() if every_steps else None
        if every_steps and not self.enabled:
            log.debug("training.release_memory_every_steps: this C library has no malloc_trim; not trimming")
        self.calls = 0
        self.seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def after_step(self, step: int) -> bool:
        """Trim if ``step`` is a multiple of the period; returns whether it trimmed."""
        if self._trim is None or step % self.every_steps:
            return False
        start = time.perf_counter()
        self._trim(0)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return True
