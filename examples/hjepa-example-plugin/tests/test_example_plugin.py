"""Tests of the example plugin, written as a plugin author writes them, with hjepa_kit.testing.

Run them after installing the plugin (``pip install -e examples/hjepa-example-plugin``):

    pytest examples/hjepa-example-plugin/tests
"""

from __future__ import annotations

import pytest
import yaml

hjepa_example_plugin = pytest.importorskip("hjepa_example_plugin")

from hjepa_kit.cli import main  # noqa: E402
from hjepa_kit.testing import check_component, hjepa_plugins, registry_with  # noqa: E402, F401 (hjepa_plugins is a fixture)


@pytest.fixture(scope="module")
def registry():
    """The installed plugins plus this one (added unless its entry point already loaded it)."""
    return registry_with(hjepa_example_plugin)


def test_tiny_convnet_meets_the_encoder_contract(registry):
    encoder = check_component("encoder", "tiny_convnet", registry=registry)
    assert encoder.embed_dim == 64 and encoder.grid_size == (8, 8)  # 32-pixel images, 4-pixel patches


def test_tiny_convnet_with_other_parameters(registry):
    encoder = check_component("encoder", "tiny_convnet", registry=registry, params={"width": 16, "patch_size": 8})
    assert encoder.grid_size == (4, 4)


def test_random_patches_meets_the_masker_contract(registry):
    check_component("masker", "random_patches", registry=registry)
    # ... also on the grid of the plugin's own encoder.
    check_component("masker", "random_patches", registry=registry, encoder="tiny_convnet")


def test_random_patches_rejects_targets_that_leave_no_context(registry):
    with pytest.raises(AssertionError, match="leave no context"):
        check_component("masker", "random_patches", registry=registry, params={"num_targets": 4, "target_fraction": 0.3})


def test_hjepa_plugins_lists_the_components(hjepa_plugins, capsys):
    hjepa_plugins.add(hjepa_example_plugin, name="example", distribution="hjepa-example-plugin", version="0.1.0")
    assert main(["plugins", "--kind", "encoder"]) == 0
    assert "tiny_convnet" in capsys.readouterr().out
    assert main(["plugins", "--params", "random_patches"]) == 0
    assert "target_fraction: float = 0.15" in capsys.readouterr().out


def test_train_with_both_components_selected_from_yaml(hjepa_plugins, tmp_path):
    hjepa_plugins.add(hjepa_example_plugin, name="example", distribution="hjepa-example-plugin", version="0.1.0")
    config = {
        "name": "example",
        "output_dir": str(tmp_path / "results"),
        "device": "cpu",
        "data": {"dataset": {"name": "synthetic", "params": {"num_train": 64, "num_test": 32, "image_size": 16}}, "batch_size": 16},
        "model": {
            "encoder": {"name": "tiny_convnet", "params": {"width": 16, "patch_size": 4}},
            "masker": {"name": "random_patches", "params": {"num_targets": 2, "target_fraction": 0.15}},
            "predictor": {"name": "hierarchical", "params": {"depth": 1, "width": 32, "num_heads": 2}},
        },
        "training": {"epochs": 1, "warmup_epochs": 0.5, "threads": 1},
        "evaluation": {"online_train_samples": 64, "online_test_samples": 32},
        "callbacks": [],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 0
    resolved = yaml.safe_load((tmp_path / "results" / "logs" / "example" / "config.yaml").read_text())
    assert resolved["model"]["encoder"]["name"] == "tiny_convnet"
    assert resolved["model"]["masker"]["params"]["num_targets"] == 2
    assert (tmp_path / "results" / "checkpoints" / "example" / "final.pth").is_file()
