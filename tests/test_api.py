"""`hjepa_kit.train` and `hjepa_kit.evaluate` with `plugins=[...]` that are installed as well."""

from __future__ import annotations

import types

import hjepa_kit
from hjepa_kit import hookimpl
from hjepa_kit.testing import hjepa_plugins  # noqa: F401 (a fixture)


def _lab_plugin() -> types.ModuleType:
    """A module plugin with an evaluator and two lifecycle hooks that record their calls."""
    module = types.ModuleType("lab_plugin")
    module.calls = []

    def build_mean_norm(params, ctx):
        """Mean norm of the default representation's test features."""
        return lambda features, default: {"mean_norm/test": float(features[default].test.norm(dim=1).mean())}

    @hookimpl
    def hjepa_register_evaluators(register):
        register("mean_norm", build_mean_norm, summary="Mean feature norm")

    @hookimpl
    def hjepa_fit_end(trainer, status):
        module.calls.append(("fit_end", status))

    @hookimpl
    def hjepa_evaluation_end(trainer, results):
        module.calls.append(("evaluation_end", "online" if trainer is not None else "evaluate"))

    module.hjepa_register_evaluators = hjepa_register_evaluators
    module.hjepa_fit_end = hjepa_fit_end
    module.hjepa_evaluation_end = hjepa_evaluation_end
    return module


def test_an_installed_plugin_passed_again_trains_and_evaluates_with_its_hooks_called_once(hjepa_plugins, tiny):
    lab = _lab_plugin()
    hjepa_plugins.add(lab, name="lab", distribution="lab-plugins", version="1.0")
    config = tiny(training={"epochs": 1}, callbacks=[], evaluation={"online": {"name": "mean_norm"}})
    result = hjepa_kit.train(config, plugins=[lab], console=False)
    assert result.status == "completed"
    assert result.metrics["online/mean_norm/test"] > 0
    assert lab.calls == [("evaluation_end", "online"), ("fit_end", "completed")]
    figures = hjepa_kit.evaluate(result.checkpoints["final"], eval_types=["mean_norm"], device="cpu",
                                 plugins=[lab], write_report=False)
    assert figures["metrics"]["mean_norm/test"] > 0
    assert lab.calls[-1] == ("evaluation_end", "evaluate") and len(lab.calls) == 3


def test_evaluate_is_run_evaluation_with_its_public_keywords():
    import inspect

    from hjepa_kit.evaluation.run import run_evaluation

    assert hjepa_kit.evaluate is run_evaluation  # one signature, documented once
    params = inspect.signature(hjepa_kit.evaluate).parameters
    assert list(params) == ["checkpoint", "dataset", "data_path", "eval_types", "device", "output_dir", "overrides",
                            "plugins", "write_report"]
    assert all(p.kind is p.KEYWORD_ONLY for name, p in params.items() if name != "checkpoint")
    assert "write_report:" in hjepa_kit.evaluate.__doc__
