"""Configurations shipped with the package (the repository's ``configs/`` folder)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["bundled_names", "find_bundled", "resolve_config_source"]


def bundled_names() -> list[str]:
    """Names of the bundled configurations (``quickstart``, ``cpu_cifar10`` ...)."""
    try:
        folder = resources.files("hjepa_kit.configs")
    except ModuleNotFoundError:
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_bundled(name: str) -> str | None:
    """The path of bundled configuration ``name`` (with or without ``.yaml`` / ``configs/``), or None."""
    stem = Path(name).name.removesuffix(".yaml")
    if stem not in bundled_names():
        return None
    return str(resources.files("hjepa_kit.configs") / f"{stem}.yaml")


def resolve_config_source(config: Any) -> tuple[Any, str]:
    """``config`` as :func:`hjepa_kit.config.load_config` takes it, and the name the run reports.

    ``None`` is the bundled ``quickstart``; a string or path that names no existing file but a
    bundled configuration (``quickstart``, ``configs/cpu_cifar10.yaml`` ...) is that configuration;
    any other path, a mapping or a :class:`~hjepa_kit.config.RunConfig` is passed on unchanged.
    :func:`hjepa_kit.train` and every ``hjepa`` command resolve ``--config`` through this function.
    """
    if config is None:
        return find_bundled("quickstart"), "quickstart"
    if isinstance(config, (str, os.PathLike)):
        path = str(config)
        if not os.path.exists(path):
            bundled = find_bundled(path)
            if bundled is not None:
                return bundled, path
        return path, path
    return config, "<config>"
