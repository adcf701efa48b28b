"""What the experiment trackers of :mod:`hjepa_kit.plugins.trackers` share: the hooks, the run file, the parameters.

:class:`Tracker` implements the lifecycle hooks once; a backend (MLflow, W&B) supplies how to open
or continue its run and how to log values, text and files. The scalars are those of the
``tensorboard`` callback at the same steps (:func:`.callbacks.step_scalars`,
:func:`.callbacks.epoch_scalars`).
"""

from __future__ import annotations

import importlib
import json
import logging
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from hjepa_kit import hookimpl
from hjepa_kit.errors import ConfigError

from .callbacks import epoch_scalars, step_scalars

__all__ = ["Tracker", "flatten_config", "import_extra"]

log = logging.getLogger("hjepa_kit")


def import_extra(module: str, extra: str) -> Any:
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


class Tracker:
    """The lifecycle hooks of a tracker. A backend subclass supplies:

    - ``_open(trainer, stored) -> record``: open a run, or continue ``stored`` (the run file's
      record, given when training resumed); the record (``run_id``, what identifies the store;
      ``where`` for the log line only) is written to the run file;
    - ``_log_config(config, resumed)``: the resolved configuration, a nested mapping;
    - ``_metrics(values, step)`` and ``_epoch_metric(key, value, epoch, step)``;
    - ``_text(text, name)`` and ``_file(path, folder)``: files of the run;
    - ``_flush()``: wait for asynchronous logging (optional), and ``_close(status)``.
    """

    #: The callback's name, also the stem of its run file ``<log_dir>/<name>_run.json``.
    name = ""

    def __init__(self, params: Any) -> None:
        self.params = params
        self.run_id: str | None = None
        self.log_dir: Path | None = None
        self._evaluated: tuple[int, set[str]] = (-1, set())
        self._failures = 0

    def _flush(self) -> None:
        """Wait for what was handed to the backend asynchronously (nothing by default)."""

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
