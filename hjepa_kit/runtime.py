"""Device, precision, seeding, memory figures, and whether ``torch.compile`` can run here."""

from __future__ import annotations

import functools
import os
import random
import resource
import shutil
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .errors import UserError

__all__ = [
    "resolve_device", "autocast_dtype", "cpu_has_fast_bf16", "seed_everything", "rng_state", "restore_rng_state", "peak_rss_mb",
    "cpp_compiler", "should_compile",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and oneDNN is available.

    Without those instructions bf16 is emulated and slower than fp32; without mkldnn it is far
    slower still, so both are required.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return sys.platform == "darwin" and torch.backends.mps.is_available()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``fp32``, ``bf16``, ``auto``) on ``device``; None: fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (model init, dropout, drop-path)."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch's global generator states (CPU, and every CUDA device where CUDA is available), for a checkpoint."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: Mapping[str, Any]) -> None:
    """Restore the states of :func:`rng_state` (the CUDA ones where CUDA is available here)."""
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpp_compiler() -> str | None:
    """Path of the C++ compiler inductor's CPU backend would use (``$CXX``, g++, c++, clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (found := shutil.which(name)):
            return found
    return None


def should_compile(choice: bool | str, device: torch.device, *, large_enough: bool, key: str) -> bool:
    """Resolve ``choice`` (``"auto"``, True or False) of configuration key ``key`` for ``device``.

    The configuration has checked ``choice`` already. True on a CPU without a C++ compiler warns
    and returns False (the run goes on eagerly).
    """
    if choice is False or (choice == "auto" and (device.type != "cpu" or not large_enough)):
        return False
    if device.type == "cpu" and cpp_compiler() is None:
        if choice is True:
            warnings.warn(f"{key}: true, but no C++ compiler (g++, c++, clang++ or $CXX) was found; running uncompiled",
                          stacklevel=2)
        return False
    return True
