"""A built-in plugin imports only what a third-party plugin may import.

That is the public face (``hjepa_kit``, ``contracts``, ``hookspecs``, ``params``, ``errors``,
``config``), the helper layer for plugin authors (``hjepa_kit.helpers``) and other plugins. Every
import of every ``plugins/**/*.py`` is read with ``ast`` (those under ``if TYPE_CHECKING:`` and
inside functions too), relative ones resolved against ``hjepa_kit.plugins``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"

#: The modules of hjepa_kit a plugin may import.
PUBLIC = {
    "hjepa_kit", "hjepa_kit.contracts", "hjepa_kit.hookspecs", "hjepa_kit.params", "hjepa_kit.errors",
    "hjepa_kit.config", "hjepa_kit.helpers",
}


def _package_of(path: Path) -> str:
    """``hjepa_kit.plugins[.sub]``: the package a plugin module's relative imports start from."""
    parts = path.relative_to(PLUGINS).parts[:-1]
    return ".".join(["hjepa_kit", "plugins", *parts])


def _is_core_module(name: str) -> bool:
    """Whether ``hjepa_kit.a.b`` is a module or package of the core (``hjepa_kit/a/b.py``, ``hjepa_kit/a/b/``)."""
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``source``, a module of ``package``.

    ``from M import a`` counts as M, and as ``M.a`` too when that is a module (``from hjepa_kit
    import training``).
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if _is_core_module(f"{module}.{a.name}")]
    return found


def forbidden(module: str) -> bool:
    """Whether a plugin may not import ``module``: a core module outside the public face and the helpers."""
    if not module.startswith("hjepa_kit.") or module in PUBLIC:
        return False  # not ours (torch, numpy ...), or public
    return not (module == "hjepa_kit.plugins" or module.startswith("hjepa_kit.plugins."))  # another plugin is fine


PLUGIN_FILES = sorted(PLUGINS.rglob("*.py"))


def test_the_plugins_are_found():
    names = {p.name for p in PLUGIN_FILES}
    assert {"vit.py", "knn.py", "image_folder.py", "__init__.py"} <= names


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_a_built_in_plugin_imports_only_the_public_face_and_the_helpers(path):
    modules = imported_modules(path.read_text(encoding="utf-8"), _package_of(path))
    bad = [f"{path.relative_to(REPO)}:{line}: imports {module}" for line, module in modules if forbidden(module)]
    assert not bad, ("a plugin may import only " + ", ".join(sorted(PUBLIC)) + " and other plugins; what it needs "
                     "belongs in hjepa_kit/helpers.py:\n" + "\n".join(bad))


@pytest.mark.parametrize(("code", "caught"), [
    ("import hjepa_kit.training.trainer", True),
    ("from hjepa_kit.evaluation.metrics import grade", True),
    ("from hjepa_kit import training", True),
    ("from ... import threads", True),  # from plugins/datasets/: hjepa_kit.threads
    ("if TYPE_CHECKING:\n    from hjepa_kit.evaluation.exporting import ExportResult", True),
    ("def f():\n    from hjepa_kit.data.images import decode_square", True),
    ("from .. import knn", False),  # hjepa_kit.plugins.knn
    ("from .archives import safe_unpickle", False),
    ("from hjepa_kit import hookimpl", False),
    ("from hjepa_kit.helpers import decode_image", False),
    ("import torch", False),
])
def test_the_check_catches_each_way_of_importing_the_core(code, caught):
    modules = [m for _, m in imported_modules(code, "hjepa_kit.plugins.datasets")]
    assert any(forbidden(m) for m in modules) is caught, modules
