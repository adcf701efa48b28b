"""The plugin manager: registration, attribution, errors."""

from __future__ import annotations

import types

import attrs
import pytest

from hjepa_kit import hookimpl
from hjepa_kit.config import load_config
from hjepa_kit.errors import ConfigError, PluginError
from hjepa_kit.params import param
from hjepa_kit.registry import PluginWarning, Registry
from hjepa_kit.testing import hjepa_plugins  # noqa: F401 (a fixture)


@attrs.frozen(kw_only=True)
class ToyParams:
    size: int = param(4, help="A size.", ge=1)
    mode: str = param("a", help="A mode.", choices=("a", "b"))


def _factory(params, ctx):
    """A toy component."""
    return ("built", params)


class ToyPlugin:
    @hookimpl
    def hjepa_register_encoders(self, register):
        register("toy_encoder", _factory, params=ToyParams, summary="A toy encoder")

    @hookimpl
    def hjepa_register_maskers(self, register):
        register("toy_masker", _factory, params=ToyParams)


def test_in_process_plugin_components_are_registered_and_credited():
    registry = Registry(entry_points=False, plugins=[ToyPlugin()])
    component = registry.get("encoder", "toy_encoder")
    assert component.summary == "A toy encoder"
    assert component.plugin.startswith("ToyPlugin")
    assert component.distribution == "<in-process>"
    assert registry.names("masker") == ["toy_masker"]
    assert component.build(ToyParams(), None) == ("built", ToyParams())


def test_module_plugin():
    module = types.ModuleType("my_lab_plugin")

    @hookimpl
    def hjepa_register_losses(register):
        register("lab_loss", _factory, params=ToyParams, summary="lab loss")

    module.hjepa_register_losses = hjepa_register_losses
    registry = Registry(entry_points=False, plugins=[module])
    assert registry.get("loss", "lab_loss").plugin == "my_lab_plugin"


def test_unknown_name_suggests_and_lists_available():
    registry = Registry(entry_points=False, plugins=[ToyPlugin()])
    with pytest.raises(ConfigError) as info:
        registry.get("encoder", "toy_encodr", where="model.encoder", source="run.yaml")
    message = str(info.value)
    assert message.startswith("run.yaml: model.encoder.name: unknown encoder 'toy_encodr'")
    assert "did you mean 'toy_encoder'" in message
    assert "available: toy_encoder [ToyPlugin" in message


def test_unknown_name_of_another_kind_says_so():
    registry = Registry(entry_points=False, plugins=[ToyPlugin()])
    with pytest.raises(ConfigError, match="'toy_masker' is a masker, not a encoder"):
        registry.get("encoder", "toy_masker")


def test_hook_matching_no_spec_is_an_error_naming_plugin_and_hook():
    class Typo:
        @hookimpl
        def hjepa_register_encoder(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError) as info:
        Registry(entry_points=False, plugins=[Typo()])
    assert "hjepa_register_encoder," in str(info.value) or "hjepa_register_encoder " in str(info.value)
    assert "Typo" in str(info.value)
    assert "did you mean 'hjepa_register_encoders'" in str(info.value)


def test_duplicate_component_names_both_plugins():
    class Other:
        @hookimpl
        def hjepa_register_encoders(self, register):
            register("toy_encoder", _factory, params=ToyParams)

    with pytest.raises(PluginError) as info:
        Registry(entry_points=False, plugins=[ToyPlugin(), Other()])
    assert "two encoders are named 'toy_encoder'" in str(info.value)
    assert "ToyPlugin" in str(info.value) and "Other" in str(info.value)


def test_params_must_be_an_attrs_class():
    class Bad:
        @hookimpl
        def hjepa_register_encoders(self, register):
            register("bad", _factory, params=dict)

    with pytest.raises(PluginError, match="must be an attrs class"):
        Registry(entry_points=False, plugins=[Bad()])


