"""Extending a finished run (``hjepa train --resume auto --extend-epochs N``), and resuming with another length.

A finished run's schedules have ended: its learning rate sits at its floor and its EMA momentum
near 1. Resuming it with a larger ``training.epochs`` alone would stretch the original schedules
over the new length, so the learning rate would jump back up and the momentum drop. An extension
instead appends new schedules that start from the values the run had reached
(:class:`~hjepa_kit.config.ExtensionConfig`, :class:`~hjepa_kit.training.optim.Segment`):

- ``tail`` (the default): a new cosine from the current learning rate down to ``training.min_lr``:
  the learning rate never rises, the run goes on settling (more epochs of annealing);
- ``restart``: a linear warmup from the current learning rate back to ``training.lr`` over
  ``training.warmup_epochs`` (at most half the extension), then a cosine to ``training.min_lr``: a
  warm restart, as SGDR (Loshchilov & Hutter, 2017) and the re-warming of continued pretraining
  (Ibrahim et al., 2024), for an extension meant to move the weights again.

In both, weight decay follows a cosine and the EMA momentum a line from their current values to
their ends; the momentum never drops. The extension is logged, appended to ``training.extensions``
of the run's resolved configuration and so to every checkpoint: ``--resume auto`` alone continues
an extension that was stopped or killed, to the same weights, and the same ``--extend-epochs``
given again while it is in progress continues it too (a requeued job repeats its command line).

Without ``--extend-epochs``, a ``training.epochs`` other than the checkpoint's is refused for a
finished run (the message says what the schedules would do and names ``--extend-epochs``), and
warned of for a run in progress, whose schedules are then recomputed over the new length.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..config import ExtensionConfig, TrainingConfig
from ..errors import CheckpointError, ConfigError, UserError
from ..params import structure, suggest
from .checkpoint import find_latest
from .optim import Schedules

__all__ = ["MODES", "ExtendRequest", "ResumePoint", "extend_request", "check_extendable", "plan_resume", "describe_extension"]

log = logging.getLogger("hjepa_kit")

#: The ways to extend a run, and what each does to the learning rate.
MODES = {
    "tail": "a new cosine tail from the current learning rate to training.min_lr (the default)",
    "restart": "a warmup from the current learning rate back to training.lr, then a cosine to training.min_lr",
}

_FLAG = "--extend-epochs"


@attrs.frozen
class ExtendRequest:
    """``--extend-epochs`` and ``--extend-mode``: train a finished run ``epochs`` more, scheduled as ``mode`` says."""

    epochs: int
    mode: str = "tail"


def extend_request(epochs: Any = None, mode: Any = None) -> ExtendRequest | None:
    """Check ``extend_epochs`` / ``extend_mode`` (of :func:`hjepa_kit.train` or the command line).

    Raises:
        UserError: a count that is not a whole number of at least 1, an unknown mode, or a mode alone.
    """
    if epochs is None:
        if mode is not None:
            raise UserError(f"--extend-mode {mode} (extend_mode) needs {_FLAG} N (extend_epochs): the epochs to add")
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise UserError(f"{_FLAG} (extend_epochs): expected a whole number of epochs to add, got {epochs!r}")
    if epochs < 1:
        raise UserError(f"{_FLAG} {epochs} (extend_epochs): the epochs to add to a finished run must be at least 1")
    mode = "tail" if mode is None else mode
    if mode not in MODES:
        choices = "; ".join(f"{name}: {text}" for name, text in MODES.items())
        raise UserError(f"--extend-mode {mode!r} (extend_mode): unknown mode{suggest(str(mode), list(MODES))}; choose {choices}")
    return ExtendRequest(epochs=epochs, mode=mode)


def check_extendable(request: ExtendRequest | None, resume: str | os.PathLike[str] | None, checkpoint_dir: Path) -> None:
    """Refuse an extension with nothing to extend, before the run folder is touched.

    Raises:
        UserError: no ``--resume``, or ``--resume auto`` with no checkpoint in ``checkpoint_dir``.
    """
    if request is None:
        return
    if resume is None:
        raise UserError(f"{_FLAG} {request.epochs} extends a finished run: add --resume auto (or --resume CHECKPOINT)")
    if str(resume) == "auto" and find_latest(checkpoint_dir) is None:
        raise UserError(f"{_FLAG} {request.epochs}: there is no checkpoint in {checkpoint_dir} to extend; train the run "
                        "first (without --extend-epochs), or name its folder with --output-dir / --name")


def _evolve(training: TrainingConfig, source: str, **changes: Any) -> TrainingConfig:
    try:
        return attrs.evolve(training, **changes)
    except ValueError as exc:
        raise ConfigError(f"training: {exc}", source) from None


def _saved_plan(state: Mapping[str, Any], path: Path) -> tuple[int, list[ExtensionConfig]] | None:
    """The checkpoint's ``training.epochs`` and ``training.extensions`` (None when it holds no configuration)."""
    training = (state.get("config") or {}).get("training")
    if not isinstance(training, Mapping) or not isinstance(training.get("epochs"), int):
        return None
    problems: list[str] = []
    records = training.get("extensions") or []
    extensions = [structure(ExtensionConfig, r, f"training.extensions[{i}]", problems) for i, r in enumerate(records)]
    if problems:
        raise CheckpointError(f"{path}: its configuration's training.extensions is damaged: {'; '.join(problems)}")
    return int(training["epochs"]), extensions


