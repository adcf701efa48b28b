"""The end-of-epoch policy: from an epoch's figures, did the representation collapse, is this epoch
the best so far, and does early stopping end the run.

:class:`EpochPolicy` takes the epoch's figures and returns an :class:`EpochDecision`; it keeps what
the decisions remember between epochs (the best record, the early-stopping count, the last healthy
checkpoint), and the first two travel in every checkpoint. The trainer acts on the decision: it
answers a collapse (:meth:`EpochPolicy.answer_collapse`), asks to stop, and writes the checkpoints.

- A collapse is the evaluated representation's pooled RankMe (``health/rankme/<representation>``)
  judged by :func:`~hjepa_kit.evaluation.metrics.judge_collapse` at the ``logging`` thresholds.
- :func:`select_metric` turns ``checkpoint.best_metric`` or ``training.early_stopping.metric``
  (``auto``, ``knn``, ``rankme``, ``loss`` or any logged figure) into one figure and its direction.
- :func:`new_best` and :class:`EarlyStopping` compare that figure across epochs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..config import EarlyStoppingConfig, RunConfig
from ..errors import CollapseDetected
from ..evaluation.metrics import judge_collapse
from .health import HEALTH_PREFIX
from .remedies import collapse_message

__all__ = ["EpochPolicy", "EpochDecision", "EarlyStopping", "select_metric", "new_best", "pooled_collapse"]

log = logging.getLogger("hjepa_kit")


def select_metric(
    criterion: str, metrics: Mapping[str, float], representation: str, headline: str | None = None
) -> tuple[str, float, bool]:
    """The figure ``criterion`` names in ``metrics``: ``(name, value, higher_is_better)``.

    ``headline`` is the online evaluator's headline figure (``online/`` + what it declared as
    :attr:`~hjepa_kit.contracts.EvalResult.headline`, e.g. ``online/knn/top1@20``). ``auto``: the
    headline when it was logged this epoch, else the RankMe of ``representation``, else the loss.
    ``knn`` / ``rankme`` / ``loss``: that figure (the loss when it is missing, with a warning for
    ``rankme``). Any other value is a figure's own name (``online/knn/top1@20``,
    ``health/rankme/level1``, ``loss/level0``); names containing ``loss`` are minimised, the
    others maximised.
    """
    online = headline if headline is not None and headline in metrics else None
    rankme = HEALTH_PREFIX + representation
    if criterion == "auto":
        name = online or (rankme if rankme in metrics else "loss")
    elif criterion == "knn":
        name = online or "loss"
    elif criterion == "rankme":
        name = rankme
    else:
        name = criterion
    if name not in metrics and name != "loss":
        log.warning("the figure %r (from %r) was not logged this epoch; using the loss. Logged figures: %s",
                    name, criterion, ", ".join(sorted(metrics)))
        name = "loss"
    value = float(metrics.get(name, math.inf))
    return name, value, "loss" not in name


def new_best(
    best: Mapping[str, Any], metrics: Mapping[str, float], criterion: str, epoch: int, representation: str = "encoder",
    headline: str | None = None,
) -> dict[str, Any] | None:
    """The new best record (``metric``, ``value``, ``epoch``) where ``metrics`` beat ``best``, else None.

    ``criterion`` is ``checkpoint.best_metric``, resolved by :func:`select_metric`. A change of
    metric always makes a new best.
    """
    name, value, higher = select_metric(criterion, metrics, representation, headline)
    if not best or best.get("metric") != name or (value > best["value"] if higher else value < best["value"]):
        return {"metric": name, "value": value, "epoch": epoch}
    return None


class EarlyStopping:
    """Counts epochs without improvement of ``config.metric``.

    The state (the best value, its epoch, the epochs since) travels in every checkpoint, so a
    resumed run keeps counting where it left off, and resuming a run that stopped early stops
    again at once, saying why, unless the configuration now allows more patience.

    Args:
        config: ``training.early_stopping``.
        representation: ``evaluation.representation`` (what ``auto`` and ``rankme`` measure).
    """

    def __init__(self, config: EarlyStoppingConfig, representation: str) -> None:
        self.config = config
        self.representation = representation
        self.best: float | None = None
        self.best_epoch = 0
        self.metric = ""
        self.stale = 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        return {"metric": self.metric, "best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's state (an empty state starts afresh)."""
        self.metric = str(state.get("metric", ""))
        self.best = state.get("best")
        self.best_epoch = int(state.get("best_epoch", 0))
        self.stale = int(state.get("stale", 0))

    @property
    def exhausted(self) -> bool:
        """Whether the patience is used up."""
        return self.stale >= self.config.patience

    def reason(self) -> str:
        """Why the run stops (for the log)."""
        return (f"early stopping: {self.metric} has not improved by more than {self.config.min_delta:g} for "
                f"{self.stale} epochs (training.early_stopping.patience={self.config.patience}); "
                f"best {self.best:.4g} at epoch {self.best_epoch}")

    def update(self, metrics: Mapping[str, float], epoch: int, headline: str | None = None) -> bool:
        """Record an epoch's figures; True when the run should stop now."""
        name, value, higher = select_metric(self.config.metric, metrics, self.representation, headline)
        if self.config.mode != "auto":
            higher = self.config.mode == "max"
        if name != self.metric:  # first epoch, or the figure changed (e.g. a resumed run with labels)
            self.metric, self.best, self.best_epoch, self.stale = name, value, epoch, 0
            return False
        delta = value - self.best if higher else self.best - value
        if delta > self.config.min_delta:
            self.best, self.best_epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        return self.exhausted


