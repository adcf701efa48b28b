"""Early stopping: end a run when a figure logged per epoch stops improving.

The state (the best value, its epoch, the epochs since, whether the run stopped) travels in every
checkpoint, so a resumed run keeps counting where it left off, and resuming a run that stopped
early stops again at once, saying why, unless the configuration now allows more patience.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import EarlyStoppingConfig
from .health import select_metric

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Counts epochs without improvement of ``config.metric``.

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

    def update(self, metrics: Mapping[str, float], epoch: int) -> bool:
        """Record an epoch's figures; True when the run should stop now."""
        name, value, higher = select_metric(self.config.metric, metrics, self.representation)
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
