"""Markdown building blocks of the generated reference pages (:mod:`hjepa_kit.docgen`).

Escaping for table cells, inline code spans, YAML-style values, tables, docstring first paragraphs
without Sphinx roles, and the parameter table of an attrs parameter class (read through
:func:`hjepa_kit.params.describe`).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from .params import describe

__all__ = [
    "escape_cell",
    "code_span",
    "yaml_value",
    "markdown_table",
    "params_table_markdown",
    "first_paragraph",
    "strip_roles",
]

_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def escape_cell(text: str) -> str:
    """Make ``text`` safe inside a Markdown table cell; code spans are kept as they are.

    Outside code spans, ``|`` would end the cell, ``<name>`` would be read as an HTML tag and
    ``*`` could start emphasis, so they are escaped.
    """
    out = []
    position = 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_escape_plain(text[position : match.start()]))
        out.append(match.group(0))
        position = match.end()
    out.append(_escape_plain(text[position:]))
    return "".join(out).replace("\n", " ")


def _escape_plain(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "&#124;")
        .replace("*", "\\*")
    )


def code_span(text: str) -> str:
    """``text`` as an inline code span (any backticks inside are handled)."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def yaml_value(value: Any) -> str:
    """A default value as it would be written in YAML (flow style): ``null``, ``true``, ``[0.3, 1.0]``."""
    return json.dumps(value, ensure_ascii=False)


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A Markdown table of ``rows`` under ``header`` (cells are used as given: escape them first)."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def params_table_markdown(
    cls: type, prefix: str = "", cells: Callable[[str], tuple[str, str] | None] | None = None
) -> str:
    """The parameter table of an attrs parameter class: key, type, default, allowed values, help.

    Args:
        cls: an attrs class whose fields are declared with :func:`hjepa_kit.params.param`.
        prefix: prepended to every key (``model.encoder.params.``).
        cells: field name -> ``(type cell, default cell)`` to show instead of the generated ones,
            or ``None`` to keep them (used for sub-sections and component selections).

    Returns:
        A Markdown table, or a sentence saying the class has no parameters.
    """
    rows = describe(cls)
    if not rows:
        return "*No parameters.*"
    table_rows = []
    for row in rows:
        type_cell = code_span(row.type)
        default_cell = "*required*" if row.required else code_span(yaml_value(row.default))
        override = cells(row.name) if cells else None
        if override is not None:
            type_cell, default_cell = override
        table_rows.append(
            (
                code_span(prefix + row.name),
                type_cell,
                default_cell,
                escape_cell(row.allowed) if row.allowed else "",
                escape_cell(row.help),
            )
        )
    return markdown_table(("Key", "Type", "Default", "Allowed", "Description"), table_rows)


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj):`~?([^`]+)`")


def strip_roles(text: str) -> str:
    """Turn Sphinx roles (``:class:`~a.b.C```) into plain code spans (`` `C` ``)."""

    def replace(match: re.Match[str]) -> str:
        target = match.group(1)
        shown = target.rsplit(".", 1)[-1] if match.group(0).split("`")[1].startswith("~") else target
        return f"`{shown}`"

    return _ROLE.sub(replace, text)
