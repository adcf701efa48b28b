"""The ``hjepa_plugins`` pytest fixture: the only module of :mod:`hjepa_kit.testing` that imports pytest.

pytest is a test extra of hjepa-kit, so ``import hjepa_kit.testing`` does not load this module;
``pytest_plugins = ["hjepa_kit.testing"]`` (which registers it) or ``from hjepa_kit.testing import
hjepa_plugins`` does.
"""

from __future__ import annotations

import pytest

from .sandbox import PluginSandbox


@pytest.fixture
def hjepa_plugins(monkeypatch: pytest.MonkeyPatch) -> PluginSandbox:
    """Register plugins for one test, as if they were installed.

    Add the plugin under test with ``hjepa_plugins.add(my_plugin)``; every registry created
    afterwards in the test (by the CLI, ``train``, ``evaluate`` or ``hjepa_plugins.registry()``)
    loads it with the installed ones. Enable the fixture with ``pytest_plugins =
    ["hjepa_kit.testing"]`` in your ``conftest.py``.
    """
    return PluginSandbox(monkeypatch)
