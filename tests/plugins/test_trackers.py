"""The experiment trackers ``mlflow`` and ``wandb``: what they log, at which steps, and resuming.

MLflow runs for real against a local file store (skipped without the ``mlflow`` extra); W&B's
module is replaced by a recorder, so nothing is installed or sent.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import pytest

from hjepa_kit import hookimpl
from hjepa_kit.errors import ConfigError
from hjepa_kit.plugins import trackers
from hjepa_kit.plugins.callbacks import epoch_scalars, step_scalars
from hjepa_kit.registry import Registry
from hjepa_kit.testing import check_component


# --- without any tracker installed ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_extra_is_an_error_naming_it(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    component = Registry().get("callback", name)
    with pytest.raises(ConfigError, match=rf"needs the package {name}.*pip install 'hjepa-kit\[{name}\]'"):
        component.build(component.params(), None)


def test_flatten_config_keys_components_by_index():
    flat = trackers.flatten_config({
        "name": "run", "training": {"lr": 0.001, "ema_momentum": [0.996, 1.0], "max_steps": None},
        "callbacks": [{"name": "mlflow", "params": {}}], "model": {"masker": {"name": "multiblock", "params": {"k": True}}},
    })
    assert flat == {
        "name": "run", "training.lr": "0.001", "training.ema_momentum": "[0.996, 1.0]", "training.max_steps": "null",
        "callbacks.0.name": "mlflow", "callbacks.0.params": "{}", "model.masker.name": "multiblock",
        "model.masker.params.k": "true",
    }


# --- W&B, with a recorder in place of the package ------------------------------------------------


class _Summary(dict):
    pass


class _Config(dict):
    def update(self, data, allow_val_change=False):  # noqa: D401 - wandb's signature
        super().update(data)


class _Run:
    def __init__(self, recorder, kwargs, folder):
        self.recorder = recorder
        self.id = kwargs.get("id") or f"run{len(recorder.runs)}"
        self.dir = str(folder / self.id / "files")
        self.config = _Config()
        self.summary = _Summary()
        self.logged: list[tuple[dict, int]] = []
        self.step_metrics: dict[str, str | None] = {}
        self.exit_code = None

    def log(self, data, step=None):
        assert step is not None and (not self.logged or step >= self.logged[-1][1]), "W&B steps only go forward"
        self.logged.append((dict(data), step))

    def define_metric(self, name, step_metric=None):
        self.step_metrics[name] = step_metric

    def finish(self, exit_code=None):
        self.exit_code = exit_code


def _recorder(tmp_path):
    module = types.ModuleType("wandb")
    module.inits = []
    module.runs = []

    def init(**kwargs):
        module.inits.append(kwargs)
        run = _Run(module, kwargs, tmp_path / "wandb-files")
        module.runs.append(run)
        return run

    module.init = init
    return module


def _stand_in(tmp_path, step=0):
    from hjepa_kit.config import RunConfig

    config = RunConfig(name="wb", output_dir=str(tmp_path / "results"))
    config.log_dir.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(config=config, log_dir=config.log_dir, step=step, epoch=0,
                                 resolved_config=lambda: {"name": "wb", "training": {"lr": 0.001}})


def test_wandb_logs_the_tensorboard_scalars_the_config_the_evaluation_and_the_status(tmp_path, monkeypatch):
    wandb = _recorder(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Registry().get("callback", "wandb").build(trackers.WandbParams(every_steps=2, tags=("a",)), None)
    trainer = _stand_in(tmp_path)
    tracker.hjepa_fit_start(trainer)
    (kwargs,) = wandb.inits
    assert "mode" not in kwargs and "id" not in kwargs  # mode auto: WANDB_MODE decides, inside wandb
    assert kwargs["project"] == "hjepa-kit" and kwargs["name"] == "wb" and kwargs["tags"] == ["a"]
    assert kwargs["dir"] == str(trainer.log_dir)
    run = wandb.runs[0]
    assert run.config == {"name": "wb", "training": {"lr": 0.001}} and run.step_metrics["epoch/*"] == "epoch"
    steps = [{"lr": 0.1, "eta_s": 3.0}, {"lr": 0.2, "momentum": 0.99, "eta_s": 2.0}, {"lr": 0.3},
             {"lr": 0.4, "loss": 0.5, "loss/level0": 0.4, "grad_norm": 1.0}]
    expected = []
    for step, metrics in enumerate(steps, start=1):
        trainer.step = step
        tracker.hjepa_step_end(trainer, step, metrics)
        if step_scalars(step, metrics, 2):
            expected.append((step_scalars(step, metrics, 2), step))
    figures = {"online/knn/top1@20": 0.25, "online/seconds": 1.0}
    tracker.hjepa_evaluation_end(trainer, figures)
    epoch_metrics = {"loss": 0.5, **figures, "health/rankme/encoder": 7.0}
    tracker.hjepa_epoch_end(trainer, 1, epoch_metrics)
    tracker.hjepa_fit_end(trainer, "completed")
    assert expected == [({"train/lr": 0.2, "train/momentum": 0.99}, 2), ({"train/lr": 0.4, "loss/total": 0.5,
                        "loss/level0": 0.4, "train/grad_norm": 1.0}, 4)]
    assert run.logged == expected + [
        (figures, 4),
        ({"health/rankme/encoder": 7.0}, 4),  # the online figures are not logged twice at step 4
        ({"epoch/loss": 0.5, "epoch": 1}, 4),
    ]
    assert set(epoch_scalars(epoch_metrics)) == set(figures) | {"health/rankme/encoder"}
    report = Path(run.dir) / "evaluation" / "step_0000004.md"
    assert "`online/knn/top1@20` | 0.25" in report.read_text()
    assert json.loads(report.with_suffix(".json").read_text())["figures"] == figures
    assert run.summary["status"] == "completed" and run.exit_code == 0
    assert json.loads((trainer.log_dir / "wandb_run.json").read_text())["run_id"] == "run0"


def test_wandb_continues_its_run_on_resume_and_passes_the_mode(tmp_path, monkeypatch):
    wandb = _recorder(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    component = Registry().get("callback", "wandb")
    first = component.build(trackers.WandbParams(mode="offline"), None)
    trainer = _stand_in(tmp_path)
    first.hjepa_fit_start(trainer)
    first.hjepa_fit_end(trainer, "interrupted")
    assert wandb.inits[0]["mode"] == "offline" and wandb.runs[0].exit_code == 1
    trainer.step = 6  # resumed from a checkpoint: the same W&B run continues
    second = component.build(trackers.WandbParams(mode="offline"), None)
    second.hjepa_fit_start(trainer)
    assert wandb.inits[1]["id"] == "run0" and wandb.inits[1]["resume"] == "allow"
    second.hjepa_fit_end(trainer, "completed")
    trainer.step = 0  # a fresh run in the same folder starts a new W&B run
    third = component.build(trackers.WandbParams(mode="offline"), None)
    third.hjepa_fit_start(trainer)
    assert "id" not in wandb.inits[2]
    assert json.loads((trainer.log_dir / "wandb_run.json").read_text())["run_id"] == "run2"


def test_wandb_meets_the_callback_contract(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", _recorder(tmp_path))
    check_component("callback", "wandb")


# --- MLflow, for real, against a local file store ------------------------------------------------


class _StopAfterFirstEpoch:
    @hookimpl
    def hjepa_epoch_end(self, trainer, epoch, metrics):
        trainer.request_stop("test: stop after the first epoch")


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_mlflow_logs_what_tensorboard_logs_and_a_resumed_run_continues_the_same_mlflow_run(tiny, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    import hjepa_kit

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = tiny(callbacks=[{"name": "tensorboard"}, {"name": "mlflow", "params": {"every_steps": 2}}])
    first = hjepa_kit.train(config, plugins=[_StopAfterFirstEpoch()], console=False)
    assert first.status == "stopped" and first.steps == 6
    record = json.loads((first.log_dir / "mlflow_run.json").read_text())
    store = Path(config["output_dir"]).resolve() / "mlruns"
    assert record["tracking_uri"] == store.as_uri()
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["hjepa.status"] == "stopped"

    second = hjepa_kit.train(config, resume="auto", console=False)
    assert second.status == "completed" and second.steps == 12
    assert json.loads((second.log_dir / "mlflow_run.json").read_text())["run_id"] == record["run_id"]
    (experiment,) = [e for e in client.search_experiments() if e.name == "hjepa-kit"]
    assert len(client.search_runs([experiment.experiment_id])) == 1, "the resumed run started a second MLflow run"
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["hjepa.status"] == "completed"
    assert "hjepa.changed_on_resume" not in run.data.tags

    params = run.data.params
    assert params["training.epochs"] == "2" and params["model.encoder.name"] == "vit_tiny"
    assert params["callbacks.1.params.every_steps"] == "2" and params["data.dataset.params.num_train"] == "96"

    tensorboard = _tensorboard_scalars(second.log_dir)
    expected = {re.sub(r"[^\w./\- ]", "_", tag): points for tag, points in tensorboard.items()}
    logged = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}
    assert set(logged) == set(expected) and "online/knn/top1_20" in logged and "epoch/loss" in logged
    for key, points in expected.items():
        assert [s for s, _ in logged[key]] == sorted(s for s, _ in points), key
        for (_, got), (_, want) in zip(logged[key], sorted(points)):
            assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), key
    assert [s for s, _ in logged["epoch/loss"]] == [1, 2] and [s for s, _ in logged["online/knn/top1_20"]] == [6, 12]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "evaluation"}
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert reports == {f"evaluation/step_{s:07d}.{ext}" for s in (6, 12) for ext in ("md", "json")}
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/step_0000012.json")).read_text())
    assert report["figures"]["online/knn/top1@20"] == pytest.approx(logged["online/knn/top1_20"][-1][1])


def test_mlflow_meets_the_callback_contract(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_component("callback", "mlflow")


def test_mlflow_tracking_uri_points_elsewhere_and_changed_params_are_reported(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "server-store").as_uri()
    component = Registry().get("callback", "mlflow")
    trainer = _stand_in(tmp_path)
    first = component.build(trackers.MlflowParams(tracking_uri=uri, experiment="other"), None)
    first.hjepa_fit_start(trainer)
    first.hjepa_fit_end(trainer, "failed")
    assert not (tmp_path / "results" / "mlruns").exists()
    run_id = json.loads((trainer.log_dir / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FAILED"
    trainer.step = 3
    trainer.resolved_config = lambda: {"name": "wb", "training": {"lr": 0.002, "epochs": 4}}
    second = component.build(trackers.MlflowParams(tracking_uri=uri, experiment="other"), None)
    second.hjepa_fit_start(trainer)
    second.hjepa_fit_end(trainer, "completed")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"name": "wb", "training.lr": "0.001", "training.epochs": "4"}
    assert run.data.tags["hjepa.changed_on_resume"] == "training.lr: 0.001 -> 0.002"
