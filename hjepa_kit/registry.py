"""The plugin manager: entry points and in-process plugins -> components by kind and name.

Plugins are found through the ``hjepa_kit`` entry-point group (ours are registered there exactly
like a third party's) and through objects passed in-process (``train(config, plugins=[...])``).
Entry points are loaded one at a time so that one broken third-party plugin is a warning naming it,
not a broken command line; ``HJEPA_STRICT_PLUGINS=1`` makes it an error. A broken built-in is
always an error. ``HJEPA_TRACE_HOOKS=1`` prints every hook call.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .contracts import KINDS
from .errors import ConfigError, PluginError, UserError
from .params import structure, suggest

__all__ = ["Component", "Registry", "PluginWarning", "ENTRY_POINT_GROUP", "BUILTIN_DISTRIBUTION"]

ENTRY_POINT_GROUP = "hjepa_kit"
BUILTIN_DISTRIBUTION = "hjepa-kit"

_REGISTER_HOOKS = {
    "dataset": "hjepa_register_datasets",
    "encoder": "hjepa_register_encoders",
    "masker": "hjepa_register_maskers",
    "predictor": "hjepa_register_predictors",
    "loss": "hjepa_register_losses",
    "evaluator": "hjepa_register_evaluators",
    "callback": "hjepa_register_callbacks",
}


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded; everything else still works."""


