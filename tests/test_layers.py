"""Training and evaluation import each other in one direction only: training may use evaluation, never back.

Every import of every ``hjepa_kit/evaluation/*.py`` is read with ``ast`` (those inside functions and
under ``if TYPE_CHECKING:`` too), relative ones resolved, and so is every import of the core modules
they reach in turn: none may lead to ``hjepa_kit.training``. What both sides need sits below them
(the checkpoint file in ``hjepa_kit/checkpoint_file.py``, the compile decision in ``hjepa_kit/runtime.py``).
The package root (``hjepa_kit/__init__.py``) is not followed: its public names load lazily, on use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "hjepa_kit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in CORE.rglob("*.py") if "plugins" not in p.relative_to(CORE).parts}


def imported_modules(source: str, package: str) -> set[str]:
    """Every ``hjepa_kit`` module ``source`` (a module of ``package``) imports, as an absolute name.

    ``from M import a`` counts as ``M.a`` when that is a module (``from hjepa_kit import training``),
    else as ``M``; ``import M.a.b`` counts as ``M.a.b``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                module = ".".join(base[: len(base) - (node.level - 1)] + ([module] if module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES or (CORE.parent / sub.replace(".", "/")).is_dir() else module)
    return {name for name in found if name == "hjepa_kit" or name.startswith("hjepa_kit.")}


def _imports_of(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return imported_modules(path.read_text(encoding="utf-8"), package)


def _is_training(name: str) -> bool:
    return name == "hjepa_kit.training" or name.startswith("hjepa_kit.training.")


EVALUATION = sorted(name for name in MODULES if name.startswith("hjepa_kit.evaluation."))


def test_the_evaluation_modules_are_found():
    assert {"hjepa_kit.evaluation.run", "hjepa_kit.evaluation.pretrained", "hjepa_kit.evaluation.features"} <= set(EVALUATION)


@pytest.mark.parametrize("start", EVALUATION)
def test_evaluation_never_reaches_training(start):
    """No chain of imports leads from an evaluation module to ``hjepa_kit.training`` (the chain is shown)."""
    came_from: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        name = todo.pop()
        for imported in _imports_of(name):
            if _is_training(imported):
                chain = [imported, name]
                while came_from[chain[-1]]:
                    chain.append(came_from[chain[-1]])
                pytest.fail("evaluation imports training (training may import evaluation, not back): "
                            + " -> ".join(reversed(chain)))
            while imported not in MODULES and "." in imported:  # hjepa_kit.x.name -> its module
                imported = imported.rsplit(".", 1)[0]
            if imported in MODULES and imported != "hjepa_kit" and imported not in came_from:
                came_from[imported] = name
                todo.append(imported)


@pytest.mark.parametrize(("code", "caught"), [
    ("from ..training.checkpoint import load_checkpoint", True),
    ("from .. import training", True),
    ("from hjepa_kit.training import compiling", True),
    ("import hjepa_kit.training.trainer", True),
    ("if TYPE_CHECKING:\n    from ..training.state import TrainResult", True),
    ("def f():\n    from ..training.checkpoint import find_latest", True),
    ("from ..checkpoint_file import load_checkpoint", False),
    ("from .features import feature_sets", False),
    ("from ..runtime import should_compile", False),
])
def test_the_check_catches_each_way_of_importing_training(code, caught):
    modules = imported_modules(code, "hjepa_kit.evaluation")
    assert any(_is_training(m) for m in modules) is caught, modules


def test_no_core_module_imports_the_plugin_helper_layer():
    """``hjepa_kit.helpers`` is the plugins' face of the core: it re-exports, and the core imports the
    modules it re-exports from (``atomic``, ``data.images``, ``evaluation.metrics`` ...), never the face,
    so the helper layer sits above ``training`` and ``evaluation`` and no folder imports it back."""
    users = sorted(name for name in MODULES if name != "hjepa_kit.helpers" and "hjepa_kit.helpers" in _imports_of(name))
    assert not users, f"core modules importing hjepa_kit.helpers (import what it re-exports instead): {users}"
    assert {"hjepa_kit.atomic", "hjepa_kit.evaluation.representation"} <= set(MODULES)
