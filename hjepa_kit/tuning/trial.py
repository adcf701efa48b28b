"""One trial of ``hjepa tune``: sample a configuration, validate it, train it, and say how it ended.

The trial trains in this process with :class:`~hjepa_kit.training.trainer.Trainer` and one extra
in-process plugin, :class:`ObjectiveWatch`: at each epoch end (the ``hjepa_epoch_end`` hook) it
reports the objective to Optuna and, when the pruner says so, stops the run cleanly through
``Trainer.request_stop`` (the run ends ``stopped`` after that epoch, as any requested stop does).

Failures are results. How a trial ended is stored with it (user attributes ``status`` and
``reason``):

- ``complete``: trained to its end; its value is the objective at the last epoch.
- ``pruned``: stopped by the pruner, or ended by a collapse (``training.on_collapse: stop``) or a
  non-finite loss: the configuration is bad, and the sampler learns so from its last reported value.
- ``failed``: the sampled configuration is invalid, the run ran out of memory (or would have:
  ``training.memory_budget_gb``), or it raised an error; the reason is kept and the study goes on.

An interrupted trial (Ctrl-C) and a study-level mistake (an objective that is never reported) end
the study instead; the interrupted trial does not count towards ``--trials``.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import attrs

from ..errors import CollapseDetected, ConfigError, PluginError, TrainingStopped, UserError
from ..hookspecs import hookimpl

__all__ = ["TrialContext", "TrialFailed", "ObjectiveWatch", "run_trial", "trial_name", "figure_name", "resolve_auto",
           "ALIASES"]

_NON_FINITE = re.compile(r"\b(nan|-?inf|non-finite|infinite)\b", re.IGNORECASE)

#: Objective names that stand for a figure: as ``checkpoint.best_metric`` reads them.
ALIASES = ("auto", "knn", "rankme", "loss")


class TrialFailed(Exception):
    """A trial failed; its reason is stored with it and the study goes on."""


def trial_name(number: int) -> str:
    """The run name (and folder) of trial ``number``: ``trial_0007``."""
    return f"trial_{number:04d}"


def figure_name(objective: str, metrics: Any, representation: str) -> str | None:
    """The figure ``objective`` names among an epoch's ``metrics``, or None when that epoch has none.

    ``knn``: the first online k-NN top-1 figure; ``rankme``: ``health/rankme/<representation>``;
    ``loss``: the training loss; any other name is a figure's own (``online/knn/top1@20``).
    """
    from ..training.health import HEALTH_PREFIX

    if objective == "knn":
        return next((k for k in metrics if k.startswith("online/") and "top1" in k), None)
    name = HEALTH_PREFIX + representation if objective == "rankme" else objective
    return name if name in metrics else None


def resolve_auto(config: Any, resolved: Any) -> str:
    """What ``--objective auto`` means for a run: ``knn`` when the online evaluation runs on a labelled
    dataset with a test split, else ``rankme`` when the health figures are on, else ``loss``."""
    from ..build import build_dataset, make_context

    ev = config.evaluation
    online = ev.online is not None and ev.online_every_epochs > 0
    if online:
        try:
            import torch

            dataset = build_dataset(resolved, make_context(config, torch.device("cpu")))
            online = dataset.num_classes is not None and "test" in dataset.splits
        except UserError:
            pass  # not opened here (not downloaded yet): trust the configuration
    if online:
        return "knn"
    return "rankme" if config.logging.health_samples > 0 else "loss"


@attrs.define
class TrialContext:
    """What every trial of one worker shares.

    Attributes:
        source, name: the base configuration (as :func:`hjepa_kit.config.load_config` takes it) and its name.
        overrides: ``--set`` overrides of the base, applied before the sampled values.
        space: the :class:`~hjepa_kit.tuning.space.SearchSpace`.
        objective: ``knn``, ``rankme``, ``loss`` or a figure's name.
        trials_dir: the ``output_dir`` of every trial's run (``<study>/trials``).
        registry: the plugin registry (reused by every trial).
        worker: this worker's token (stored with its trials, to find those a killed worker left).
    """

    source: Any
    name: str
    overrides: list[str]
    space: Any
    objective: str
    trials_dir: Path
    registry: Any
    worker: str = ""


class ObjectiveWatch:
    """The in-process plugin of one trial: reports the objective each epoch and asks the trainer to stop when pruned."""

    def __init__(self, trial: Any, objective: str, representation: str) -> None:
        self.trial = trial
        self.objective = objective
        self.representation = representation
        self.figure: str | None = None
        self.value: float | None = None
        self.epoch = 0
        self.pruned: str | None = None
        self.logged: list[str] = []

    @hookimpl
    def hjepa_epoch_end(self, trainer: Any, epoch: int, metrics: Any) -> None:
        """Report the objective of epoch ``epoch``; request a stop when the pruner says so."""
        self.logged = sorted(metrics)
        name = figure_name(self.objective, metrics, self.representation)
        if name is None:
            return  # not measured this epoch (e.g. evaluation.online_every_epochs > 1)
        value = float(metrics[name])
        self.figure, self.value, self.epoch = name, value, epoch
        if not math.isfinite(value):
            self.pruned = f"the objective {name} is {value} at epoch {epoch}"
            trainer.request_stop(f"hjepa tune: {self.pruned}")
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned = f"pruned at epoch {epoch} ({name} {value:.4g})"
            trainer.request_stop(f"hjepa tune: trial {self.trial.number} {self.pruned}")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "allocate memory" in text


def _record(trial: Any, started: tuple[float, float], trainer: Any, status: str, reason: str = "", *,
            result: bool = True) -> None:
    """Store how the trial ended (user attributes; ``result`` False keeps it out of the ``--trials`` count).

    ``seconds`` is the trial's wall-clock time, ``cpu_seconds`` the CPU time of its process meanwhile
    (all threads): the cost that does not grow when other jobs share the cores.
    """
    trial.set_user_attr("seconds", round(time.perf_counter() - started[0], 3))
    trial.set_user_attr("cpu_seconds", round(time.process_time() - started[1], 3))
    trial.set_user_attr("epochs", int(getattr(trainer, "epoch", 0) or 0))
    trial.set_user_attr("threads", int(getattr(trainer, "threads", 0) or 0))
    trial.set_user_attr("status", status)
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("result", result)


def run_trial(trial: Any, ctx: TrialContext) -> float:
    """Train one sampled configuration; return the objective, or raise ``TrialPruned`` / :class:`TrialFailed`.

    Raises:
        optuna.TrialPruned: pruned, collapsed or non-finite (the reason is stored).
        TrialFailed: invalid configuration, out of memory, or an error (the reason is stored).
        UserError: the objective was never reported (a mistake of the study: it ends).
        KeyboardInterrupt: the run was interrupted (the study ends; the trial does not count).
    """
    import optuna

    from ..config import load_config
    from ..training.trainer import Trainer

    started = (time.perf_counter(), time.process_time())
    values = ctx.space.sample(trial)
    trial.set_user_attr("worker", ctx.worker)
    run_name = trial_name(trial.number)
    overrides = [*ctx.overrides, *ctx.space.overrides(values), f"name={run_name}", f"output_dir={json.dumps(str(ctx.trials_dir))}"]
    try:
        config = load_config(ctx.source, overrides)
        ctx.registry.resolve(config, ctx.name)  # every key, type, range and component parameter
    except UserError as exc:
        _record(trial, started, None, "failed", f"invalid configuration: {_first_line(exc)}")
        raise TrialFailed(f"invalid configuration: {exc}") from None
    trial.set_user_attr("max_epochs", config.training.epochs)
    watch = ObjectiveWatch(trial, ctx.objective, config.evaluation.representation)
    trainer = None
    try:
        trainer = Trainer(config, plugins=[watch], registry=ctx.registry, source=ctx.name, console=False)
        result = trainer.fit()
    except CollapseDetected as exc:
        _record(trial, started, trainer, "pruned", f"collapsed: {_first_line(exc)}")
        raise optuna.TrialPruned(f"collapsed: {_first_line(exc)}") from None
    except TrainingStopped as exc:
        text = _first_line(exc)
        if "memory" in text:
            _record(trial, started, trainer, "failed", f"out of memory (estimated): {text}")
            raise TrialFailed(text) from None
        if _NON_FINITE.search(text):
            _record(trial, started, trainer, "pruned", f"non-finite: {text}")
            raise optuna.TrialPruned(f"non-finite: {text}") from None
        _record(trial, started, trainer, "failed", f"stopped: {text}")
        raise TrialFailed(text) from None
    except (KeyboardInterrupt, optuna.TrialPruned):
        raise
    except Exception as exc:  # a trial's failure is a result: record it, the study goes on
        if isinstance(exc, (ConfigError, PluginError)):
            what = "invalid configuration"  # a build-time check (masks that do not fit the grid ...), before any step
        else:
            what = "out of memory" if _out_of_memory(exc) else f"error: {type(exc).__name__}"
        _record(trial, started, trainer, "failed", f"{what}: {_first_line(exc)}")  # the traceback is in its training.log
        raise TrialFailed(f"{what}: {exc}") from None
    if result.status == "interrupted":
        _record(trial, started, trainer, "interrupted", "interrupted", result=False)
        raise KeyboardInterrupt
    if watch.pruned and result.status == "stopped":
        _record(trial, started, trainer, "pruned", watch.pruned)
        raise optuna.TrialPruned(watch.pruned)
    if watch.value is None or not math.isfinite(watch.value):
        reason = (f"the objective {ctx.objective!r} was not among the figures of any epoch end; they were: "
                  f"{', '.join(watch.logged) or 'none (no epoch ended: raise training.max_steps or training.epochs)'}")
        _record(trial, started, trainer, "failed", reason, result=False)
        raise UserError(f"--objective {ctx.objective}: {reason}")
    _record(trial, started, trainer, "complete")
    config_file = Path(trainer.log_dir) / "config.yaml"
    if config_file.is_file():
        trial.set_user_attr("config", config_file.read_text(encoding="utf-8"))
    trial.set_user_attr("figure", watch.figure)
    return watch.value
