"""Configuration loading: strict scalars, key paths, overrides, YAML errors."""

from __future__ import annotations

import pytest

from hjepa_kit.config import RunConfig, apply_overrides, dump_config, load_config, read_yaml
from hjepa_kit.errors import ConfigError


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load_and_round_trip():
    config = load_config()
    assert isinstance(config, RunConfig)
    again = load_config(__import__("yaml").safe_load(dump_config(config)))
    assert again == config


def test_strict_scalars_name_key_path_value_and_file(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 3.7\n  lr: 1e-3\ndata:\n  batch_size: '8'\n  augmentation: {hflip: 'false'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "training.epochs: expected an integer, got 3.7" in message
    assert "data.batch_size: expected an integer, got '8'" in message
    assert "data.augmentation.hflip: expected true or false, got 'false'" in message
    assert "3 problems" in message  # every problem of the file in one message; 1e-3 is accepted


def test_exponent_string_is_a_float(tmp_path):
    config = load_config(write(tmp_path, "training:\n  lr: 5e-5\n  min_lr: 1.0e-6\n"))
    assert config.training.lr == pytest.approx(5e-5)
    assert isinstance(config.training.lr, float)


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "trainig:\n  epochs: 2\n"))
    assert "trainig: unknown key (did you mean 'training'?)" in str(info.value)


def test_compile_switches_take_yaml_booleans_or_auto():
    # YAML reads on / off / yes / no as booleans: they are the way to write the switches.
    config = load_config(None, ["training.compile=on", "evaluation.compile=off"])
    assert config.training.compile is True and config.evaluation.compile is False
    assert load_config(None).training.compile == "auto"
    with pytest.raises(ConfigError, match=r"training.compile: expected bool \| 'auto', got 'maybe'"):
        load_config(None, ["training.compile=maybe"])


def test_out_of_range_value_says_what_is_allowed():
    with pytest.raises(ConfigError, match=r"training.accumulation_steps: must be >= 1, got 0"):
        load_config({"training": {"accumulation_steps": 0}})


def test_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"training.precision: expected one of 'fp32', 'bf16', 'auto', got 'fp16'"):
        load_config({"training": {"precision": "fp16"}})


def test_cross_field_check_reported_with_section():
    with pytest.raises(ConfigError, match=r"data.augmentation: crop_scale: lower bound 0.9 is above upper bound 0.5"):
        load_config({"data": {"augmentation": {"crop_scale": [0.9, 0.5]}}})


def test_component_shorthand_and_params():
    config = load_config({"model": {"encoder": "vit_small", "masker": {"name": "multiblock", "params": {"num_targets": 2}}}})
    assert config.model.encoder.name == "vit_small"
    assert config.model.encoder.params == {}
    assert config.model.masker.params == {"num_targets": 2}


def test_overrides_refine_defaults_and_are_yaml_typed():
    config = load_config(None, ["model.encoder.params.patch_size=8", "training.epochs=5", "training.grad_clip=null",
                                "evaluation.evaluators.0.params.k=[10, 20]", "loss=mse"])
    assert config.model.encoder.name == "vit_tiny"  # the default spec survives a params override
    assert config.model.encoder.params["patch_size"] == 8
    assert config.training.epochs == 5
    assert config.training.grad_clip is None
    assert config.evaluation.evaluators[0].params == {"k": [10, 20]}
    assert config.loss.name == "mse"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.epochs", "expected KEY=VALUE"),
        ("training..epochs=3", "dotted path"),
        ("training.epochs.x=3", "training.epochs is a value"),
        ("evaluation.evaluators.9.params.k=3", "needs a list index 0..3"),
        ("training.nope=3", "training.nope: unknown key"),
    ],
)
def test_bad_overrides(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_syntax_error_names_file_line_column(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 2\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(path) in str(info.value)
    assert "line" in str(info.value) and "column" in str(info.value)


def test_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'epochs' appears twice"):
        load_config(write(tmp_path, "training:\n  epochs: 2\n  epochs: 3\n"))


def test_yaml_cannot_construct_python_objects(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_apply_overrides_does_not_mutate_input():
    data = {"training": {"epochs": 1}}
    apply_overrides(data, ["training.epochs=4"])
    assert data == {"training": {"epochs": 1}}


def test_output_layout_follows_the_plan():
    config = load_config({"name": "cpu_cifar10"})
    assert str(config.log_dir) == "results/logs/cpu_cifar10"
    assert str(config.checkpoint_dir) == "results/checkpoints/cpu_cifar10"
