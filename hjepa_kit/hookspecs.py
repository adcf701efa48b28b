"""The hooks a plugin may implement: the whole contract between hjepa-kit and its plugins.

There are two groups.

**Registration hooks** are called once, when the plugin manager is set up. Each receives a
``register`` callback and calls it once per component::

    register(name, factory, *, params=ParamsClass, summary="one line")

``factory(params, ctx)`` builds the component from an instance of ``params`` (an attrs class
declared with :func:`hjepa_kit.params.param`) and the :class:`~hjepa_kit.contracts.BuildContext`.
New keyword arguments may be added to ``register`` in later versions; existing plugins keep working.

**Lifecycle hooks** are called during a run, on every registered plugin that implements them:
plugins from entry points, plugins passed as ``train(..., plugins=[...])``, and the callback
components the run's configuration selects. Their return values are ignored. They run on rank 0
only under distributed training.

Lifecycle, in order::

    hjepa_fit_start
      ( hjepa_step_end x steps
        [hjepa_evaluation_end]        online evaluation, when due
        hjepa_checkpoint_saved x n    latest, periodic, best
        hjepa_epoch_end ) x epochs
    hjepa_checkpoint_saved            final (or interrupted)
    hjepa_fit_end(status)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pluggy

PROJECT = "hjepa_kit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The callback type passed to registration hooks.
Register = Callable[..., None]


class TrainerView(Protocol):
    """What a lifecycle hook may read of the running trainer (:class:`~hjepa_kit.training.trainer.Trainer` provides it).

    Attributes:
        config: the run's :class:`~hjepa_kit.config.RunConfig`.
        log_dir, checkpoint_dir: the run's folders.
        model: the :class:`~hjepa_kit.model.HJEPA` module being trained.
        step, epoch: optimizer steps and epochs done.
        steps_per_epoch, total_steps: optimizer steps per epoch and in the whole run.
        device: where training runs.
        last_metrics: the figures of the last step or epoch.
        rank, world_size: this process's rank and the number of processes.
    """

    config: Any
    log_dir: Path
    checkpoint_dir: Path
    model: Any
    step: int
    epoch: int
    steps_per_epoch: int
    total_steps: int
    device: Any
    last_metrics: dict[str, float]

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def request_stop(self, reason: str) -> None:
        """Stop after the current optimizer step with status ``stopped`` (all ranks together)."""


# --- registration -----------------------------------------------------------------------------


@hookspec
def hjepa_register_encoders(register: Register) -> None:
    """Register encoders (see :class:`~hjepa_kit.contracts.Encoder`).

    Args:
        register: ``register(name, factory, *, params=ParamsClass, summary="")``; the factory
            returns an ``nn.Module`` meeting the encoder contract. The core copies it for the EMA
            target encoder.
    """


@hookspec
def hjepa_register_maskers(register: Register) -> None:
    """Register maskers (see :class:`~hjepa_kit.contracts.Masker`).

    Args:
        register: as for :func:`hjepa_register_encoders`; ``ctx.grid_size`` is known. The factory
            returns a callable ``masker(batch_size, generator) -> Masks`` and raises
            :class:`~hjepa_kit.errors.ConfigError` when its parameters cannot fit the grid.
    """


@hookspec
def hjepa_register_predictors(register: Register) -> None:
    """Register predictors (see :class:`~hjepa_kit.contracts.Predictor`).

    Args:
        register: as for :func:`hjepa_register_encoders`; ``ctx.embed_dim``, ``ctx.grid_size`` and
            ``ctx.depth`` are known.
    """


@hookspec
def hjepa_register_losses(register: Register) -> None:
    """Register losses (see :class:`~hjepa_kit.contracts.Loss`).

    Args:
        register: as for :func:`hjepa_register_encoders`; ``ctx.num_levels`` and
            ``ctx.level_weights`` are known. The factory returns a callable
            ``loss(predictions, targets, context) -> LossOutput``.
    """


@hookspec
def hjepa_register_evaluators(register: Register) -> None:
    """Register evaluators (see :class:`~hjepa_kit.contracts.Evaluator`).

    Args:
        register: as for :func:`hjepa_register_encoders`. The factory returns a callable
            ``evaluator(features, default) -> dict[str, float] | EvalResult`` whose figures are
            named ``<prefix>/<figure>``.
    """


@hookspec
def hjepa_register_datasets(register: Register) -> None:
    """Register datasets (see :class:`~hjepa_kit.contracts.Dataset`).

    Args:
        register: as for :func:`hjepa_register_encoders`; ``ctx.image_size`` is the configured
            training resolution.
    """


@hookspec
def hjepa_register_callbacks(register: Register) -> None:
    """Register callbacks: objects that implement lifecycle hooks below.

    Args:
        register: as for :func:`hjepa_register_encoders`. The built object is registered with the
            plugin manager for the run, so its ``hjepa_*`` methods marked with ``@hookimpl`` are called.
    """


# --- lifecycle --------------------------------------------------------------------------------


@hookspec
def hjepa_fit_start(trainer: TrainerView) -> None:
    """Called once before the first step (also when resuming).

    Args:
        trainer: the running :class:`~hjepa_kit.training.trainer.Trainer` (``config``, ``log_dir``,
            ``checkpoint_dir``, ``model``, ``step``, ``epoch``, ``steps_per_epoch``, ``total_steps``,
            ``device``, ``rank``, ``world_size``).
    """


@hookspec
def hjepa_step_end(trainer: TrainerView, step: int, metrics: Mapping[str, float]) -> None:
    """Called after every optimizer step.

    Args:
        trainer: the running trainer.
        step: the number of optimizer steps done so far (1 after the first).
        metrics: at every step the host's figures: ``lr``, ``wd``, ``momentum``, ``images_per_s``,
            ``eta_s``. On the steps that write a log line (``logging.interval_steps``) also the
            figures read from the device: ``loss``, ``loss/<term>`` and ``grad_norm``, means over the
            interval (the step never waits for the device in between), ``skipped_steps`` when a
            non-finite step was skipped, and ``features/...`` when feature statistics were due.
    """


@hookspec
def hjepa_epoch_end(trainer: TrainerView, epoch: int, metrics: Mapping[str, float]) -> None:
    """Called after every epoch.

    Args:
        trainer: the running trainer.
        epoch: the number of epochs done so far (1 after the first).
        metrics: epoch means of the step metrics, plus online evaluation figures when run.
    """


@hookspec
def hjepa_checkpoint_saved(trainer: TrainerView, path: str, reason: str) -> None:
    """Called after a checkpoint file was written atomically.

    Args:
        trainer: the running trainer.
        path: the checkpoint file.
        reason: ``latest``, ``periodic``, ``best``, ``final`` or ``interrupted``.
    """


@hookspec
def hjepa_evaluation_end(trainer: TrainerView | None, results: Mapping[str, Any]) -> None:
    """Called after an evaluation (online during training, or ``hjepa evaluate``).

    Args:
        trainer: the running trainer, or ``None`` for a stand-alone evaluation.
        results: figure name -> value.
    """


@hookspec
def hjepa_fit_end(trainer: TrainerView, status: str) -> None:
    """Called once when the run ends, however it ends.

    Args:
        trainer: the trainer.
        status: ``completed``, ``stopped`` (``training.max_steps`` reached, early stopping or
            ``trainer.request_stop``), ``collapsed`` (collapse detected with
            ``training.on_collapse: stop``), ``failed`` or ``interrupted`` (SIGINT/SIGTERM).
    """
