"""Built-in experiment trackers: the callbacks ``mlflow`` and ``wandb`` (optional extras).

Each logs what the ``tensorboard`` callback writes, at the same steps (:func:`.callbacks.step_scalars`,
:func:`.callbacks.epoch_scalars`), plus the resolved configuration as parameters, each
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

import importlib
import json
import logging
import numbers
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from hjepa_kit import hookimpl
from hjepa_kit.errors import ConfigError
from hjepa_kit.params import param

from .callbacks import epoch_scalars, step_scalars

__all__ = ["MlflowParams", "MlflowTracker", "WandbParams", "WandbTracker", "flatten_config"]

log = logging.getLogger("hjepa_kit")

#: The run's status -> MLflow's terminal run status.
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "collapsed": "FAILED"}


def _import_extra(module: str, extra: str) -> Any:
    """Import an optional package, or stop with the install command naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"needs the package {module}, which is not installed: pip install 'hjepa-kit[{extra}]' (or pip install {module})"
        ) from None


def flatten_config(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested configuration as ``{"training.lr": "0.001", "callbacks.0.name": "mlflow", ...}``.

    Mappings and lists of mappings (the components) are flattened by key and index; any other
    value is one parameter, JSON-encoded unless it is a string.
    """
    if isinstance(data, Mapping) and (data or not prefix):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    if isinstance(data, (list, tuple)) and any(isinstance(v, Mapping) for v in data):
        out = {}
        for index, value in enumerate(data):
            out.update(flatten_config(value, f"{prefix}{index}."))
        return out
    return {prefix[:-1]: data if isinstance(data, str) else json.dumps(data, default=str)}


def _resolved_config(trainer: Any) -> dict[str, Any]:
    """The run's configuration with every component's parameters filled in."""
    getter = getattr(trainer, "resolved_config", None)
    if callable(getter):
        return getter()
    saved = Path(trainer.log_dir) / "config.yaml"
    if saved.is_file():
        import yaml

        return yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    config = getattr(trainer, "config", None)
    return attrs.asdict(config) if config is not None and attrs.has(type(config)) else {}


def _report(step: int, figures: Mapping[str, float]) -> str:
    rows = "\n".join(f"| `{name}` | {value:.6g} |" for name, value in sorted(figures.items()))
    return f"# Evaluation at step {step}\n\n| figure | value |\n| --- | --- |\n{rows}\n"


class _Tracker:
    """The hooks both trackers share; a backend supplies ``_open``, ``_log_config``, ``_metrics``,
    ``_epoch_metric``, ``_text``, ``_file`` and ``_close``."""

    #: The callback's name, also the stem of its run file ``<log_dir>/<name>_run.json``.
    name = ""

    def __init__(self, params: Any) -> None:
        self.params = params
        self.run_id: str | None = None
        self.log_dir: Path | None = None
        self._evaluated: tuple[int, set[str]] = (-1, set())
        self._failures = 0

    # --- the run file --------------------------------------------------------------------------

    def _run_file(self) -> Path:
        assert self.log_dir is not None
        return self.log_dir / f"{self.name}_run.json"

    def _stored(self, trainer: Any) -> dict[str, Any] | None:
        """The tracker run to continue: the stored one when training resumed from a checkpoint."""
        path = Path(trainer.log_dir) / f"{self.name}_run.json"
        if int(getattr(trainer, "step", 0)) <= 0 or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: unreadable, starting a new %s run", path, self.name)
            return None
        return stored if isinstance(stored, dict) and stored.get("run_id") else None

    def _store(self, record: dict[str, Any]) -> None:
        path = self._run_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    def _guarded(self, what: str, function: Any, *args: Any) -> None:
        """Log, but never stop training over a tracker's failure (a server away for a moment)."""
        try:
            function(*args)
        except Exception as exc:  # noqa: BLE001 - any backend error
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.warning("%s: could not log %s (%s failures so far): %s", self.name, what, self._failures, exc)

    # --- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def hjepa_fit_start(self, trainer: Any) -> None:
        self.log_dir = Path(trainer.log_dir)
        stored = self._stored(trainer)
        record = self._open(trainer, stored)
        self.run_id = record["run_id"]
        resumed = stored is not None and stored.get("run_id") == self.run_id
        self._store({k: v for k, v in record.items() if k != "where"})
        log.info("%s: %s run %s%s", self.name, "continuing" if resumed else "logging to", self.run_id,
                 f" ({record['where']})" if record.get("where") else "")
        self._log_config(_resolved_config(trainer), resumed)
        saved = self.log_dir / "config.yaml"
        if saved.is_file():
            self._guarded("config.yaml", self._file, saved, "")

    @hookimpl
    def hjepa_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        if self.run_id is None:
            return
        scalars = step_scalars(step, metrics, self.params.every_steps)
        if scalars:
            self._guarded("step metrics", self._metrics, scalars, step)

    @hookimpl
    def hjepa_evaluation_end(self, trainer: Any, results: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        step = int(getattr(trainer, "step", 0) or 0)
        figures = {k: float(v) for k, v in results.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        files = {k: Path(v) for k, v in results.items() if isinstance(v, (str, os.PathLike)) and Path(v).is_file()}
        if figures:
            self._guarded("evaluation figures", self._metrics, figures, step)
            self._evaluated = (step, set(figures))
            name = f"evaluation/step_{step:07d}"
            self._guarded("the evaluation report", self._text, _report(step, figures), f"{name}.md")
            self._guarded("the evaluation report", self._text, json.dumps({"step": step, "figures": figures}, indent=1), f"{name}.json")
        for key, path in files.items():
            self._guarded(f"figure {key}", self._file, path, "evaluation")

    @hookimpl
    def hjepa_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.run_id is None:
            return
        step = int(trainer.step)
        done = self._evaluated[1] if self._evaluated[0] == step else set()
        scalars = {k: v for k, v in epoch_scalars(metrics).items() if k not in done}  # each figure once per step
        if scalars:
            self._guarded("epoch metrics", self._metrics, scalars, step)
        self._guarded("the epoch loss", self._epoch_metric, "epoch/loss", float(metrics.get("loss", float("nan"))), epoch, step)
        self._guarded("pending metrics", self._flush)

    @hookimpl
    def hjepa_fit_end(self, trainer: Any, status: str) -> None:
        if self.run_id is None:
            return
        try:
            self._close(status)
        except Exception as exc:  # noqa: BLE001 - the run's own outcome must not be masked
            log.warning("%s: could not close run %s: %s", self.name, self.run_id, exc)
        finally:
            self.run_id = None

    # --- what a backend supplies -----------------------------------------------------------------

    def _open(self, trainer: Any, stored: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def _log_config(self, config: dict[str, Any], resumed: bool) -> None:
        raise NotImplementedError

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def _epoch_metric(self, key: str, value: float, epoch: int, step: int) -> None:
        raise NotImplementedError

    def _text(self, text: str, name: str) -> None:
        raise NotImplementedError

    def _file(self, path: Path, folder: str) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Wait for what was handed to the backend asynchronously."""

    def _close(self, status: str) -> None:
        raise NotImplementedError


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


class MlflowTracker(_Tracker):
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
    import time

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


class WandbTracker(_Tracker):
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
    return MlflowTracker(params, _import_extra("mlflow", "mlflow"))


def _build_wandb(params: WandbParams, ctx: Any) -> WandbTracker:
    return WandbTracker(params, _import_extra("wandb", "wandb"))


@hookimpl
def hjepa_register_callbacks(register: Any) -> None:
    register("mlflow", _build_mlflow, params=MlflowParams,
             summary="MLflow tracking: config, the tensorboard scalars, evaluation reports, status (extra: mlflow)")
    register("wandb", _build_wandb, params=WandbParams,
             summary="Weights & Biases tracking: config, the tensorboard scalars, evaluation reports, status (extra: wandb)")
