"""The optimizer and its schedules: AdamW parameter groups, per-step learning rate, weight decay and EMA momentum, the gradient norm.

Biases, normalisation weights and every other 1-D parameter never decay: they sit in a group of
their own (``apply_wd`` False) that the weight-decay schedule leaves at zero. Each schedule is a pure
function of the optimizer step, so a resumed run continues them exactly from the step stored in
its checkpoint. An extended run (``training.extensions``) appends one :class:`Segment` per
extension after the original schedules; each starts from the values the run had reached.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import torch

from ..config import RunConfig

if TYPE_CHECKING:
    from ..config import TrainingConfig

__all__ = ["make_optimizer", "set_schedule", "gradient_norm", "Schedules", "Segment"]


def make_optimizer(model: Any, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the context encoder and predictor; biases, norms and 1-D params never decay.

    The fused implementation is used where PyTorch has it for the parameters' device and dtype.
    """
    decay, no_decay = [], []
    for module in (model.context_encoder, model.predictor):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.training.weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]
    try:
        # One fused kernel per parameter group instead of a dozen tensor ops per parameter
        # (several times faster per step on the CPU; figures on docs/performance.md).
        return torch.optim.AdamW(groups, lr=cfg.training.lr, betas=cfg.training.betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(groups, lr=cfg.training.lr, betas=cfg.training.betas)


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's learning rate, and the weight decay of the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_wd", True):
            group["weight_decay"] = weight_decay


def gradient_norm(optimizer: torch.optim.Optimizer, clip: float | None) -> torch.Tensor:
    """The global norm of the optimizer's gradients, before clipping them to ``clip`` (None: no clipping).

    A 0-d tensor on the parameters' device: reading it is left to the caller, so the step does not
    wait for the device.
    """
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return torch.zeros(())
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad.detach() for p in params])))


def _cosine(start: float, end: float, t: float) -> float:
    """A half cosine from ``start`` (t = 0) to ``end`` (t = 1)."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


@attrs.frozen(kw_only=True)
class Segment:
    """The schedules of one extension of a run (:class:`~hjepa_kit.config.ExtensionConfig`), in optimizer steps.

    Its step ``k`` (0-based from ``start``) is at ``(k + 1) / steps`` of the way: the first step
    moves from the junction's values, the last reaches the end values.
    """

    start: int
    steps: int
    warmup_steps: int
    lr: tuple[float, float, float]
    weight_decay: tuple[float, float]
    momentum: tuple[float, float]

    @classmethod
    def from_extension(cls, ext: Any, steps_per_epoch: int) -> Segment:
        """The segment of extension ``ext`` (an :class:`~hjepa_kit.config.ExtensionConfig`) at ``steps_per_epoch`` steps an epoch."""
        steps = max(ext.epochs * steps_per_epoch, 1)
        return cls(start=ext.from_epoch * steps_per_epoch, steps=steps,
                   warmup_steps=min(int(round(ext.warmup_epochs * steps_per_epoch)), steps - 1),
                   lr=tuple(ext.lr), weight_decay=tuple(ext.weight_decay), momentum=tuple(ext.ema_momentum))

    def _k(self, step: int) -> int:
        return min(step - self.start, self.steps - 1)

    def lr_at(self, step: int) -> float:
        k, (start, peak, end) = self._k(step), self.lr
        if k < self.warmup_steps:
            return start + (peak - start) * (k + 1) / self.warmup_steps
        return _cosine(peak, end, (k - self.warmup_steps + 1) / (self.steps - self.warmup_steps))

    def weight_decay_at(self, step: int) -> float:
        return _cosine(*self.weight_decay, (self._k(step) + 1) / self.steps)

    def momentum_at(self, step: int) -> float:
        start, end = self.momentum
        return start + (end - start) * (self._k(step) + 1) / self.steps


@attrs.frozen(kw_only=True)
class Schedules:
    """Warmup + cosine learning rate, cosine weight decay, linear EMA momentum.

    Attributes:
        total_steps: optimizer steps of the original schedules (the whole run unless it was extended).
        warmup_steps: steps of linear warmup from ``start_lr`` to ``lr``.
        lr, start_lr, min_lr: learning rates (peak, first, final).
        weight_decay, final_weight_decay: weight decay at the first and last step.
        momentum_start, momentum_end: EMA momentum at the first and last step.
        segments: the extensions' schedules, in order, from step ``total_steps`` on.
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
    segments: tuple[Segment, ...] = ()

    @classmethod
    def from_training(cls, training: TrainingConfig, steps_per_epoch: int) -> Schedules:
        """The schedules of a run's ``training`` section with ``steps_per_epoch`` optimizer steps an epoch.

        They span all ``training.epochs`` even where ``max_steps`` stops the run earlier: the
        original schedules up to the first of ``training.extensions``, then one segment per extension.
        """
        extensions = training.extensions
        full = steps_per_epoch * (extensions[0].from_epoch if extensions else training.epochs)
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
            segments=tuple(Segment.from_extension(ext, steps_per_epoch) for ext in extensions),
        )

    def _segment(self, step: int) -> Segment | None:
        """The extension whose steps hold ``step``, or None in the original schedules."""
        found = None
        for segment in self.segments:
            if step >= segment.start:
                found = segment
        return found

    def _progress(self, step: int) -> float:
        return min(max(step, 0) / max(self.total_steps, 1), 1.0)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        if (segment := self._segment(step)) is not None:
            return segment.lr_at(step)
        if step < self.warmup_steps:
            return self.start_lr + (self.lr - self.start_lr) * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def weight_decay_at(self, step: int) -> float:
        """Weight decay of optimizer step ``step`` (cosine from start to final value)."""
        if (segment := self._segment(step)) is not None:
            return segment.weight_decay_at(step)
        t = self._progress(step)
        return self.final_weight_decay + 0.5 * (self.weight_decay - self.final_weight_decay) * (1.0 + math.cos(math.pi * t))

    def momentum_at(self, step: int) -> float:
        """EMA momentum applied after optimizer step ``step`` (linear from start to end)."""
        if (segment := self._segment(step)) is not None:
            return segment.momentum_at(step)
        t = self._progress(step)
        return self.momentum_start + (self.momentum_end - self.momentum_start) * t
