"""One optimizer step of JEPA training, in one place.

A step is ``accumulation_steps`` micro-steps and one update::

    micro-step: masks (seeded) -> model.forward_step -> loss -> backward   (x accumulation_steps)
    update:     schedules -> gradient norm (clip) -> AdamW -> EMA of the target encoder

The forward itself is :meth:`hjepa_kit.model.HJEPA.forward_step`; :class:`TrainStep` adds the
masks, precision, DDP gradient sync, the loss and the optimizer. The trainer calls it from its loop
and the throughput benchmark times it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..config import RunConfig
from ..contracts import Masks
from ..model import HJEPA
from .distributed import DistInfo, no_sync, parameters_match
from .health import HealthMonitor
from .optim import gradient_norm, set_schedule
from .schedules import Schedules

__all__ = ["TrainStep"]

log = logging.getLogger("hjepa_kit")

#: ``on_non_finite(what, value, terms)``: raise the error that stops the run.
NonFiniteHandler = Callable[[str, float, Mapping[str, torch.Tensor]], None]


class TrainStep:
    """Micro-steps and the optimizer update of a run.

    Args:
        model: the :class:`~hjepa_kit.model.HJEPA` module.
        loss_fn, masker: the run's loss and masker components.
        optimizer, schedules: AdamW and the lr / weight-decay / EMA schedules.
        config: the run's configuration (seed, accumulation, clipping, logging intervals).
        device, amp_dtype: where the step runs, and the autocast dtype (``None``: float32).
        dist: the distributed setup; ``ddp``: the DDP wrappers of the context encoder and predictor.
        health: the monitor fed with the pooled target features of the epoch's last images.
        on_non_finite: called with a non-finite loss or gradient norm; it raises.

    Attributes:
        last_target_tokens: the target tokens of the last micro-step due for feature statistics
            (``logging.feature_stats_every_steps``), or ``None``.
        health_widths: width of each pooled representation fed to ``health``.
    """

    def __init__(self, model: HJEPA, loss_fn: Any, masker: Any, optimizer: torch.optim.Optimizer, schedules: Schedules, *,
                 config: RunConfig, device: torch.device, amp_dtype: torch.dtype | None, dist: DistInfo,
                 ddp: tuple[Any, Any] = (None, None), health: HealthMonitor, on_non_finite: NonFiniteHandler) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.masker = masker
        self.optimizer = optimizer
        self.schedules = schedules
        self.config = config
        self.device = device
        self.amp_dtype = amp_dtype
        self.dist = dist
        self.ddp = ddp
        self.health = health
        self.on_non_finite = on_non_finite
        self.mask_generator = torch.Generator()
        self.last_target_tokens: torch.Tensor | None = None
        self.health_widths: dict[str, int] = {}

    def masks(self, batch_size: int, epoch: int, micro_index: int) -> Masks:
        """The masks of a micro-batch: a pure function of (seed, epoch, micro-batch, rank), so a resumed run draws the same ones."""
        seed = self.config.seed * 1_000_003 + epoch * 100_003 + micro_index * 101 + self.dist.rank
        self.mask_generator.manual_seed(seed % (2**63))
        return self.masker(batch_size, self.mask_generator).to(self.device)

    def micro(self, images: torch.Tensor, *, epoch: int, micro_index: int, usable: int, step: int) -> dict[str, float]:
        """Forward and backward of one micro-batch; returns its loss terms.

        Args:
            images: the augmented ``(B, C, H, W)`` batch.
            epoch, micro_index: position in the run (they seed the masks).
            usable: micro-batches of the epoch that make whole optimizer steps (the health monitor
                takes the last of them).
            step: optimizer steps done (feature statistics are due every N steps).
        """
        accumulation = self.config.training.accumulation_steps
        masks = self.masks(images.shape[0], epoch, micro_index)
        images = images.to(self.device, non_blocking=True)
        sync = (micro_index + 1) % accumulation == 0
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            with no_sync(self.ddp, not sync):
                out = self.model.forward_step(images, masks, *self.ddp)
                loss_out = self.loss_fn(out.predictions, out.targets, out.context)
                value = float(loss_out.total.detach())
                # Under DDP a rank must not stop alone (the others would wait in all-reduce); the
                # all-reduced gradient norm is non-finite on every rank and stops them together.
                if not math.isfinite(value) and not self.dist.enabled:
                    self.on_non_finite("loss", value, loss_out.terms)
                (loss_out.total / accumulation).backward()
            if self.health.enabled and (usable - micro_index) * images.shape[0] <= self.health.samples + images.shape[0]:
                pooled = self.model.pooled(out.target)
                self.health_widths = {k: int(v.shape[1]) for k, v in pooled.items()}
                self.health.add(pooled)
        if (step + 1) % self.config.logging.feature_stats_every_steps == 0:
            self.last_target_tokens = out.target.tokens.detach()
        terms = {"loss": value}
        terms.update({f"loss/{k}": float(v.detach()) for k, v in loss_out.terms.items()})
        return terms

    def update(self, step: int) -> dict[str, float]:
        """The optimizer update that ends optimizer step ``step + 1``: schedules, clipping, AdamW, EMA."""
        lr = self.schedules.lr_at(step)
        wd = self.schedules.weight_decay_at(step)
        set_schedule(self.optimizer, lr, wd)
        grad_norm = gradient_norm(self.optimizer, self.config.training.grad_clip)
        if not math.isfinite(grad_norm):
            self.on_non_finite("gradient norm", grad_norm, {})
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = self.schedules.momentum_at(step)
        self.model.update_target(momentum)
        every = self.config.training.ddp_check_every_steps
        if self.dist.enabled and every and (step + 1) % every == 0:
            modules = [self.model.context_encoder, self.model.target_encoder, self.model.predictor]
            same, spread = parameters_match(modules, self.dist, self.device)
            if not same:
                raise RuntimeError(f"step {step + 1}: the ranks' parameters differ (largest checksum difference {spread:.3g})")
            log.info("step %d: parameters identical on %d ranks", step + 1, self.dist.world_size)
        return {"lr": lr, "wd": wd, "momentum": momentum, "grad_norm": grad_norm}