def _changes(before: Schedules, after: Schedules, step: int) -> str:
    """How the schedules move from the last step done (``step - 1``) to the next one."""
    last = max(step - 1, 0)
    return (f"lr {before.lr_at(last):.3g} -> {after.lr_at(step):.3g}, weight decay {before.weight_decay_at(last):.3g} -> "
            f"{after.weight_decay_at(step):.3g}, EMA momentum {before.momentum_at(last):.6g} -> {after.momentum_at(step):.6g}")


def describe_extension(ext: ExtensionConfig, index: int, steps_per_epoch: int) -> str:
    """The log line of an extension: its epochs and steps and what each schedule does."""
    first, last = ext.from_epoch + 1, ext.from_epoch + ext.epochs
    start, peak, end = ext.lr
    if ext.mode == "tail":
        lr = f"lr {start:.3g} -> {end:.3g} (a new cosine tail from the current learning rate)"
    else:
        lr = f"lr {start:.3g} -> {peak:.3g} over {ext.warmup_epochs:g} warmup epochs, then a cosine to {end:.3g} (a restart)"
    return (f"extension by {ext.epochs} epochs (epochs {first}-{last}, steps {ext.from_epoch * steps_per_epoch + 1}-"
            f"{last * steps_per_epoch}): {lr}; weight decay {ext.weight_decay[0]:.3g} -> {ext.weight_decay[1]:.3g}; "
            f"EMA momentum {ext.ema_momentum[0]:.6g} -> {ext.ema_momentum[1]:.6g}; recorded as training.extensions[{index}]")


@attrs.frozen(kw_only=True)
class ResumePoint:
    """Where a resumed run stands once its checkpoint is restored: what :func:`plan_resume` needs of it.

    Attributes:
        training: the configuration's ``training`` section.
        request: the extension asked for (``--extend-epochs``), or ``None``.
        source: the configuration's file name, for messages.
        steps_per_epoch, epoch, step, batch_in_epoch: the run's length and its restored position.
        lr: the learning rate the optimizer applied last.
        weight_decay: the weight decay it applied last to the parameters that decay (``None``: none decay).
    """

    training: TrainingConfig
    request: ExtendRequest | None
    source: str
    steps_per_epoch: int
    epoch: int
    step: int
    batch_in_epoch: int
    lr: float
    weight_decay: float | None


def _new_extension(training: TrainingConfig, request: ExtendRequest, point: ResumePoint, schedules: Schedules) -> ExtensionConfig:
    """The extension of a finished run, from the values of its last step (lr and weight decay as the optimizer applied them)."""
    lr = point.lr
    wd = training.final_weight_decay if point.weight_decay is None else point.weight_decay
    momentum = schedules.momentum_at(point.step - 1)
    if request.mode == "tail":
        warmup, lrs = 0.0, (lr, lr, min(training.min_lr, lr))
    else:
        warmup, lrs = min(training.warmup_epochs, request.epochs / 2), (lr, training.lr, training.min_lr)
    return ExtensionConfig(from_epoch=point.epoch, epochs=request.epochs, mode=request.mode, warmup_epochs=warmup, lr=lrs,
                           weight_decay=(wd, training.final_weight_decay),
                           ema_momentum=(momentum, max(training.ema_momentum[1], momentum)))