def pooled_collapse(
    metrics: Mapping[str, float], widths: Mapping[str, int], representation: str, *, std_threshold: float, rank_fraction: float
) -> str | None:
    """Why the epoch's figures show a collapse, or None.

    Only the evaluated ``representation``'s pooled RankMe counts: the others may be low-rank by
    construction (the mean over 64 mostly-background tokens of a digit spans ~15 of 192 dimensions
    in a run that learns well, while the max-pooled tokens of the same run span ~120). Pooled
    features carry no std figure, so only their rank is judged.
    """
    value, width = metrics.get(HEALTH_PREFIX + representation), widths.get(representation)
    if value is None or not width:
        return None
    return judge_collapse(f"the pooled '{representation}' embeddings", width, rank=value,
                          std_threshold=std_threshold, rank_fraction=rank_fraction).reason


@attrs.frozen
class EpochDecision:
    """What an epoch's figures decide.

    Attributes:
        collapse: why the evaluated representation collapsed, or None.
        stop: why early stopping ends the run, or None.
        best: the new best record (``metric``, ``value``, ``epoch``) when this epoch is the best
            so far (``best_model.pth``), else None.
    """

    collapse: str | None
    stop: str | None
    best: dict[str, Any] | None


class EpochPolicy:
    """A run's end-of-epoch decisions and what they remember.

    Args:
        config: the run's configuration (``checkpoint.best_metric``, ``training.early_stopping``,
            ``training.on_collapse``, ``evaluation.representation`` and ``logging.collapse_*``).

    Attributes:
        best: the best record so far (``{}`` before the first epoch).
        early_stopping: the early-stopping count, or None without ``training.early_stopping``.
        healthy_checkpoint: the last checkpoint written before any collapse (the one a stop keeps).
    """

    def __init__(self, config: RunConfig) -> None:
        self.criterion = config.checkpoint.best_metric
        self.representation = config.evaluation.representation
        self.on_collapse = config.training.on_collapse
        self.thresholds = {"std_threshold": config.logging.collapse_std_threshold,
                           "rank_fraction": config.logging.collapse_rank_fraction}
        stopping = config.training.early_stopping
        self.early_stopping = EarlyStopping(stopping, self.representation) if stopping else None
        self.best: dict[str, Any] = {}
        self.healthy_checkpoint: Path | None = None

    def stopping_state(self) -> dict[str, Any]:
        """The early-stopping count as a checkpoint keeps it (``{}`` without early stopping)."""
        return self.early_stopping.state_dict() if self.early_stopping else {}

    def restore(self, best: Mapping[str, Any], early_stopping: Mapping[str, Any], checkpoint: Path) -> None:
        """Continue from a checkpoint's state (``checkpoint`` is the healthy one it was read from)."""
        self.best, self.healthy_checkpoint = dict(best), checkpoint
        if self.early_stopping is not None:
            self.early_stopping.load_state_dict(early_stopping)

    def stopped_before(self, epoch: int, epochs: int) -> str | None:
        """Why a resumed run that had stopped early stops again at once (its patience is still used up), or None."""
        if self.early_stopping is None or not self.early_stopping.exhausted or epoch >= epochs:
            return None
        return (self.early_stopping.reason() + " (resumed after the stop: raise the patience "
                "or set training.early_stopping to null to train on)")

    def decide(
        self, metrics: Mapping[str, float], epoch: int, *, widths: Mapping[str, int], headline: str | None = None,
        main: bool = True,
    ) -> EpochDecision:
        """Judge epoch ``epoch``'s figures.

        Args:
            metrics: the epoch's figures (loss, ``health/rankme/*``, ``online/*``).
            widths: the width of each pooled representation.
            headline: the online evaluator's headline figure (see :func:`select_metric`).
            main: whether this is rank 0 (early stopping counts there alone; the ranks stop together).

        Returns:
            The decision. It updates the early-stopping count but not :attr:`best`: the caller sets
            that once it has written the epoch's ``latest.pth`` (which keeps the previous record).
        """
        collapse = pooled_collapse(metrics, widths, self.representation, **self.thresholds)
        stop = None
        if self.early_stopping is not None and main and self.early_stopping.update(metrics, epoch, headline):
            stop = self.early_stopping.reason()
        best = new_best(self.best, metrics, self.criterion, epoch, self.representation, headline)
        return EpochDecision(collapse=collapse, stop=stop, best=best)

    def answer_collapse(self, reason: str | None, *, epoch: int, step: int, commands: Callable[[Path | None], str]) -> None:
        """Answer a collapse (none where ``reason`` is None) as ``training.on_collapse`` says: a warning, or a stop.

        Args:
            reason: why the features collapsed (:attr:`EpochDecision.collapse`, or the target
                tokens' :func:`~hjepa_kit.evaluation.metrics.judge_collapse` reason).
            epoch, step: where (the epoch under way, counted from 1).
            commands: the fallback commands resuming from a checkpoint (:mod:`~hjepa_kit.training.remedies`).

        Raises:
            CollapseDetected: with ``training.on_collapse=stop``; the message names the last
                healthy checkpoint, which the run keeps, and the commands resuming from it.
        """
        if reason is None:
            return
        last = self.healthy_checkpoint
        message = collapse_message(reason, epoch=epoch, step=step, last=last, commands=commands(last))
        if self.on_collapse == "stop":
            raise CollapseDetected(message + "\n(training.on_collapse=stop; set it to warn to train on)")
        log.warning("%s", message)
