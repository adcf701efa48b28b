"""Which plugins a test sees: registries with given plugins, and plugins served as installed ones.

:class:`PluginSandbox` serves plugins as extra entry points of the ``hjepa_kit`` group for one
test; the :func:`~hjepa_kit.testing.hjepa_plugins` fixture hands one out. Nothing here imports
pytest: the sandbox only needs a ``monkeypatch`` (pytest's, or anything with its ``setattr``).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from ..contracts import KINDS
from ..registry import ENTRY_POINT_GROUP, Registry

if TYPE_CHECKING:
    import pytest


def registry_with(*plugins: Any, entry_points: bool = True, strict: bool = True) -> Registry:
    """A fresh registry holding the installed plugins and ``plugins``.

    A plugin that the installed entry points already registered (your own package after
    ``pip install -e .``) is not added a second time, so the same test works before and after
    installing.

    Args:
        plugins: plugin modules or objects with ``@hookimpl`` functions.
        entry_points: also load the installed plugins of the ``hjepa_kit`` entry-point group
            (the built-ins among them).
        strict: a third-party plugin that fails to import, or a component registered without a
            summary or a parameter's help text, is an error, not a warning.

    Returns:
        A :class:`~hjepa_kit.registry.Registry`; pass it to :func:`check_component` or to
        ``Trainer(config, registry=...)``.
    """
    registry = Registry(entry_points=entry_points, strict=strict)
    for plugin in plugins:
        if not registry.pm.is_registered(plugin):
            registry.add_plugin(plugin)
    return registry


def components(registry: Registry | None = None, *, plugin: str | None = None, distribution: str | None = None) -> list[tuple[str, str]]:
    """``(kind, name)`` of every registered component, for ``pytest.mark.parametrize``.

    Args:
        registry: the registry to list (default: a fresh one with the installed plugins).
        plugin: keep only components registered by the plugin of this name (an entry-point name,
            or a module's ``__name__`` for plugins added in-process).
        distribution: keep only components shipped by this distribution (``hjepa-kit`` for the
            built-ins).
    """
    registry = registry if registry is not None else Registry()
    found = []
    for kind in KINDS:
        for name in registry.names(kind):
            component = registry.components[kind][name]
            if plugin is not None and component.plugin != plugin:
                continue
            if distribution is not None and _canonical(component.distribution) != _canonical(distribution):
                continue
            found.append((kind, name))
    return found


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")

@attrs.define
class _Distribution:
    name: str
    version: str


@attrs.define
class _EntryPoint:
    """Looks like an ``importlib.metadata.EntryPoint`` of the ``hjepa_kit`` group."""

    name: str
    value: str
    plugin: Any
    dist: _Distribution
    group: str = ENTRY_POINT_GROUP

    def load(self) -> Any:
        return self.plugin


class PluginSandbox:
    """Plugins that every :class:`~hjepa_kit.registry.Registry` sees during one test.

    Each added plugin is served as an extra entry point of the ``hjepa_kit`` group, so the real
    program finds it exactly as it would find an installed one: ``hjepa plugins`` (through
    ``hjepa_kit.cli.main``), ``hjepa_kit.train``, ``hjepa_kit.evaluate``. Get one from the
    :func:`hjepa_plugins` fixture; everything is undone when the test ends.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib.metadata as md

        self._added: list[_EntryPoint] = []
        original = md.entry_points

        def entry_points(**params: Any) -> Any:
            found = original(**params)
            if params.get("group") != ENTRY_POINT_GROUP or not self._added:
                return found
            ours = {ep.value for ep in self._added}
            return [ep for ep in found if ep.value not in ours] + list(self._added)

        monkeypatch.setattr(md, "entry_points", entry_points)

    def add(self, plugin: Any, name: str | None = None, *, distribution: str = "test-plugin", version: str = "0.0.0") -> str:
        """Serve ``plugin`` (a module or object with ``@hookimpl`` functions) as an installed plugin.

        An installed entry point that loads the same module is replaced by this one, so a test of
        your own package does not see it twice.

        Args:
            plugin: the plugin.
            name: its entry-point name (default: the module's or object's name).
            distribution: the distribution name listings show.
            version: the version listings show.

        Returns:
            The entry-point name.
        """
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else f"{type(plugin).__module__}:{type(plugin).__qualname__}@{id(plugin):x}"
        name = name or (plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__name__)
        if any(ep.name == name for ep in self._added):
            raise ValueError(f"a plugin named {name!r} was already added in this test")
        self._added.append(_EntryPoint(name=name, value=module, plugin=plugin, dist=_Distribution(distribution, version)))
        return name

    @property
    def plugins(self) -> list[Any]:
        """The plugins added so far."""
        return [ep.plugin for ep in self._added]

    def registry(self, *, strict: bool = True) -> Registry:
        """A fresh registry with the installed plugins and those added."""
        return Registry(strict=strict)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.plugins)
