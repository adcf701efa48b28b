"""Configurations shipped with the package (the repository's ``configs/`` folder)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_names", "find_bundled"]


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
