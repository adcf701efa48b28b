"""Test helpers for plugin authors: contract checks and plugins registered for one test.

Use them from your plugin's tests::

    # conftest.py
    pytest_plugins = ["hjepa_kit.testing"]      # makes the hjepa_plugins fixture available

    # test_my_plugin.py
    import my_plugin
    from hjepa_kit.testing import check_component, registry_with

    def test_my_encoder_meets_the_contract():
        check_component("encoder", "my_encoder", registry=registry_with(my_plugin))

    def test_the_command_line_lists_it(hjepa_plugins, capsys):
        hjepa_plugins.add(my_plugin)             # as if installed, for this test only
        from hjepa_kit.cli import main
        assert main(["plugins", "--kind", "encoder"]) == 0
        assert "my_encoder" in capsys.readouterr().out

:func:`check_component` builds a registered component with its default parameters (or the ones
given) on a tiny :class:`~hjepa_kit.contracts.BuildContext` and checks, on small random inputs,
what the core relies on for its kind (see :mod:`hjepa_kit.contracts`). A failure is an
``AssertionError`` naming the component, the plugin that registered it and what is wrong.

This package is part of the core: it imports no built-in plugin. Components that need an encoder's
sizes (maskers, predictors, losses) are checked against a small stand-in encoder defined here,
unless you name a registered one with ``encoder=``. Importing it does not import pytest (a test
extra): only the ``hjepa_plugins`` fixture needs it, and it is loaded when asked for.

The package, by role: ``checks`` (:func:`check_component`), ``model_checks`` and ``run_checks``
(the contract of each kind), ``failure`` (the failure messages), ``standins`` (stand-in encoder,
masks, context, features, and the encoder and images of an evaluator with ``needs_model``),
``sandbox`` (registries and plugins registered for one test) and ``fixture`` (the pytest fixture).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import check_component
from .run_checks import LIFECYCLE_HOOKS  # noqa: F401 (a constant, importable from here as before)
from .sandbox import PluginSandbox, components, registry_with
from .standins import IMAGE_SIZE, probe_encoder, probe_masks, random_feature_sets, stand_in_model, tiny_context  # noqa: F401 (IMAGE_SIZE: as above)

if TYPE_CHECKING:
    from .fixture import hjepa_plugins

__all__ = [
    "check_component",
    "components",
    "registry_with",
    "tiny_context",
    "probe_encoder",
    "probe_masks",
    "random_feature_sets",
    "stand_in_model",
    "PluginSandbox",
    "hjepa_plugins",
]

#: ``pytest_plugins = ["hjepa_kit.testing"]`` in a ``conftest.py`` registers this package with
#: pytest, and pytest then registers the modules named here: the fixture.
pytest_plugins = ["hjepa_kit.testing.fixture"]


def __getattr__(name: str) -> Any:
    """``hjepa_plugins`` is imported on first use, so that importing this package needs no pytest."""
    if name == "hjepa_plugins":
        from .fixture import hjepa_plugins

        return hjepa_plugins
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
