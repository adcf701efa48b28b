"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

``<!-- generated: NAME -->`` markers in a page are replaced by tables generated from the code
(``hjepa_kit.docgen``): the configuration reference, the built-in plugins, the CLI reference and
the hook summary. The documentation therefore cannot drift from the code. (The package's
docstrings are adapted for Markdown by the griffe extension in ``docs/_griffe_roles.py``.)
"""

from __future__ import annotations

from typing import Any

from hjepa_kit import docgen

_cache: dict[str, str] = {}


def on_config(config: Any, **kwargs: Any) -> Any:
    """Generate each table once per build (``mkdocs serve`` rebuilds see code changes)."""
    _cache.clear()
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Replace the generated-content markers of a page."""
    return docgen.render_markers(markdown, _cache)