def test_factory_failure_names_component_and_plugin():
    def broken(params, ctx):
        raise RuntimeError("boom")

    class P:
        @hookimpl
        def hjepa_register_encoders(self, register):
            register("fragile", broken, params=ToyParams, summary="Raises when built")

    registry = Registry(entry_points=False, plugins=[P()])
    with pytest.raises(PluginError, match=r"encoder 'fragile' from plugin P.* failed to build: RuntimeError: boom"):
        registry.get("encoder", "fragile").build(ToyParams(), None)


def test_registration_failure_names_plugin():
    class P:
        @hookimpl
        def hjepa_register_encoders(self, register):
            raise ImportError("needs a missing library")

    with pytest.raises(PluginError, match="failed while registering encoders: ImportError"):
        Registry(entry_points=False, plugins=[P()])


def test_register_accepts_future_keywords():
    class P:
        @hookimpl
        def hjepa_register_encoders(self, register):
            register("future", _factory, params=ToyParams, summary="s", added_in_a_later_version=True)

    assert Registry(entry_points=False, plugins=[P()]).names("encoder") == ["future"]


def test_resolve_structures_params_and_collects_all_problems():
    class P(ToyPlugin):
        @hookimpl
        def hjepa_register_predictors(self, register):
            register("toy_predictor", _factory, params=ToyParams)

        @hookimpl
        def hjepa_register_losses(self, register):
            register("toy_loss", _factory, params=ToyParams)

        @hookimpl
        def hjepa_register_datasets(self, register):
            register("toy_data", _factory, params=ToyParams)

    registry = Registry(entry_points=False, plugins=[P()])
    config = load_config({
        "data": {"dataset": "toy_data"},
        "model": {"encoder": {"name": "toy_encoder", "params": {"size": 3.7, "mode": "c"}}, "masker": "toy_masker",
                  "predictor": {"name": "toy_predictor", "params": {"sise": 2}}},
        "loss": "toy_los", "evaluation": {"evaluators": [], "online": None}, "callbacks": [],
    })
    with pytest.raises(ConfigError) as info:
        registry.resolve(config, "run.yaml")
    message = str(info.value)
    assert "model.encoder.params.size: expected an integer, got 3.7" in message
    assert "model.encoder.params.mode: must be one of 'a', 'b', got 'c'" in message
    assert "model.predictor.params.sise: unknown key (did you mean 'size'?)" in message
    assert "loss.name: unknown loss 'toy_los' (did you mean 'toy_loss'?)" in message
    good = load_config({"data": {"dataset": "toy_data"}, "model": {"encoder": {"name": "toy_encoder", "params": {"size": 8}},
                        "masker": "toy_masker", "predictor": "toy_predictor"}, "loss": "toy_loss",
                        "evaluation": {"evaluators": [], "online": None}, "callbacks": []})
    resolved = registry.resolve(good)
    assert resolved["model.encoder"][1] == ToyParams(size=8)
    assert resolved["model.masker"][1] == ToyParams()


def test_lifecycle_hooks_reach_in_process_plugins():
    seen = []

    class Watcher:
        @hookimpl
        def hjepa_fit_end(self, trainer, status):
            seen.append(status)

    registry = Registry(entry_points=False, plugins=[Watcher()])
    registry.hook.hjepa_fit_end(trainer=None, status="completed")
    assert seen == ["completed"]


# --- one plugin, two routes ------------------------------------------------------------------------


def _module_plugin(name: str = "lab_plugin") -> types.ModuleType:
    """A module plugin with one component and one lifecycle hook that counts its calls."""
    module = types.ModuleType(name)
    module.calls = []

    @hookimpl
    def hjepa_register_maskers(register):
        register("lab_masker", _factory, params=ToyParams, summary="A lab's masker")

    @hookimpl
    def hjepa_fit_end(trainer, status):
        module.calls.append(status)

    module.hjepa_register_maskers = hjepa_register_maskers
    module.hjepa_fit_end = hjepa_fit_end
    return module


