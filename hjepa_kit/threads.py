"""How many CPU threads the training process uses.

A laptop run has two physical cores and one process. The cheapest way to lose a factor of 5-15 is
oversubscription: more compute threads than cores (hyper-threads counted as cores, a container that
sees the host's cores, loader worker processes beside the compute threads). So:

* intra-op threads default to the *physical* cores this process may run on
  (:func:`physical_cores`: CPU affinity, then one thread per physical core when SMT is on, then the
  container's CPU quota);
* inter-op threads are set to 1: eager PyTorch runs one operator at a time, a second pool only
  competes with the first;
* in-RAM datasets need no loader worker processes (see :mod:`hjepa_kit.data.loader`).

On a machine shared with other jobs (a CI runner, a workstation in use, several runs side by side),
set one thread: ``training.threads: 1`` in the configuration, or ``HJEPA_THREADS=1`` in the
environment (the variable wins over the configuration). One thread per run is slower per run but
never thrashes: two 1-thread runs on two cores finish sooner than two 2-thread runs fighting.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["ENV_VAR", "physical_cores", "configure_threads"]

#: Environment variable that overrides the configured number of threads.
ENV_VAR = "HJEPA_THREADS"

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP = Path("/sys/fs/cgroup")


def _allowed_cpus() -> list[int]:
    """Logical CPUs this process may run on (its affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _core_key(cpu: int, sys_cpu: Path) -> tuple[str, str] | None:
    """``(package, core)`` of a logical CPU, or ``None`` when the topology is not readable."""
    topology = sys_cpu / f"cpu{cpu}" / "topology"
    try:
        package = (topology / "physical_package_id").read_text().strip()
        core = (topology / "core_id").read_text().strip()
    except OSError:
        return None
    return package, core


def _cgroup_cpu_limit(cgroup: Path) -> float | None:
    """The container's CPU quota in cores (cgroup v2, then v1), or ``None`` when unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def physical_cores(*, sys_cpu: Path = _SYS_CPU, cgroup: Path = _CGROUP) -> int:
    """Physical cores available to this process (at least 1).

    Counts the logical CPUs of the affinity mask (``taskset``, ``--cpuset-cpus``), merges
    hyper-thread siblings into one core using ``/sys/devices/system/cpu/cpu*/topology``, and caps
    the result at the container's CPU quota (``docker --cpus``), rounded up.

    Args:
        sys_cpu: the sysfs CPU folder (a parameter for tests).
        cgroup: the cgroup folder (a parameter for tests).
    """
    cpus = _allowed_cpus()
    keys = [_core_key(cpu, sys_cpu) for cpu in cpus]
    if keys and all(key is not None for key in keys):
        count = len(set(keys))
    else:  # no sysfs (macOS, Windows, some sandboxes): every allowed CPU counts
        count = len(cpus)
    limit = _cgroup_cpu_limit(cgroup)
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def _threads_from_env() -> int | None:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"expected a whole number of threads >= 1, got {raw!r}", f"environment variable {ENV_VAR}")
    return int(raw)


def configure_threads(threads: int | None = None) -> int:
    """Set PyTorch's CPU threads for this process and return the intra-op count.

    Args:
        threads: intra-op threads (``training.threads``); ``None`` means :func:`physical_cores`.
            The environment variable ``HJEPA_THREADS`` overrides it. Use ``1`` on shared machines
            (CI, a busy workstation, several runs at once): a thread per run avoids the 5-15x
            slowdown of threads fighting over too few cores.

    Returns:
        The number of intra-op threads now set.

    Raises:
        ConfigError: ``HJEPA_THREADS`` is set but is not a whole number >= 1.
    """
    count = _threads_from_env() or threads or physical_cores()
    torch.set_num_threads(count)
    try:
        # One inter-op thread: eager mode runs one operator at a time. PyTorch refuses the
        # change once inter-op work has started (or it was set before); that setting then stays.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return count
