"""What every benchmark records beside its figures: the machine, its load, memory, and timers.

Shared by ``throughput.py``, ``epoch.py`` and ``evaluate.py`` (run as ``python benchmarks/X.py``,
so this module is imported as ``_machine``). It applies :func:`hjepa_kit.process.apply_cpu_defaults`
before it imports :mod:`torch`, as the ``hjepa`` command does: ``OMP_WAIT_POLICY=PASSIVE`` must be set
while OpenMP can still read it (spinning OpenMP threads collapse throughput 5-15x as soon as another
process shares a core).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hjepa_kit.process import apply_cpu_defaults

apply_cpu_defaults()  # before torch loads, as the hjepa command does

import torch  # noqa: E402

from hjepa_kit.runtime import cpu_has_fast_bf16, peak_rss_mb
from hjepa_kit.threads import physical_cores

__all__ = [
    "machine",
    "load_average",
    "rss_mb",
    "peak_rss_mb",
    "sync",
    "Stopwatch",
    "matmul_peak_gflops",
    "write_json",
    "fmt_load",
]


def _cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable processes), or ``None`` where unknown.

    On a 2-core machine a load above ~2 means the benchmark shared its cores with other work:
    its wall-clock figures are then lower bounds of what the code does on an idle machine.
    """
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def fmt_load(load: list[float] | None) -> str:
    return "unknown" if load is None else "/".join(f"{x:.2f}" for x in load)


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """The CPU model, cores, threads, accelerator and library versions the figures were taken with."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "onednn_primitive_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
        "load_average": load_average(),
        "memory_gb": _memory_gb(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident memory of this process now, in MB (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer around it measures the work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall and process-CPU seconds of named phases, summed over repeats.

    CPU time (all threads of this process) does not count time spent waiting for a core, so on a
    shared machine it is the steadier figure; wall time is what a user waits.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark: tuple[float, float] | None = None

    def start(self) -> None:
        sync(self.device)
        self._mark = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        """Charge the time since the last ``start``/``lap`` to ``name``."""
        sync(self.device)
        now = (time.perf_counter(), time.process_time())
        assert self._mark is not None, "start() first"
        self.wall[name] = self.wall.get(name, 0.0) + now[0] - self._mark[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + now[1] - self._mark[1]
        self._mark = now


def matmul_peak_gflops(
    device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int]], seconds: float = 0.6
) -> dict[str, Any]:
    """The best GFLOP/s of ``(m, k) @ (k, n)`` products in ``dtype`` on ``device``, with the current threads.

    Each shape runs for about ``seconds`` after a warm-up; the best repeat counts (a peak is what
    the hardware can do, so the least disturbed repeat is the truest). Returns the best figure and
    each shape's.
    """
    per_shape = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        flops = 2.0 * m * k * n
        for _ in range(2):
            a @ b
        sync(device)
        best = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, flops / (time.perf_counter() - start) / 1e9)
        per_shape[f"{m}x{k}x{n}"] = round(best, 1)
    return {"gflops": max(per_shape.values()), "shapes": per_shape, "dtype": str(dtype).removeprefix("torch.")}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, wall seconds and process-CPU seconds."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"# wrote {path}")
