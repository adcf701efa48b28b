"""The `hjepa` command: plugins listing, config show/validate, third-party plugins, error exits."""

from __future__ import annotations

import json
import re

import yaml

from conftest import run_cli, tiny_config
from grid_masker import BlockParams, build_blocks
from hjepa_kit import hookimpl
from hjepa_kit.cli import main
from hjepa_kit.testing import hjepa_plugins  # noqa: F401 (a fixture)

BUILTINS = {
    "encoder": {"vit_tiny", "vit_small", "vit_base"},
    "masker": {"multiblock"},
    "predictor": {"hierarchical"},
    "loss": {"smooth_l1", "mse"},
    "evaluator": {"knn_faiss", "linear_probe", "feature_quality", "hierarchy"},
    "dataset": {"synthetic", "cifar10", "cifar100", "stl10", "image_folder"},
    "callback": {"tensorboard", "progress_bar", "mlflow", "wandb"},
}


def test_plugins_lists_every_builtin_with_distribution_and_version():
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    found = {}
    for row in data["components"]:
        found.setdefault(row["kind"], set()).add(row["name"])
        if row["name"] in BUILTINS.get(row["kind"], ()):
            assert row["distribution"] == "hjepa-kit"
            assert row["version"]
            assert row["summary"]
    for kind, names in BUILTINS.items():
        assert names <= found.get(kind, set()), kind
    text = run_cli("plugins").stdout
    assert "encoders:" in text and "vit_tiny" in text and "hjepa-kit" in text


def test_plugins_params_prints_types_defaults_help():
    result = run_cli("plugins", "--params", "multiblock")
    assert result.returncode == 0, result.stderr
    assert "masker multiblock" in result.stdout
    assert "num_targets: int = 4" in result.stdout
    data = json.loads(run_cli("plugins", "--params", "vit_tiny", "--json").stdout)
    names = {p["name"]: p for p in data["params"]}
    assert names["patch_size"]["type"] == "int" and names["patch_size"]["help"]


def test_plugins_params_unknown_name():
    result = run_cli("plugins", "--params", "vit_tny")
    assert result.returncode == 2
    assert "did you mean 'vit_tiny'" in result.stderr
    assert "Traceback" not in result.stderr


def test_third_party_plugins_appear_and_a_broken_one_is_a_warning(plugin_site):
    result = run_cli("plugins", "--json", site=plugin_site)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {row["name"]: row for row in data["components"]}
    assert rows["lab_masker"]["distribution"] == "lab-masker" and rows["lab_masker"]["version"] == "1.2.3"
    assert rows["tiny_convnet"]["distribution"] == "hjepa-example-plugin"
    assert "broken_plugin" in result.stderr and "broken-plugin" in result.stderr
    assert "ModuleNotFoundError" in result.stderr


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_site):
    result = run_cli("plugins", site=plugin_site, env={"HJEPA_STRICT_PLUGINS": "1"})
    assert result.returncode == 2
    assert "broken_plugin" in result.stderr and "Traceback" not in result.stderr


