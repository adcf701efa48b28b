"""The plugin author's pages are enough to write a plugin: their code works and the contracts show their calls."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from hjepa_kit import contracts
from hjepa_kit.registry import Registry
from hjepa_kit.testing import check_component

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDE = DOCS / "writing-a-plugin.md"


def _plugin_blocks() -> list[str]:
    """The complete plugin modules shown on 'Writing a plugin' (code blocks with a registration hook)."""
    blocks = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M)
    return [b for b in blocks if "def hjepa_register_" in b]


def test_the_guide_shows_an_evaluator_and_a_callback():
    shown = " ".join(_plugin_blocks())
    assert "def hjepa_register_evaluators" in shown and "def hjepa_register_callbacks" in shown


@pytest.mark.parametrize("index", range(len(_plugin_blocks())))
def test_each_plugin_on_the_guide_registers_strictly_and_meets_its_contract(index, tmp_path):
    module = types.ModuleType(f"guide_plugin_{index}")
    exec(compile(_plugin_blocks()[index], f"{GUIDE.name}[{index}]", "exec"), module.__dict__)
    registry = Registry(entry_points=False, plugins=[module], strict=True)  # summaries and help texts present
    found = [(kind, name) for kind, names in registry.components.items() for name in names]
    assert found, "the block registers no component"
    for kind, name in found:
        check_component(kind, name, registry=registry)


CALLED = ["Encoder", "Masker", "Predictor", "Loss", "Evaluator"]


def _args_documented(doc: str) -> set[str]:
    section = doc.split("Args:", 1)[1].split("Returns:", 1)[0] if "Args:" in doc else ""
    return set(re.findall(r"^\s{4}(\w+):", section, flags=re.M))


@pytest.mark.parametrize("name", CALLED)
def test_each_contract_documents_its_call(name):
    call = getattr(contracts, name).__call__
    doc = inspect.getdoc(call) or ""
    arguments = [p for p in inspect.signature(call).parameters if p != "self"]
    missing = set(arguments) - _args_documented(doc)
    assert not missing, f"{name}.__call__ does not document {sorted(missing)}"
    assert re.search(r"``\((B|N_\w+), ", doc), f"{name}.__call__ gives no shapes"
    if name != "Encoder":  # the encoder's return value is its documented EncoderOutput
        assert "Returns:" in doc, f"{name}.__call__ does not say what it returns"


def test_the_hook_reference_shows_the_contracts_calls():
    page = (DOCS / "hooks.md").read_text()
    block = page.split("::: hjepa_kit.contracts", 1)[1]
    filters = re.search(r"filters: \[(.*)\]", block)
    assert filters and '"^__call__$"' in filters.group(1), "docs/hooks.md hides the contracts' __call__"
    for name in CALLED:
        assert f"- {name}\n" in block


def test_the_evaluator_contract_says_how_figures_and_representations_are_named():
    doc = inspect.getdoc(contracts.Evaluator) or ""
    assert "<prefix>/<figure>" in doc and "report.md" in doc and "online/" in doc
    assert "``encoder``" in doc and "``level0``" in doc and "evaluation.representation" in doc