def test_a_plugin_added_twice_is_registered_once_until_both_additions_are_undone():
    module = _module_plugin()
    registry = Registry(entry_points=False, plugins=[module, module])
    assert registry.names("masker") == ["lab_masker"]
    assert registry.add_plugin(module) == "lab_plugin"
    registry.hook.hjepa_fit_end(trainer=None, status="completed")
    assert module.calls == ["completed"]  # not once per addition
    registry.remove_plugin(module)
    registry.remove_plugin(module)
    assert registry.pm.is_registered(module)
    registry.remove_plugin(module)
    assert not registry.pm.is_registered(module)


def test_an_installed_plugin_passed_in_process_too_is_registered_once(hjepa_plugins):
    module = _module_plugin()
    hjepa_plugins.add(module, name="lab", distribution="lab-plugins", version="1.0")
    registry = Registry(plugins=[module])
    component = registry.get("masker", "lab_masker")
    assert (component.plugin, component.distribution) == ("lab", "lab-plugins")
    registry.remove_plugin(module)  # what a run does with its plugins=[...] when it ends
    registry.hook.hjepa_fit_end(trainer=None, status="completed")
    assert module.calls == ["completed"]  # the installed registration stays, and runs once


def test_the_same_component_installed_and_passed_as_another_object_names_both_routes(hjepa_plugins):
    hjepa_plugins.add(_module_plugin(), name="lab", distribution="lab-plugins", version="1.0")

    class LabPlugin:
        @hookimpl
        def hjepa_register_maskers(self, register):
            register("lab_masker", _factory, params=ToyParams, summary="A lab's masker")

    with pytest.raises(PluginError) as info:
        Registry(plugins=[LabPlugin()])
    message = str(info.value)
    assert "two maskers are named 'lab_masker': one from plugin lab (lab-plugins 1.0), one from plugin 'LabPlugin@" in message
    assert "leave it out there (installed plugins are loaded already)" in message


# --- hook arguments and documentation ---------------------------------------------------------------


def test_a_hook_argument_the_hook_does_not_pass_names_plugin_hook_and_its_arguments():
    class StepPrinter:
        @hookimpl
        def hjepa_step_end(self, trainer, stepp):
            pass

    module = types.ModuleType("lab_hooks")

    @hookimpl
    def hjepa_fit_end(trainer, state):
        pass

    module.hjepa_fit_end = hjepa_fit_end
    with pytest.raises(PluginError) as info:
        Registry(entry_points=False, plugins=[StepPrinter()])
    message = str(info.value)
    assert message.startswith("plugin 'StepPrinter@")
    assert ("hjepa_step_end(trainer, stepp) asks for 'stepp', which hjepa_step_end does not pass "
            "(did you mean 'step'?); its arguments are trainer, step, metrics") in message
    assert "Plugin '" not in message and "hookimpl definition" not in message  # pluggy's wording
    with pytest.raises(PluginError, match=r"^plugin 'lab_hooks' \(<in-process>\): hjepa_fit_end\(trainer, state\) asks for "
                                          r"'state'.*\(did you mean 'status'\?\); its arguments are trainer, status"):
        Registry(entry_points=False, plugins=[module])


@attrs.frozen(kw_only=True)
class HalfDocumented:
    ratio: float = param(0.5, help="A ratio.")
    size: int = attrs.field(default=4)
    mode: str = param("a", help=" ")


class Undocumented:
    @hookimpl
    def hjepa_register_maskers(self, register):
        register("quiet_masker", lambda params, ctx: None, params=HalfDocumented)


def test_a_component_without_summary_or_help_texts_warns_and_is_an_error_when_strict():
    with pytest.warns(PluginWarning) as record:
        registry = Registry(entry_points=False, plugins=[Undocumented()], strict=False)
    message = str(record[0].message)
    assert "masker 'quiet_masker' has no summary" in message
    assert "parameters without a help text: size, mode" in message
    assert message.startswith("plugin 'Undocumented@")
    assert registry.names("masker") == ["quiet_masker"] and registry.problems == [message]
    with pytest.raises(PluginError, match=r"masker 'quiet_masker' has no summary .* \[strict mode\]"):
        Registry(entry_points=False, plugins=[Undocumented()], strict=True)