def test_config_show_prints_resolved_params(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    result = run_cli("config", "show", "--config", str(path), "--set", "training.epochs=7")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["training"]["epochs"] == 7
    assert shown["model"]["masker"]["params"]["num_targets"] == 4  # defaults filled in from the plugin


def test_config_validate_exit_codes(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert run_cli("config", "validate", "--config", str(path)).returncode == 0
    bad = run_cli("config", "validate", "--config", str(path), "--set", "model.encoder.params.patch_size=3.5",
                  "--set", "model.masker.name=multiblok")
    assert bad.returncode == 2
    assert "model.encoder.params.patch_size: expected an integer, got 3.5" in bad.stderr
    assert "unknown masker 'multiblok' (did you mean 'multiblock'?)" in bad.stderr
    assert str(path) in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_commands_resolve_the_config_as_train_does(tmp_path, monkeypatch, capsys):
    from hjepa_kit.api import _source
    from hjepa_kit.bundled import find_bundled

    monkeypatch.chdir(tmp_path)  # no ./configs/quickstart.yaml here: the bundled one, as `hjepa train` runs
    assert _source(None) == (find_bundled("quickstart"), "quickstart")
    assert _source("quickstart") == (find_bundled("quickstart"), "quickstart")
    shown = []
    for args in ([], ["--config", "quickstart"], ["--config", find_bundled("quickstart")]):
        assert main(["config", "show", *args]) == 0
        shown.append(capsys.readouterr().out)
    assert shown[0] == shown[1] == shown[2]
    config = yaml.safe_load(shown[0])
    assert config["name"] == "quickstart" and config["data"]["dataset"]["name"] == "digits"
    assert main(["config", "validate"]) == 0
    assert capsys.readouterr().out.startswith("quickstart: valid (")
    assert main(["config", "validate", "--config", "cpu_cifar10"]) == 0
    assert capsys.readouterr().out.startswith("cpu_cifar10: valid (")
    assert main(["config", "show", "--config", "no_such_config"]) == 2
    assert "no_such_config: file not found" in capsys.readouterr().err


def test_unknown_eval_type_lists_each_allowed_name_once_sorted():
    import pytest

    from hjepa_kit.errors import UserError
    from hjepa_kit.evaluation.selection import select_evaluators

    class Evaluators:  # the part of a Registry that select_evaluators reads
        components = {"evaluator": dict.fromkeys(["knn_faiss", "linear_probe", "feature_quality", "hierarchy", "extra"])}

        def names(self, kind):
            return sorted(self.components[kind])

    with pytest.raises(UserError) as caught:
        select_evaluators(["knnn"], [], Evaluators())
    allowed = str(caught.value).split("allowed: ")[1].split(", ")
    # Shorthands of registered evaluators and the component names, one sorted list, each once.
    assert allowed == ["all", "extra", "feature_quality", "hierarchy", "knn", "knn_faiss", "linear_probe"]


def test_yaml_syntax_error_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: [\n")
    result = run_cli("train", "--config", str(path))
    assert result.returncode == 2
    assert "YAML syntax error" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_third_party_components_selected_from_yaml(plugin_site, tmp_path):
    config = tiny_config(tmp_path)
    config["model"]["encoder"] = {"name": "tiny_convnet", "params": {"width": 32, "patch_size": 4}}
    config["model"]["masker"] = {"name": "random_patches", "params": {"num_targets": 2, "target_fraction": 0.15}}
    config["training"]["epochs"] = 1
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("train", "--config", str(path), site=plugin_site)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load((tmp_path / "results" / "logs" / "tiny" / "config.yaml").read_text())
    assert resolved["model"]["encoder"]["name"] == "tiny_convnet"
    assert resolved["model"]["encoder"]["params"]["layers"] == 3


# --- a plugin written from the docs: validate, train, list ------------------------------------------


class BlocksPlugin:
    @hookimpl
    def hjepa_register_maskers(self, register):
        register("blocks", build_blocks, params=BlockParams, summary="Blocks that must fit the patch grid")


def _blocks_run(tmp_path, **params) -> str:
    config = tiny_config(tmp_path, callbacks=[])
    config["data"]["dataset"]["params"]["image_size"] = 32  # 4-pixel patches: an 8x8 grid
    config["model"]["masker"] = {"name": "blocks", "params": params}
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_validate_runs_the_build_time_checks_that_train_runs(hjepa_plugins, tmp_path, capsys):
    hjepa_plugins.add(BlocksPlugin(), name="lab", distribution="lab-plugins", version="1.0")
    expected = "model.masker (blocks): 60 target + 26 context patches cannot fit a 8x8 patch grid"
    path = _blocks_run(tmp_path, num_targets=15, target_len=4, min_context=26)
    assert main(["config", "validate", "--config", path]) == 2
    assert capsys.readouterr().err == f"hjepa config: error: {path}: {expected}\n"
    assert main(["train", "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count(expected) == 1 and f"hjepa train: error: {path}: {expected}\n" in err  # once, with the file
    fits = _blocks_run(tmp_path, num_targets=2)
    assert main(["config", "validate", "--config", fits]) == 0
    assert capsys.readouterr().out == f"{fits}: valid (10 components checked)\n"


class LongNamesPlugin:
    @hookimpl
    def hjepa_register_maskers(self, register):
        register("a_masker_with_a_rather_long_name", build_blocks, params=BlockParams, summary="Long name")

    @hookimpl
    def hjepa_register_evaluators(self, register):
        register("terse", lambda params, ctx: None)  # neither summary nor docstring


def test_plugins_columns_fit_long_names_and_each_warning_is_printed_once(hjepa_plugins, capsys):
    hjepa_plugins.add(LongNamesPlugin(), name="a_lab_plugin_with_a_long_name", distribution="lab-plugins", version="1.0")
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(rows) > 10
    columns = set()
    for line in rows:
        name, origin = re.split(r"\s{2,}", line.strip())[:2]
        columns.add((line.index(name), line.index(origin, len(name) + 2)))
    assert columns == {(2, 2 + len("a_masker_with_a_rather_long_name") + 2)}
    summaries = {line.index(re.split(r"\s{2,}", line.strip())[2]) for line in rows if len(re.split(r"\s{2,}", line.strip())) > 2}
    assert len(summaries) == 1  # the summaries start in one column too
    assert err.count("evaluator 'terse' has no summary") == 1


def test_eval_type_choices_have_one_source():
    from hjepa_kit import cli
    from hjepa_kit.evaluation.run import EVAL_TYPE_EVALUATORS

    assert cli.EVAL_TYPES == ("all", *EVAL_TYPE_EVALUATORS)
    result = run_cli("evaluate", "--help")
    assert result.returncode == 0, result.stderr
    assert cli.EVAL_TYPES[:5] == ("all", "knn", "linear_probe", "feature_quality", "hierarchy")
    assert f"{', '.join(cli.EVAL_TYPES)}, or any registered" in " ".join(result.stdout.split())


def test_the_command_line_loads_without_torch():
    import subprocess
    import sys

    code = "import sys, hjepa_kit.cli; hjepa_kit.cli.build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
