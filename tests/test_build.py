"""Building a run's components: errors name the file and key path; `check_build` builds without data."""

from __future__ import annotations

import attrs
import pytest

from grid_masker import BlockParams, build_blocks
from hjepa_kit import hookimpl
from hjepa_kit.build import build_component, check_build
from hjepa_kit.config import load_config
from hjepa_kit.contracts import BuildContext
from hjepa_kit.errors import ConfigError, PluginError
from hjepa_kit.registry import Component, Registry, Resolved
from hjepa_kit.testing import hjepa_plugins  # noqa: F401 (a fixture)


@attrs.frozen(kw_only=True)
class NoParams:
    """No parameters."""


def _resolved(factory, path: str = "model.masker", name: str = "fitted", source: str = "run.yaml") -> Resolved:
    component = Component(kind="masker", name=name, factory=factory, params=NoParams, summary="s",
                          plugin="lab", distribution="lab-plugins", version="1.0")
    return Resolved({path: (component, NoParams())}, source=source)


def _raises(*args):
    def factory(params, ctx):
        raise ConfigError(*args)

    return factory


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # The factory knows neither the file nor the key: both are added, the component's name prefix dropped.
        (("fitted: 60 target + 26 context patches do not fit a 8x8 grid",),
         "run.yaml: model.masker (fitted): 60 target + 26 context patches do not fit a 8x8 grid"),
        # It names its key already: only the file is added.
        (("model.masker.params: 4 targets x 19 patches leave no context",),
         "run.yaml: model.masker.params: 4 targets x 19 patches leave no context"),
        # It names a file of its own: kept.
        (("model.masker.params: see the table", "grids.csv"), "grids.csv: model.masker.params: see the table"),
    ],
)
def test_a_factory_config_error_names_the_configuration_file_and_key_path(error, expected):
    with pytest.raises(ConfigError) as info:
        build_component(_resolved(_raises(*error)), "model.masker", BuildContext(image_size=32))
    assert str(info.value) == expected


def test_several_problems_of_one_factory_are_each_located():
    with pytest.raises(ConfigError) as info:
        build_component(_resolved(_raises(["too many targets", "model.masker.params.ratio: too large"])),
                        "model.masker", BuildContext(image_size=32))
    assert info.value.source == "run.yaml"
    assert info.value.problems == ["model.masker (fitted): too many targets", "model.masker.params.ratio: too large"]


# --- check_build --------------------------------------------------------------------------------


class MisnamedCallback:
    @hookimpl
    def hjepa_step_end(self, trainer, stepp):
        pass


class LabPlugin:
    @hookimpl
    def hjepa_register_maskers(self, register):
        register("fitted", build_blocks, params=BlockParams, summary="Blocks that must fit the grid")

    @hookimpl
    def hjepa_register_callbacks(self, register):
        register("misnamed", lambda params, ctx: MisnamedCallback(), summary="Asks for an argument that does not exist")


def _masker_config(tiny, **params):
    config = tiny(callbacks=[])
    config["model"]["masker"] = {"name": "fitted", "params": params}
    return load_config(config)


def test_check_build_runs_the_masker_check_on_the_encoders_grid(hjepa_plugins, tiny):
    hjepa_plugins.add(LabPlugin(), name="lab", distribution="lab-plugins", version="1.0")
    registry = Registry()
    too_many = _masker_config(tiny)  # 16-pixel images, 4-pixel patches: a 4x4 grid; 4 x 4 + 4 > 16
    with pytest.raises(ConfigError) as info:
        check_build(registry.resolve(too_many, "run.yaml"), too_many)
    assert str(info.value) == "run.yaml: model.masker (fitted): 16 target + 4 context patches cannot fit a 4x4 patch grid"
    fits = _masker_config(tiny, num_targets=2)
    assert check_build(registry.resolve(fits, "run.yaml"), fits) == []


def test_check_build_reports_a_callback_hook_argument_the_hook_does_not_pass(hjepa_plugins, tiny):
    hjepa_plugins.add(LabPlugin(), name="lab", distribution="lab-plugins", version="1.0")
    config = load_config(tiny(callbacks=["misnamed"]))
    with pytest.raises(PluginError) as info:
        check_build(Registry().resolve(config, "run.yaml"), config)
    assert str(info.value).startswith(
        "callbacks[0]: callback 'misnamed' from plugin lab (lab-plugins 1.0): hjepa_step_end(trainer, stepp) asks for 'stepp'"
    )


def test_check_build_opens_no_dataset_that_would_download_and_says_what_it_left_out(tiny, tmp_path):
    registry = Registry()
    root = tmp_path / "cifar"
    download = load_config(tiny(data={"dataset": {"name": "cifar10", "params": {"root": str(root), "download": True}}}))
    notes = check_build(registry.resolve(download), download)
    assert notes and "the model was not built" in notes[0] and "download is true" in notes[0]
    assert not root.exists()  # nothing was fetched or created
    missing = load_config(tiny(data={"dataset": {"name": "cifar10", "params": {"root": str(root)}}}))
    notes = check_build(registry.resolve(missing), missing)
    assert notes and "cannot be opened here" in notes[0] and "set data.image_size" in notes[0]
    sized = load_config(tiny(data={"dataset": {"name": "cifar10", "params": {"root": str(root)}}, "image_size": 16}))
    assert check_build(registry.resolve(sized), sized) == []  # the size is known: the dataset is not needed
