"""Built-in experiment trackers: the callbacks ``mlflow`` and ``wandb`` (optional extras).

Each (a :class:`~.tracking.Tracker`, which holds the hooks) logs what the ``tensorboard``
callback writes, at the same steps, plus the resolved configuration as parameters, each
evaluation's figures and a report of them (``hjepa_evaluation_end``; figure files, where an
evaluation hands their paths, as artifacts) and the run's status when it ends. Everything is
logged from the lifecycle hooks, never inside the step: MLflow's metrics go through its
asynchronous logging, W&B's through its own background process.

The packages are optional: ``pip install 'hjepa-kit[mlflow]'`` or ``'hjepa-kit[wandb]'``. Without
them, building the callback (``hjepa train``, ``hjepa config validate``) stops with that command.

A resumed run continues the same tracker run: its id is kept in ``<log_dir>/mlflow_run.json`` or
``<log_dir>/wandb_run.json`` and reused whenever training resumes from a checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from hjepa_kit import hookimpl
from hjepa_kit.params import param

from .tracking import Tracker, flatten_config, import_extra

__all__ = ["MlflowParams", "MlflowTracker", "WandbParams", "WandbTracker", "flatten_config"]

log = logging.getLogger("hjepa_kit")

#: The run's status -> MLflow's terminal run status.
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "collapsed": "FAILED"}


# --- MLflow ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class MlflowParams:
    """Parameters of the ``mlflow`` callback."""

    tracking_uri: str | None = param(
        None, help="MLflow tracking URI (http://host:5000, sqlite:///mlflow.db ...); null: a local file store "
                   "<output_dir>/mlruns, offline, nothing to start (mlflow ui --backend-store-uri results/mlruns)."
    )
    experiment: str = param("hjepa-kit", help="MLflow experiment the run goes to (created when missing).")
    run_name: str | None = param(None, help="Name of the MLflow run; null: the run's name.")
    every_steps: int = param(10, ge=1, help="Log step metrics every N optimizer steps (as the tensorboard callback's every_steps).")


_BAD_NAME = re.compile(r"[^\w./\- ]")


class MlflowTracker(Tracker):
    """Logs a run to MLflow: parameters, metrics, the evaluation reports and the final status.

    Names MLflow does not allow (``online/knn/top1@20``) have each such character replaced by
    ``_`` (``online/knn/top1_20``).
    """

    name = "mlflow"

    def __init__(self, params: MlflowParams, mlflow: Any) -> None:
        super().__init__(params)
        self.mlflow = mlflow
        self.client: Any = None
        self._pending: list[Any] = []

    def _open(self, trainer: Any, stored: dict[str, Any] | None) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = self.params.tracking_uri
        if uri is None:
            store = Path(trainer.config.output_dir).expanduser().resolve() / "mlruns"
            store.mkdir(parents=True, exist_ok=True)
            uri = store.as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks file-store users to opt in
        self.client = client = MlflowClient(tracking_uri=uri)
        if stored is not None and stored.get("tracking_uri") == uri:
            try:
                client.update_run(stored["run_id"], status="RUNNING")
                return {**stored, "where": uri}
            except MlflowException as exc:
                log.warning("mlflow: run %s cannot be continued (%s); starting a new one", stored["run_id"], exc)
        experiment = client.get_experiment_by_name(self.params.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(self.params.experiment)
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment_id)
        run = client.create_run(experiment_id, run_name=self.params.run_name or trainer.config.name,
                                tags={"hjepa.run": str(trainer.config.name)})
        return {"run_id": run.info.run_id, "tracking_uri": uri, "experiment_id": experiment_id, "where": uri}

    def _log_config(self, config: dict[str, Any], resumed: bool) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        flat = {_BAD_NAME.sub("_", k): v[:MAX_PARAM_VAL_LENGTH] for k, v in flatten_config(config).items()}
        if resumed:  # MLflow parameters cannot change: log the new ones, report the changed ones
            logged = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
            if changed:
                note = "; ".join(f"{k}: {logged[k]} -> {flat[k]}" for k in changed)
                log.warning("mlflow: parameters changed on resume (kept as first logged; tag hjepa.changed_on_resume): %s", note)
                self.client.log_batch(self.run_id, tags=[RunTag("hjepa.changed_on_resume", note[:5000])])
            flat = {k: v for k, v in flat.items() if k not in logged}
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [Metric(_BAD_NAME.sub("_", k), float(v), stamp, int(step)) for k, v in values.items()]
        self._log_batch(metrics)

    def _epoch_metric(self, key: str, value: float, epoch: int, step: int) -> None:
        from mlflow.entities import Metric

        self._log_batch([Metric(key, value, _now_ms(), int(epoch))])

    def _log_batch(self, metrics: list[Any]) -> None:
        try:
            operation = self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
        except TypeError:  # MLflow before 2.8: synchronous only
            operation = self.client.log_batch(self.run_id, metrics=metrics)
        if operation is not None:
            self._pending.append(operation)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()

    def _text(self, text: str, name: str) -> None:
        self._flush()  # an artifact reads the run, which must not race the metrics still being written
        self.client.log_text(self.run_id, text, name)

    def _file(self, path: Path, folder: str) -> None:
        self._flush()
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def _close(self, status: str) -> None:
        try:
            self._flush()
        finally:
            self.client.set_tag(self.run_id, "hjepa.status", status)
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- Weights & Biases --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WandbParams:
    """Parameters of the ``wandb`` callback."""

    project: str = param("hjepa-kit", help="W&B project.")
    entity: str | None = param(None, help="W&B entity (user or team); null: your default entity.")
    group: str | None = param(None, help="W&B group of the run.")
    tags: tuple[str, ...] = param((), help="W&B tags of the run.")
    run_name: str | None = param(None, help="Display name of the W&B run; null: the run's name.")
    mode: Literal["auto", "online", "offline", "disabled"] = param(
        "auto", help="auto: W&B's own choice (WANDB_MODE=offline is honoured); offline: write locally, wandb sync later."
    )
    dir: str | None = param(None, help="Folder W&B writes its files to (a wandb/ inside); null: the run's log folder.")
    every_steps: int = param(10, ge=1, help="Log step metrics every N optimizer steps (as the tensorboard callback's every_steps).")


class WandbTracker(Tracker):
    """Logs a run to Weights & Biases: the configuration, metrics, evaluation reports and status.

    ``epoch/loss`` is plotted against ``epoch`` (a W&B step metric), as TensorBoard plots it.
    """

    name = "wandb"

    def __init__(self, params: WandbParams, wandb: Any) -> None:
        super().__init__(params)
        self.wandb = wandb
        self.run: Any = None

    def _open(self, trainer: Any, stored: dict[str, Any] | None) -> dict[str, Any]:
        p = self.params
        folder = Path(p.dir).expanduser() if p.dir else Path(trainer.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"project": p.project, "entity": p.entity, "group": p.group, "tags": list(p.tags) or None,
                                  "name": p.run_name or trainer.config.name, "dir": str(folder), "job_type": "pretrain"}
        if p.mode != "auto":
            kwargs["mode"] = p.mode
        if stored is not None and stored.get("project") == p.project and stored.get("entity") == p.entity:
            kwargs.update(id=stored["run_id"], resume="allow")
        self.run = self.wandb.init(**kwargs)
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        return {"run_id": self.run.id, "project": p.project, "entity": p.entity, "where": p.project}

    def _log_config(self, config: dict[str, Any], resumed: bool) -> None:
        self.run.config.update(config, allow_val_change=True)

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=int(step))

    def _epoch_metric(self, key: str, value: float, epoch: int, step: int) -> None:
        self.run.log({key: value, "epoch": int(epoch)}, step=int(step))

    def _text(self, text: str, name: str) -> None:
        target = Path(self.run.dir) / name  # files in the run's folder are uploaded (or kept offline) with it
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def _file(self, path: Path, folder: str) -> None:
        target = Path(self.run.dir) / folder / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    def _close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in ("completed", "stopped") else 1)
        self.run = None


# --- registration ------------------------------------------------------------------------------


def _build_mlflow(params: MlflowParams, ctx: Any) -> MlflowTracker:
    return MlflowTracker(params, import_extra("mlflow", "mlflow"))


def _build_wandb(params: WandbParams, ctx: Any) -> WandbTracker:
    return WandbTracker(params, import_extra("wandb", "wandb"))


@hookimpl
def hjepa_register_callbacks(register: Any) -> None:
    register("mlflow", _build_mlflow, params=MlflowParams,
             summary="MLflow tracking: config, the tensorboard scalars, evaluation reports, status (extra: mlflow)")
    register("wandb", _build_wandb, params=WandbParams,
             summary="Weights & Biases tracking: config, the tensorboard scalars, evaluation reports, status (extra: wandb)")
