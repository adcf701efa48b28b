"""The plugin manager: entry points and in-process plugins -> components by kind and name.

Plugins are found through the ``hjepa_kit`` entry-point group (ours are registered there exactly
like a third party's) and through objects passed in-process (``train(config, plugins=[...])``).
Entry points are loaded one at a time so that one broken third-party plugin is a warning naming it,
not a broken command line; ``HJEPA_STRICT_PLUGINS=1`` makes it an error. A broken built-in is
always an error. pluggy checks the hook implementations; what it refuses is an error naming the
plugin, the nearest hook or argument name and the hook's arguments
(:func:`~hjepa_kit.plugin_checks.hook_problems`). A component without a summary or a parameter's
help text is a warning (an error when strict). A plugin added twice (an installed one passed again
in-process) is registered once. ``HJEPA_TRACE_HOOKS=1`` prints every hook call.
"""

from __future__ import annotations

import importlib.metadata as md
import functools
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
from .plugin_checks import documentation_gaps, hook_problems, spec_names

__all__ = ["Component", "Registry", "Resolved", "PluginWarning", "ENTRY_POINT_GROUP", "BUILTIN_DISTRIBUTION"]

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
    """A plugin problem that leaves everything else working: a third-party plugin that could not be
    loaded, or a component registered without a summary or a parameter's help text. Under strict
    mode (``HJEPA_STRICT_PLUGINS=1``, ``Registry(strict=True)``) each is a :class:`PluginError`."""


class Resolved(dict):
    """What :meth:`Registry.resolve` returns: key path -> ``(component, params)``.

    A ``dict`` that also remembers the configuration file it was resolved from (``source``), so
    that errors raised while its components are built name that file.
    """

    def __init__(self, items: Any = (), source: str = "<config>") -> None:
        super().__init__(items)
        self.source = source


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
            raise PluginError(f"{self.kind} '{self.name}' from plugin {self.origin} failed to build: "
                              f"{type(exc).__name__}: {exc}") from exc


@attrs.define
class _PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool

    @property
    def where(self) -> str:
        """``plugin 'NAME' (DISTRIBUTION VERSION)``, as messages name it."""
        return f"plugin '{self.name}' ({self.distribution} {self.version})".replace(" )", ")")


@attrs.frozen
class _EmptyParams:
    """A component without parameters."""


