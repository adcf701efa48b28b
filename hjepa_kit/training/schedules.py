"""Per-optimizer-step schedules: learning rate, weight decay and EMA momentum.

Each schedule is a pure function of the optimizer step, so a resumed run continues them exactly
from the step stored in its checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ..config import TrainingConfig

__all__ = ["Schedules"]


@attrs.frozen(kw_only=True)
class Schedules:
    """Warmup + cosine learning rate, cosine weight decay, linear EMA momentum.

    Attributes:
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warmup from ``start_lr`` to ``lr``.
        lr, start_lr, min_lr: learning rates (peak, first, final).
        weight_decay, final_weight_decay: weight decay at the first and last step.
        momentum_start, momentum_end: EMA momentum at the first and last step.
    """

    total_steps: int
    warmup_steps: int
    lr: float
    start_lr: float
    min_lr: float
    weight_decay: float
    final_weight_decay: float
    momentum_start: float
    momentum_end: float

    @classmethod
    def from_training(cls, training: TrainingConfig, steps_per_epoch: int) -> Schedules:
        """The schedules of a run's ``training`` section with ``steps_per_epoch`` optimizer steps an epoch.

        They span all ``training.epochs`` even where ``max_steps`` stops the run earlier.
        """
        full = steps_per_epoch * training.epochs
        return cls(
            total_steps=full,
            warmup_steps=min(int(round(training.warmup_epochs * steps_per_epoch)), full),
            lr=training.lr,
            start_lr=training.start_lr,
            min_lr=training.min_lr,
            weight_decay=training.weight_decay,
            final_weight_decay=training.final_weight_decay,
            momentum_start=training.ema_momentum[0],
            momentum_end=training.ema_momentum[1],
        )

    def _progress(self, step: int) -> float:
        return min(max(step, 0) / max(self.total_steps, 1), 1.0)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.start_lr + (self.lr - self.start_lr) * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def weight_decay_at(self, step: int) -> float:
        """Weight decay of optimizer step ``step`` (cosine from start to final value)."""
        t = self._progress(step)
        return self.final_weight_decay + 0.5 * (self.weight_decay - self.final_weight_decay) * (1.0 + math.cos(math.pi * t))

    def momentum_at(self, step: int) -> float:
        """EMA momentum applied after optimizer step ``step`` (linear from start to end)."""
        t = self._progress(step)
        return self.momentum_start + (self.momentum_end - self.momentum_start) * t
