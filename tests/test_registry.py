"""The plugin manager: registration, attribution, errors."""

from __future__ import annotations

import types

import attrs
import pytest

from hjepa_kit import hookimpl
from hjepa_kit.config import load_config
from hjepa_kit.errors import ConfigError, PluginError
from hjepa_kit.params import param
from hjepa_kit.registry import Registry


@attrs.frozen(kw_only=True)
class ToyParams:
    size: int = param(4, help="A size.", ge=1)
    mode: str = param("a", help="A mode.", choices=("a", "b"))


def _factory(params, ctx):
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
            register("fragile", broken, params=ToyParams)

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
