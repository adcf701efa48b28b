"""Process-wide CPU settings that the ``hjepa`` command and the trainer apply at their start.

A library must not change its importer's environment, so ``import hjepa_kit`` sets nothing. The
CLI calls :func:`apply_cpu_defaults` before torch loads, and :class:`~hjepa_kit.training.trainer.Trainer`
calls it when a run starts; a value the user set always wins.

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin while waiting take the cycles of any other
  process sharing a core, and throughput collapses (docs/performance.md); passive waiting costs
  little on an idle machine. OpenMP reads it when torch loads, so it takes effect for the
  CLI and the benchmarks; a program that imports torch itself sets it before that import.
* ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=64``: oneDNN caches one CPU kernel per matrix shape, 1,024 by
  default; the masks change the shapes every step, so with 1,024 the resident memory keeps rising
  over an epoch, while 64 keeps it flat at the same speed (docs/performance.md). oneDNN reads it when it builds its first kernel.

This module imports nothing heavy, so it can run before torch.
"""

from __future__ import annotations

import os

__all__ = ["CPU_DEFAULTS", "apply_cpu_defaults"]

#: Environment variable -> the value set when the user has not set one.
CPU_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


def apply_cpu_defaults() -> dict[str, str]:
    """Set each of :data:`CPU_DEFAULTS` the environment lacks; returns the ones set now."""
    applied = {}
    for name, value in CPU_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied
