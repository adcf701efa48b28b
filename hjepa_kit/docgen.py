"""Reference pages generated from the code, so the documentation cannot drift from it.

Each function returns Markdown. The documentation build (``docs/_hooks.py``) replaces markers such
as ``<!-- generated: config-reference -->`` in the pages with their output:

- ``<!-- generated: config-reference -->``: :func:`config_reference_markdown`;
- ``<!-- generated: plugin-reference -->``: :func:`plugin_reference_markdown`;
- ``<!-- generated: cli-reference -->``: :func:`cli_reference_markdown`;
- ``<!-- generated: hook-summary -->``: :func:`hook_summary_markdown`;
- ``<!-- generated: component-summary -->``: :func:`component_summary_markdown`.

The tables read the attrs parameter classes through :func:`hjepa_kit.params.describe`, the
registered components through :class:`hjepa_kit.registry.Registry`, and the command line through
:func:`hjepa_kit.cli.build_parser`. The Markdown building blocks (escaping, code spans, tables, the
parameter table of a class) are in :mod:`hjepa_kit.doctables`. This module imports no built-in
plugin: the plugin reference lists whatever the registry finds through the ``hjepa_kit``
entry-point group.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable
from typing import Any

import attrs

from . import hookspecs
from .contracts import KINDS
from .doctables import (
    code_span,
    escape_cell,
    first_paragraph,
    markdown_table,
    params_table_markdown,
    strip_roles,
    yaml_value,
)
from .params import describe

__all__ = [
    "MARKERS",
    "KIND_KEYS",
    "config_reference_markdown",
    "plugin_reference_markdown",
    "cli_reference_markdown",
    "hook_summary_markdown",
    "component_summary_markdown",
    "params_table_markdown",
    "hook_names",
    "config_sections",
    "builtin_components",
    "render_markers",
]

#: Where a run's configuration selects a component of each kind.
KIND_KEYS: dict[str, str] = {
    "dataset": "data.dataset",
    "encoder": "model.encoder",
    "masker": "model.masker",
    "predictor": "model.predictor",
    "loss": "loss",
    "evaluator": "evaluation.evaluators[i], evaluation.online",
    "callback": "callbacks[i]",
}

def config_sections() -> list[tuple[str, type]]:
    """Every section of a run configuration as ``(key path, attrs class)``, depth first.

    The top level is ``("", RunConfig)``; a field whose type is an attrs class (other than a
    component selection) is a section of its own (``data``, ``data.augmentation`` ...).
    """
    from typing import get_type_hints

    from .config import ComponentSpec, RunConfig

    sections: list[tuple[str, type]] = []

    def walk(path: str, cls: type) -> None:
        sections.append((path, cls))
        hints = get_type_hints(cls)
        for field in attrs.fields(cls):
            tp = hints[field.name]
            if attrs.has(tp) and tp is not ComponentSpec:
                walk(f"{path}.{field.name}" if path else field.name, tp)

    walk("", RunConfig)
    return sections


def config_reference_markdown() -> str:
    """Every section and key of a run configuration, from the attrs classes of :mod:`hjepa_kit.config`.

    Returns:
        Markdown with one heading per section (``data``, ``data.augmentation`` ...) with the class's
        description and a table of its keys, types, defaults, allowed values and help texts.
    """
    from typing import get_args, get_origin, get_type_hints

    from .config import ComponentSpec

    def cells_for(cls: type, path: str) -> Callable[[str], tuple[str, str] | None]:
        hints = get_type_hints(cls)
        defaults = {row.name: row.default for row in describe(cls)}

        def cells(name: str) -> tuple[str, str] | None:
            tp = hints[name]
            inner = [a for a in get_args(tp) if a is not type(None)]
            if tp is ComponentSpec or (inner == [ComponentSpec] and get_origin(tp) is not list):
                kind = "[component](#component-selection)" + (" or `null`" if inner else "")
                default = defaults[name]
                shown = "`null`" if default is None else code_span(_spec_text(default))
                return kind, shown
            if get_origin(tp) is list and get_args(tp) == (ComponentSpec,):
                items = ", ".join(_spec_text(item) for item in defaults[name])
                return "list of [components](#component-selection)", code_span(f"[{items}]")
            if attrs.has(tp):
                key = f"{path}.{name}" if path else name
                return f"[section](#{_section_anchor(key)})", "see below"
            return None

        return cells

    parts = []
    for path, cls in config_sections():
        title = "Top level" if not path else code_span(path)
        parts.append(f"### {title} {{#{_section_anchor(path)}}}\n")
        parts.append(f"{strip_roles(first_paragraph(cls))} (`{cls.__module__}.{cls.__name__}`)\n")
        parts.append(params_table_markdown(cls, prefix=f"{path}." if path else "", cells=cells_for(cls, path)))
        parts.append("")
    parts.append(f"### Component selection {{#component-selection}}\n")
    parts.append(
        "Every key whose type is `ComponentSpec` selects a plugin component by name. It is written "
        "either as a mapping or, without parameters, as the bare name:\n\n"
        "```yaml\nmodel:\n  encoder: {name: vit_tiny, params: {patch_size: 4}}\n  masker: multiblock\n```\n"
    )
    parts.append(params_table_markdown(ComponentSpec))
    parts.append(
        "\nThe keys allowed under `params` are those of the chosen component: see "
        "[Built-in plugins](plugins.md) or run `hjepa plugins --params NAME`.\n"
    )
    return "\n".join(parts)


def _section_anchor(path: str) -> str:
    return "top-level" if not path else "config-" + path.replace(".", "-")


def _spec_text(spec: Any) -> str:
    """A component selection's default written as YAML: ``vit_tiny`` or ``{name: vit_tiny, params: {...}}``."""
    if not spec.get("params"):
        return str(spec["name"])
    params = ", ".join(f"{k}: {yaml_value(v)}" for k, v in spec["params"].items())
    return f"{{name: {spec['name']}, params: {{{params}}}}}"


def builtin_components(registry: Any = None) -> list[Any]:
    """The components registered by hjepa-kit's own distribution, in kind order, then by name.

    Args:
        registry: a :class:`~hjepa_kit.registry.Registry`; by default a fresh one (entry points).
    """
    from .registry import BUILTIN_DISTRIBUTION, Registry

    registry = registry if registry is not None else Registry()
    found = []
    for kind in KINDS:
        for name in registry.names(kind):
            component = registry.components[kind][name]
            if component.distribution.lower().replace("_", "-") == BUILTIN_DISTRIBUTION:
                found.append(component)
    return found


def plugin_reference_markdown(registry: Any = None, *, builtin_only: bool = True) -> str:
    """Every registered component, grouped by kind, with its summary and parameter table.

    Args:
        registry: a :class:`~hjepa_kit.registry.Registry`; by default a fresh one, which loads
            every plugin of the ``hjepa_kit`` entry-point group.
        builtin_only: list only the components hjepa-kit ships (its own distribution).

    Returns:
        Markdown with one ``##`` heading per kind and one ``###`` heading per component.
    """
    from .registry import Registry

    registry = registry if registry is not None else Registry()
    if builtin_only:
        components = builtin_components(registry)
    else:
        components = [registry.components[k][n] for k in KINDS for n in registry.names(k)]
    parts = []
    for kind in KINDS:
        of_kind = [c for c in components if c.kind == kind]
        if not of_kind:
            continue
        key = KIND_KEYS[kind]
        plural = _plural(kind)
        parts.append(f"## {plural.capitalize()} {{#{plural}}}\n")
        parts.append(
            f"Selected at `{key}`. "
            + ", ".join(f"[`{c.name}`](#{_anchor(kind, c.name)})" for c in of_kind)
            + ".\n"
        )
        for c in of_kind:
            parts.append(f"### `{c.name}` {{#{_anchor(kind, c.name)}}}\n")
            parts.append(f"{escape_cell(c.summary)}\n")
            parts.append(
                f"*{kind}* from plugin `{c.plugin}` ({c.distribution} {c.version}); "
                f"parameter class `{c.params.__module__}.{c.params.__qualname__}`.\n"
            )
            prefix = _params_prefix(kind)
            parts.append(params_table_markdown(c.params, prefix=prefix))
            parts.append("")
    return "\n".join(parts)


def component_summary_markdown(registry: Any = None) -> str:
    """A table of the built-in components' names by kind, each linked to its section of the plugin page."""
    from .registry import Registry

    registry = registry if registry is not None else Registry()
    components = builtin_components(registry)
    rows = []
    for kind in KINDS:
        names = [c.name for c in components if c.kind == kind]
        if names:
            links = ", ".join(f"[`{n}`](plugins.md#{_anchor(kind, n)})" for n in names)
            rows.append((kind, f"`{KIND_KEYS[kind].split(',')[0]}`", links))
    return markdown_table(("Kind", "Selected at", "Built-in components"), rows)


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _params_prefix(kind: str) -> str:
    key = KIND_KEYS[kind]
    return f"{key}.params." if "," not in key and "[" not in key else ""


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-{name}".replace("_", "-")


def hook_names() -> list[str]:
    """Names of every hook spec in :mod:`hjepa_kit.hookspecs`, in source order."""
    marker = f"{hookspecs.PROJECT}_spec"
    found = [
        (inspect.getsourcelines(obj)[1], name)
        for name, obj in vars(hookspecs).items()
        if callable(obj) and hasattr(obj, marker)
    ]
    return [name for _, name in sorted(found)]


def hook_summary_markdown() -> str:
    """A table of every hook: name, signature and the first line of its description."""
    rows = []
    for name in hook_names():
        function = getattr(hookspecs, name)
        signature = ", ".join(inspect.signature(function).parameters)
        group = "registration" if name.startswith("hjepa_register_") else "lifecycle"
        rows.append(
            (
                f"[`{name}`](#hjepa_kit.hookspecs.{name})",
                code_span(f"({signature})"),
                group,
                escape_cell(strip_roles(first_paragraph(function))),
            )
        )
    return markdown_table(("Hook", "Arguments", "Group", "When / what"), rows)


def _option_row(action: argparse.Action) -> tuple[str, str, str, str]:
    flags = ", ".join(action.option_strings) if action.option_strings else action.dest
    if action.nargs == 0:
        value = ""
    elif action.choices:
        value = " \\| ".join(code_span(str(c)) for c in action.choices)
    else:
        value = code_span(action.metavar or action.dest.upper())
        if action.nargs in ("+", "*"):
            value += " ..."
    default = action.default
    if default in (None, False, argparse.SUPPRESS) or default == []:
        shown = ""
    else:
        shown = code_span(" ".join(default) if isinstance(default, list) else str(default))
    help_text = (action.help or "") % {"default": default, "prog": ""} if action.help else ""
    help_cell = escape_cell(help_text)
    if getattr(action, "required", False):
        help_cell = "**required**; " + help_cell
    if isinstance(action, argparse._AppendAction) and "repeatable" not in help_text:
        help_cell += " (repeatable)"
    return code_span(flags), value, shown, help_cell


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def cli_reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """Every ``hjepa`` command with its usage and options, from :func:`hjepa_kit.cli.build_parser`.

    Args:
        parser: the parser to describe (default: ``hjepa``'s own).
    """
    if parser is None:
        from .cli import build_parser

        parser = build_parser()
    parts: list[str] = []

    def emit(parser: argparse.ArgumentParser, name: str, summary: str, level: int) -> None:
        subs = _subcommands(parser)
        parts.append(f"{'#' * level} `{name}` {{#{name.replace(' ', '-')}}}\n")
        description = parser.description or summary
        if description:
            parts.append(escape_cell(description[0].upper() + description[1:]) + "\n")
        usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
        parts.append(f"```text\n{usage}\n```\n")
        rows = [
            _option_row(a)
            for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if rows:
            parts.append(markdown_table(("Option", "Value", "Default", "Description"), rows))
            parts.append("")
        for sub_name, sub_help, sub in subs:
            emit(sub, f"{name} {sub_name}", sub_help, min(level + 1, 4))

    emit(parser, parser.prog, "", 2)
    return "\n".join(parts)


#: Marker comment -> function producing its Markdown.
MARKERS: dict[str, Callable[[], str]] = {
    "config-reference": config_reference_markdown,
    "plugin-reference": plugin_reference_markdown,
    "cli-reference": cli_reference_markdown,
    "hook-summary": hook_summary_markdown,
    "component-summary": component_summary_markdown,
}

_MARKER = re.compile(r"<!--\s*generated:\s*([a-z-]+)\s*-->")


def render_markers(markdown: str, cache: dict[str, str] | None = None) -> str:
    """Replace every ``<!-- generated: NAME -->`` marker in ``markdown`` with its generated text.

    Args:
        markdown: a page's Markdown.
        cache: name -> text already generated (filled in), so a build generates each once.

    Raises:
        KeyError: a marker names no generator (the message lists the known names).
    """
    cache = cache if cache is not None else {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in MARKERS:
            raise KeyError(f"unknown generated-content marker {name!r}; known: {', '.join(MARKERS)}")
        if name not in cache:
            cache[name] = MARKERS[name]()
        return cache[name]

    return _MARKER.sub(replace, markdown)