@attrs.frozen
class Component:
    """A registered component.

    Attributes:
        kind: one of :data:`hjepa_kit.contracts.KINDS`.
        name: the name YAML selects it by.
        factory: ``factory(params, ctx)`` building it.
        params: its attrs parameter class.
        summary: one line for listings.
        plugin: the plugin that registered it (entry-point name or in-process plugin name).
        distribution: the distribution that ships the plugin (``<in-process>`` for objects passed in).
        version: that distribution's version.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type
    summary: str
    plugin: str
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        """``plugin (distribution version)``."""
        version = f" {self.version}" if self.version else ""
        return f"{self.plugin} ({self.distribution}{version})"

    def build(self, params: Any, ctx: Any) -> Any:
        """Call the factory; a failure names the component and its plugin."""
        try:
            return self.factory(params, ctx)
        except UserError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{self.kind} '{self.name}' from plugin {self.origin} failed to build: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


@attrs.define
class _PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool


@attrs.frozen
class _EmptyParams:
    """A component without parameters."""


class Registry:
    """Loads plugins and holds every registered component.

    Args:
        plugins: extra plugin objects or modules carrying ``@hookimpl`` functions, for this
            registry only (``train(..., plugins=...)``).
        entry_points: load plugins from the ``hjepa_kit`` entry-point group.
        strict: a third-party plugin that fails to load is an error rather than a warning
            (default: the ``HJEPA_STRICT_PLUGINS`` environment variable).
    """

    def __init__(self, plugins: Iterable[Any] = (), *, entry_points: bool = True, strict: bool | None = None) -> None:
        self.strict = strict if strict is not None else os.environ.get("HJEPA_STRICT_PLUGINS", "") not in ("", "0")
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("HJEPA_TRACE_HOOKS", "") not in ("", "0"):
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
            self.pm.enable_tracing()
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.problems: list[str] = []
        self._info: dict[str, _PluginInfo] = {}
        if entry_points:
            self._load_entry_points()
        for plugin in plugins:
            self.add_plugin(plugin)

    # --- loading ----------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        found = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))
        for ep in found:
            dist = ep.dist.name if ep.dist else "<unknown>"
            version = ep.dist.version if ep.dist else ""
            builtin = _canonical(dist) == _canonical(BUILTIN_DISTRIBUTION)
            try:
                plugin = ep.load()
            except Exception as exc:
                message = (
                    f"plugin '{ep.name}' from distribution {dist} {version} failed to import "
                    f"({ep.value}): {type(exc).__name__}: {exc}"
                )
                if builtin or self.strict:
                    raise PluginError(message + ("" if builtin else " [HJEPA_STRICT_PLUGINS is set]")) from exc
                self.problems.append(message)
                warnings.warn(message + "; it is skipped (set HJEPA_STRICT_PLUGINS=1 to make this an error)", PluginWarning, stacklevel=3)
                continue
            self._register(plugin, ep.name, dist, version, builtin)

    def add_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register an in-process plugin (an object or module with ``@hookimpl`` functions).

        Its components are added at once; a callback object's lifecycle hooks run from now on.

        Returns:
            The name it was registered under.
        """
        name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}@{id(plugin):x}"
        module = getattr(plugin, "__module__", None) or getattr(plugin, "__name__", "")
        dist, version = _distribution_of(module)
        self._register(plugin, name, dist, version, builtin=False)
        return name

    def remove_plugin(self, plugin: Any) -> None:
        """Unregister a plugin object (its components stay registered)."""
        if self.pm.is_registered(plugin):
            self.pm.unregister(plugin)

    def _register(self, plugin: Any, name: str, dist: str, version: str, builtin: bool) -> None:
        if self.pm.has_plugin(name):
            other = self._info.get(name)
            first = f"{other.distribution} {other.version}" if other else "an earlier registration"
            raise PluginError(f"two plugins are named '{name}': from {first} and from {dist} {version}; rename one entry point")
        unknown = self._unknown_hooks(plugin, name)
        if unknown:
            known = ", ".join(sorted(h for h in dir(self.pm.hook) if h.startswith("hjepa_")))
            raise PluginError(
                f"plugin '{name}' ({dist} {version}) implements {', '.join(unknown)}, which matches no hook "
                f"spec{suggest(unknown[0], dir(self.pm.hook))}; known hooks: {known}"
            )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}' ({dist} {version}) is invalid: {exc}") from exc
        self._info[name] = _PluginInfo(name, dist, version, builtin)
        self._collect(plugin, name)

    def _unknown_hooks(self, plugin: Any, name: str) -> list[str]:
        unknown = []
        for attr in dir(plugin):
            try:
                opts = self.pm.parse_hookimpl_opts(plugin, attr)
            except Exception:
                opts = None
            if opts is not None:
                hook_name = opts.get("specname") or attr
                caller = getattr(self.pm.hook, hook_name, None)
                if caller is None or not caller.has_spec():
                    unknown.append(hook_name)
        return unknown

    def _collect(self, plugin: Any, plugin_name: str) -> None:
        info = self._info[plugin_name]
        for kind, hook_name in _REGISTER_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    self._call_register(impl.function, kind, info)

    def _call_register(self, function: Callable[..., Any], kind: str, info: _PluginInfo) -> None:
        def register(name: str, factory: Callable[..., Any], *, params: type | None = None, summary: str = "", **_future: Any) -> None:
            self._add_component(kind, name, factory, params, summary, info)

        try:
            function(register=register)
        except UserError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin '{info.name}' ({info.distribution} {info.version}) failed while registering {kind}s: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _add_component(
        self, kind: str, name: str, factory: Callable[..., Any], params: type | None, summary: str, info: _PluginInfo
    ) -> None:
        where = f"plugin '{info.name}' ({info.distribution} {info.version})"
        if not isinstance(name, str) or not name:
            raise PluginError(f"{where} registered a {kind} without a name")
        if not callable(factory):
            raise PluginError(f"{where}: the factory of {kind} '{name}' is not callable")
        if params is not None and not attrs.has(params):
            raise PluginError(f"{where}: params of {kind} '{name}' must be an attrs class, got {params!r}")
        existing = self.components[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"two {kind}s are named '{name}': one from plugin {existing.origin}, one from {where}; "
                "uninstall one or rename its component"
            )
        self.components[kind][name] = Component(
            kind=kind,
            name=name,
            factory=factory,
            params=params or _EmptyParams,
            summary=summary or (factory.__doc__ or "").strip().split("\n")[0],
            plugin=info.name,
            distribution=info.distribution,
            version=info.version,
        )

    # --- lookup -----------------------------------------------------------------------------

    @property
    def hook(self) -> Any:
        """The pluggy hook relay (``registry.hook.hjepa_step_end(...)``)."""
        return self.pm.hook

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self.components[kind])

    def find(self, name: str) -> list[Component]:
        """Every component called ``name``, of any kind."""
        return [c for kind in KINDS for n, c in self.components[kind].items() if n == name]

    def get(self, kind: str, name: str, *, where: str = "", source: str = "") -> Component:
        """The component ``name`` of ``kind``.

        Raises:
            ConfigError: naming ``source`` and ``where`` (the key path), the closest names and all
                available names with their plugins.
        """
        if kind not in self.components:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        try:
            return self.components[kind][name]
        except KeyError:
            pass
        raise ConfigError(self.unknown_name_message(kind, name, where), source or "<config>")

    def unknown_name_message(self, kind: str, name: str, where: str = "") -> str:
        """The message for an unknown component name: did-you-mean, then everything available."""
        available = self.components[kind]
        listing = ", ".join(f"{n} [{c.plugin}]" for n, c in sorted(available.items())) or "none are installed"
        key = f"{where}.name: " if where else ""
        other_kinds = [c.kind for c in self.find(name)]
        hint = f"; '{name}' is a {' and '.join(other_kinds)}, not a {kind}" if other_kinds else ""
        return f"{key}unknown {kind} {name!r}{suggest(name, available)}{hint}; available: {listing}"

    def resolve(self, config: Any, source: str = "<config>") -> dict[str, tuple[Component, Any]]:
        """Check every component the configuration selects and structure its parameters.

        Args:
            config: a :class:`~hjepa_kit.config.RunConfig`.
            source: the file name used in messages.

        Returns:
            key path (``model.encoder``) -> (component, parameter instance).

        Raises:
            ConfigError: listing every problem (unknown names, bad parameters) at once.
        """
        problems: list[str] = []
        resolved: dict[str, tuple[Component, Any]] = {}
        for kind, path, spec in config.component_specs():
            component = self.components[kind].get(spec.name)
            if component is None:
                problems.append(self.unknown_name_message(kind, spec.name, path))
                continue
            params = structure(component.params, spec.params, f"{path}.params", problems)
            if params is not None:
                resolved[path] = (component, params)
        if problems:
            raise ConfigError(problems, source)
        return resolved

    def plugin_info(self) -> list[dict[str, Any]]:
        """Every loaded plugin with its distribution and version."""
        return [attrs.asdict(info) for info in self._info.values()]


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _distribution_of(module: str) -> tuple[str, str]:
    """The installed distribution shipping ``module``'s top-level package, if any."""
    top = module.split(".")[0] if module else ""
    try:
        dists = md.packages_distributions().get(top, [])
    except Exception:
        dists = []
    if dists:
        try:
            return dists[0], md.version(dists[0])
        except md.PackageNotFoundError:
            return dists[0], ""
    return "<in-process>", ""


def component_table(registry: Registry) -> list[Mapping[str, Any]]:
    """Rows for ``hjepa plugins``: kind, name, plugin, distribution, version, summary."""
    rows = []
    for kind in KINDS:
        for name in registry.names(kind):
            c = registry.components[kind][name]
            rows.append(
                {"kind": kind, "name": name, "plugin": c.plugin, "distribution": c.distribution, "version": c.version, "summary": c.summary}
            )
    return rows
