"""The documentation is complete: every hook, component, parameter and configuration key is described.

The reference pages are generated from these descriptions (hjepa_kit/docgen.py), so a missing help
text or an undocumented hook argument would be a hole in the site; these tests find it first.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import yaml

from hjepa_kit import docgen, hookspecs
from hjepa_kit.params import describe
from hjepa_kit.registry import Registry

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

HOOKS = docgen.hook_names()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _args_section(doc: str) -> dict[str, str]:
    """``Args:`` entries of a Google-style docstring: name -> description."""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    entries: dict[str, str] = {}
    current = None
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break
        match = re.match(r"(\w+)(?: \([^)]*\))?:\s*(.*)", line.strip())
        if width == indent and match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def test_there_are_hooks_of_both_groups():
    assert any(h.startswith("hjepa_register_") for h in HOOKS)
    assert {"hjepa_fit_start", "hjepa_step_end", "hjepa_fit_end"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_spec_documents_every_argument(name):
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function) or ""
    assert doc.strip(), f"hook {name} has no docstring"
    summary = doc.split("\n\n")[0].strip()
    assert summary and not summary.startswith("Args:"), f"hook {name} has no summary line"
    documented = _args_section(doc)
    for parameter in inspect.signature(function).parameters:
        assert documented.get(parameter, "").strip(), f"hook {name}: argument {parameter!r} has no 'Args:' entry"
    extra = set(documented) - set(inspect.signature(function).parameters)
    assert not extra, f"hook {name} documents arguments it does not have: {sorted(extra)}"


def test_hook_reference_page_renders_every_hook():
    page = (DOCS / "hooks.md").read_text()
    assert "::: hjepa_kit.hookspecs" in page
    block = page.split("::: hjepa_kit.hookspecs", 1)[1].split(":::", 1)[0]
    members = re.findall(r"^\s+- (\w+)\s*$", block, flags=re.M)
    missing = [h for h in HOOKS if h not in members]
    assert not missing, f"docs/hooks.md does not render these hooks: {missing}"
    assert "<!-- generated: hook-summary -->" in page
    assert "```mermaid" in page, "the lifecycle diagram is missing"
    lifecycle = page.split("## Lifecycle", 1)[1].split("## Specifications", 1)[0]
    for hook in HOOKS:
        if not hook.startswith("hjepa_register_"):
            assert hook in lifecycle, f"the lifecycle diagram does not show {hook}"


def _builtin_components(registry: Registry) -> list:
    return docgen.builtin_components(registry)


def test_there_are_builtin_components_of_every_kind(registry):
    kinds = {c.kind for c in _builtin_components(registry)}
    from hjepa_kit.contracts import KINDS

    assert kinds == set(KINDS)


def test_every_builtin_component_has_a_summary_and_documented_parameters(registry):
    problems = []
    for component in _builtin_components(registry):
        label = f"{component.kind} '{component.name}' ({component.params.__module__}.{component.params.__qualname__})"
        if not component.summary.strip():
            problems.append(f"{label}: no summary")
        if not attrs.has(component.params):
            problems.append(f"{label}: params is not an attrs class")
            continue
        for row in describe(component.params):
            if not row.help.strip():
                problems.append(f"{label}: parameter {row.name!r} has no help text")
    assert not problems, "undocumented built-in components:\n" + "\n".join(problems)


def test_every_configuration_key_has_a_help_text():
    problems = []
    for path, cls in docgen.config_sections():
        if not (inspect.getdoc(cls) or "").strip():
            problems.append(f"{cls.__name__}: no docstring (the section's description)")
        for row in describe(cls):
            if not row.help.strip():
                problems.append(f"{path + '.' if path else ''}{row.name}: no help text")
    assert not problems, "undocumented configuration keys:\n" + "\n".join(problems)


def test_generated_reference_covers_every_key_component_and_command(registry):
    config = docgen.config_reference_markdown()
    for path, cls in docgen.config_sections():
        for row in describe(cls):
            key = f"{path}.{row.name}" if path else row.name
            assert f"`{key}`" in config, key
    plugins = docgen.plugin_reference_markdown(registry)
    for component in _builtin_components(registry):
        assert f"### `{component.name}`" in plugins, component.name
        for row in describe(component.params):
            assert row.name in plugins
    cli = docgen.cli_reference_markdown()
    for command in ("hjepa train", "hjepa evaluate", "hjepa export", "hjepa embed", "hjepa plugins", "hjepa config show",
                    "hjepa config validate"):
        assert f"`{command}`" in cli, command
    assert "--eval-type" in cli and "--resume" in cli


def test_every_page_in_the_navigation_exists_and_its_markers_render():
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_MkdocsLoader)

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    listed = list(pages(config["nav"]))
    assert len(listed) >= 14
    for page in listed:
        assert (DOCS / page).is_file(), f"mkdocs.yml lists {page}, which does not exist"
    on_disk = {p.name for p in DOCS.glob("*.md")}
    assert on_disk <= set(listed), f"pages missing from the navigation: {sorted(on_disk - set(listed))}"
    cache: dict[str, str] = {}
    for page in listed:
        text = (DOCS / page).read_text()
        rendered = docgen.render_markers(text, cache)
        assert "<!-- generated:" not in rendered, page


class _MkdocsLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!!python/name:`` tags need no import here."""


_MkdocsLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HJEPA_TEST_DOCS_BUILD"), reason="CI builds the site; set HJEPA_TEST_DOCS_BUILD=1 to build it here")
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_architecture_page_lists_every_module_and_only_existing_ones():
    """docs/architecture.md names each module of the core and the built-in plugins, and no module that is gone."""
    import re

    repo = Path(__file__).resolve().parents[1]
    page = (repo / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"`((?:hjepa_kit|plugins)/[\w/]+\.py)`", page))
    modules = {p.relative_to(repo).as_posix() for folder in ("hjepa_kit", "plugins") for p in (repo / folder).rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "hjepa_kit"}
    modules = {m for m in modules if not m.startswith(("hjepa_kit/plugins/", "hjepa_kit/configs/"))}
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - modules) == [], "docs/architecture.md lists modules that do not exist"
