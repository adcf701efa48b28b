"""A griffe extension (mkdocs.yml: the mkdocstrings ``extensions`` option) for the package's docstrings.

The docstrings are written for ``help()`` and Sphinx habits: roles such as
``:class:`~hjepa_kit.contracts.Masks``` and ``text::`` before a literal block. Markdown would show
both literally, and a role at the start of a ``Returns:`` entry ("A :class:`X`: ...") would be
misread as a type. Before the docstrings are parsed, this extension

- turns each role into a cross-reference (``<autoref optional>``, resolved by mkdocs-autorefs where
  the target is documented on the site, plain code otherwise), resolving short names the way
  Python would from the documented object: its own members, its class, its module, then the
  package's public names;
- turns a ``::`` that ends a paragraph into ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj):`(~?)([\w.]+)(?:\(\))?`")
_LITERAL_INTRO = re.compile(r"::[ \t]*\n(?=[ \t]*\n)")


def _lookup(scope: Any, dotted: str) -> str | None:
    """The path of ``dotted`` looked up in ``scope``'s members, following aliases."""
    node = scope
    for part in dotted.split("."):
        members = getattr(node, "members", None) or {}
        if part not in members:
            return None
        node = members[part]
    if isinstance(node, griffe.Alias):
        return node.target_path
    return node.path


def _resolve(obj: Any, target: str) -> str | None:
    if target.startswith("hjepa_kit"):
        return target
    scopes = [obj]
    if not isinstance(obj, (griffe.Module, griffe.Class)) and obj.parent is not None:
        scopes.append(obj.parent)  # a method's class, a function's module
    module = obj.module if not isinstance(obj, griffe.Module) else obj
    scopes.append(module)
    package = module.package
    scopes.append(package)
    for scope in scopes:
        found = _lookup(scope, target)
        if found is not None:
            return found
    for submodule in package.modules.values():  # a public name of any module of the package
        found = _lookup(submodule, target)
        if found is not None:
            return found
    return None


class SphinxRolesToAutorefs(griffe.Extension):
    """Rewrite Sphinx roles and reST literal-block markers in docstrings before they are parsed."""

    def on_object(self, *, obj: Any, loader: Any, **kwargs: Any) -> None:
        if isinstance(obj, griffe.Alias) or obj.docstring is None:
            return
        text = obj.docstring.value

        def replace(match: re.Match[str]) -> str:
            tilde, target = match.group(1), match.group(2)
            shown = target.rsplit(".", 1)[-1] if tilde else target
            try:
                identifier = _resolve(obj, target)
            except Exception:  # an alias that does not resolve: show the name only
                identifier = None
            code = f"<code>{shown}</code>"
            if identifier is None:
                return f"`{shown}`"
            return f'<autoref identifier="{identifier}" optional>{code}</autoref>'

        text = _ROLE.sub(replace, text)
        obj.docstring.value = _LITERAL_INTRO.sub(":\n", text)