class Registry:
    """Loads plugins and holds every registered component.

    Args:
        plugins: extra plugin objects or modules carrying ``@hookimpl`` functions, for this
            registry only (``train(..., plugins=...)``).
        entry_points: load plugins from the ``hjepa_kit`` entry-point group.
        strict: a third-party plugin that fails to load, or a component registered without a
            summary or a parameter's help text, is an error rather than a warning (default: the
            ``HJEPA_STRICT_PLUGINS`` environment variable).
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
        self._holds: dict[str, int] = {}  # plugin name -> add_plugin calls that found it registered
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
        Adding a plugin that is already registered (an installed plugin passed again as
        ``train(config, plugins=[module])``) changes nothing: its components are not registered a
        second time and its hooks are not called twice.

        Returns:
            The name it was registered under (the first registration's name for a plugin added again).
        """
        registered = self.pm.get_name(plugin)
        if registered is not None:
            self._holds[registered] = self._holds.get(registered, 0) + 1
            return registered
        name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}@{id(plugin):x}"
        module = getattr(plugin, "__module__", None) or getattr(plugin, "__name__", "")
        dist, version = _distribution_of(module)
        self._register(plugin, name, dist, version, builtin=False)
        return name

    def remove_plugin(self, plugin: Any) -> None:
        """Undo one :meth:`add_plugin`: unregister the plugin object (its components stay registered).

        A plugin that was registered before it was added (from an entry point, or added twice)
        stays registered until every addition is undone.
        """
        name = self.pm.get_name(plugin)
        if name is None:
            return
        if self._holds.get(name, 0) > 0:
            self._holds[name] -= 1
            return
        self.pm.unregister(plugin)

    def _register(self, plugin: Any, name: str, dist: str, version: str, builtin: bool) -> None:
        info = _PluginInfo(name, dist, version, builtin)
        if self.pm.has_plugin(name):
            other = self._info.get(name)
            first = f"{other.distribution} {other.version}" if other else "an earlier registration"
            raise PluginError(f"two plugins are named '{name}': from {first} and from {dist} {version}; rename one entry point")
        try:
            self.pm.register(plugin, name=name)  # refuses an argument a hook does not pass
            self.pm.check_pending()  # refuses a hook name no spec has
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            problems = hook_problems(self.pm, plugin)
            if not problems:  # pluggy's other refusals (a wrapper that does not yield ...)
                raise PluginError(f"{info.where} is invalid: {exc}") from exc
            unknown = any("matches no hook spec" in p for p in problems)
            known = f"; known hooks: {', '.join(sorted(spec_names(self.pm)))}" if unknown else ""
            raise PluginError(f"{info.where}: " + "; ".join(problems) + known) from exc
        except ValueError as exc:  # pluggy: the same object under another name, or a blocked name
            raise PluginError(f"{info.where} cannot be registered: {exc}") from exc
        self._info[name] = info
        self._collect(plugin, info)

    def _collect(self, plugin: Any, info: _PluginInfo) -> None:
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
            raise PluginError(f"{info.where} failed while registering {kind}s: {type(exc).__name__}: {exc}") from exc

    def _add_component(
        self, kind: str, name: str, factory: Callable[..., Any], params: type | None, summary: str, info: _PluginInfo
    ) -> None:
        where = info.where
        if not isinstance(name, str) or not name:
            raise PluginError(f"{where} registered a {kind} without a name")
        if not callable(factory):
            raise PluginError(f"{where}: the factory of {kind} '{name}' is not callable")
        if params is not None and not attrs.has(params):
            raise PluginError(f"{where}: params of {kind} '{name}' must be an attrs class, got {params!r}")
        existing = self.components[kind].get(name)
        if existing is not None:
            # One installed, one passed in-process: most likely the same plugin given both ways.
            both_routes = (existing.distribution == "<in-process>") != (info.distribution == "<in-process>")
            advice = (
                "if it is the installed plugin passed again with plugins=[...], leave it out there (installed plugins "
                "are loaded already); otherwise rename one of the components" if both_routes
                else "uninstall one or rename its component"
            )
            raise PluginError(f"two {kind}s are named '{name}': one from plugin {existing.origin}, one from {where}; {advice}")
        summary = summary or (factory.__doc__ or "").strip().split("\n")[0]
        params = params or _EmptyParams
        self._check_documented(kind, name, summary, params, where)
        self.components[kind][name] = Component(kind=kind, name=name, factory=factory, params=params, summary=summary,
                                                plugin=info.name, distribution=info.distribution, version=info.version)

    def _check_documented(self, kind: str, name: str, summary: str, params: type, where: str) -> None:
        """A component without a summary, or with parameters without help: a warning (an error when strict)."""
        gaps = documentation_gaps(summary, params)
        if not gaps:
            return
        message = f"{where}: {kind} '{name}' has {gaps}; `hjepa plugins` and the docs show these to users"
        if self.strict:
            raise PluginError(message + " [strict mode]")
        self.problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=2)

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

    def resolve(self, config: Any, source: str = "<config>") -> Resolved:
        """Check every component the configuration selects and structure its parameters.

        Args:
            config: a :class:`~hjepa_kit.config.RunConfig`.
            source: the file name used in messages.

        Returns:
            key path (``model.encoder``) -> (component, parameter instance), remembering ``source``
            so that a build error names the file too.

        Raises:
            ConfigError: listing every problem (unknown names, bad parameters) at once.
        """
        problems: list[str] = []
        resolved = Resolved(source=source)
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


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    """Top-level package -> distributions, read once per process (it scans every installed one: seconds)."""
    try:
        return md.packages_distributions()
    except Exception:
        return {}


def _distribution_of(module: str) -> tuple[str, str]:
    """The installed distribution shipping ``module``'s top-level package, if any."""
    top = module.split(".")[0] if module else ""
    dists = _packages_distributions().get(top, [])
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