def plan_resume(point: ResumePoint, state: Mapping[str, Any], path: Path) -> TrainingConfig:
    """The ``training`` section a resumed run goes on with, once its checkpoint ``state`` is restored at ``point``.

    It takes the checkpoint's extensions when the configuration predates them, appends the
    extension ``point.request`` asks for, and answers a changed ``training.epochs`` (see the module).

    Raises:
        UserError: an extension of a run that has not finished, a finished run resumed with more
            epochs and no ``--extend-epochs``, or an extended run resumed with another ``training.epochs``.
    """
    training, request, source = point.training, point.request, point.source
    saved = _saved_plan(state, path)
    if saved is None:
        if request is not None:
            raise CheckpointError(f"{path}: the checkpoint holds no training configuration, so it cannot be extended")
        return training
    saved_epochs, saved_extensions = saved
    spe, epoch, step = point.steps_per_epoch, point.epoch, point.step
    if saved_extensions and not training.extensions:  # the configuration predates the extensions: take them
        if request is None and training.epochs not in (saved_extensions[0].from_epoch, saved_epochs):
            raise ConfigError(f"training.epochs is {training.epochs}, but the run in {path} was extended to {saved_epochs} "
                              f"epochs (training.extensions of the checkpoint); to train it longer once it has finished, "
                              f"resume it with {_FLAG} N", source)
        training = _evolve(training, source, epochs=saved_epochs, extensions=list(saved_extensions))
        log.info("the run was extended: its schedules go on over %d epochs as training.extensions of %s says", saved_epochs, path)
    elif training.extensions and training.extensions != saved_extensions:
        log.warning("training.extensions of the configuration differs from that of %s: %s", path,
                    "the configuration's are used" if request is None else "the checkpoint's are extended")
    finished = epoch >= saved_epochs and point.batch_in_epoch == 0
    same = (training.epochs, training.extensions) == (saved_epochs, saved_extensions)
    saved_training = training if same else _evolve(training, source, epochs=saved_epochs, extensions=saved_extensions)
    if request is not None:
        if finished:
            if training.epochs not in (saved_epochs, epoch + request.epochs):
                log.warning("training.epochs=%d of the configuration is set aside: the run in %s has %d epochs, and %s %d "
                            "makes them %d", training.epochs, path, saved_epochs, _FLAG, request.epochs, epoch + request.epochs)
            ext = _new_extension(training, request, point, Schedules.from_training(saved_training, spe))
            training = _evolve(saved_training, source, epochs=epoch + request.epochs, extensions=[*saved_training.extensions, ext])
            log.info("%s", describe_extension(ext, len(training.extensions) - 1, spe))
            return training
        last = training.extensions[-1] if training.extensions else None
        if (last is not None and (last.epochs, last.mode) == (request.epochs, request.mode)
                and last.from_epoch <= epoch and last.from_epoch + last.epochs == training.epochs == saved_epochs):
            log.info("%s %d: the run's extension by %d epochs from epoch %d is in progress (epoch %d of %d done): "
                     "continuing it", _FLAG, request.epochs, last.epochs, last.from_epoch, epoch, saved_epochs)
            return training
        where = f"epoch {epoch} of {saved_epochs}" + (f", micro-batch {point.batch_in_epoch}" if point.batch_in_epoch else "")
        raise UserError(f"{_FLAG} {request.epochs}: the run in {path} has not finished ({where}): resume it without "
                        f"{_FLAG} to finish it, then extend it")
    if training.epochs == saved_epochs:
        if finished:
            log.info("the run in %s has finished its %d epochs: nothing to train (to train it longer: %s N)", path, saved_epochs, _FLAG)
        return training
    change = _changes(Schedules.from_training(saved_training, spe), Schedules.from_training(training, spe), step)
    if finished and training.epochs > saved_epochs:
        more = training.epochs - saved_epochs
        raise UserError(
            f"training.epochs is {training.epochs}, but the run in {path} has finished its {saved_epochs} epochs and its "
            f"schedules have ended. Resuming it so would stretch the original schedules over {training.epochs} epochs: at "
            f"step {step + 1}, {change}. To train it {more} epochs more, leave training.epochs at {saved_epochs} and add "
            f"{_FLAG} {more} (a new cosine tail from the current learning rate), or {_FLAG} {more} --extend-mode restart "
            "(a warmup back to training.lr, then a cosine)"
        )
    if not finished:
        log.warning("training.epochs changed from %d (in %s) to %d: the schedules are recomputed over %d epochs; at step "
                    "%d, %s. Resume with training.epochs=%d to keep them", saved_epochs, path, training.epochs,
                    training.epochs, step + 1, change, saved_epochs)
    return training
