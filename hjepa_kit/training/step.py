"""One optimizer step of JEPA training, in one place, without waiting for the device.

A step is ``accumulation_steps`` micro-batches and one update::

    forward_backward: masks (seeded) -> model.forward_step -> loss -> backward   (x accumulation_steps)
    optimizer_update: schedules -> gradient norm (clip) -> AdamW -> EMA of the target encoder

The forward itself is :meth:`hjepa_kit.model.HJEPA.forward_step`; :class:`TrainStep` adds the
masks, precision, DDP gradient sync, the loss and the optimizer. It owns the optimizer-step and
accumulation counters: the trainer hands it each micro-batch with :meth:`TrainStep.feed`, once, and
gets a :class:`StepDone` back when that micro-batch ended an optimizer step. DDP's gradient sync
and the update are decided by the same counter, so they always fall on the same micro-batch,
wherever in an epoch a run resumed. The throughput benchmark times the same call.

Nothing in a step reads a value back from the device: loss terms and gradient norms are summed
on the device (:class:`DeviceMeans`) and read once per log line; a step whose loss or gradient
norm is not finite is skipped *on the device* (the fused AdamW kernel's ``found_inf``, as a grad
scaler does: parameters and optimizer state stay as they were, while the EMA still moves the
target encoder) and counted, and the trainer reads the count when it writes a log line or ends an
epoch (:meth:`TrainStep.non_finite`). On a GPU the host thus queues steps ahead of the device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from ..config import RunConfig
from ..contracts import Masks, call_loss
from ..model import HJEPA
from .distributed import DistInfo, no_sync, parameters_match
from .health import HealthMonitor
from .optim import Schedules, gradient_norm, set_schedule

__all__ = ["TrainStep", "StepDone", "DeviceMeans", "NonFinite"]

log = logging.getLogger("hjepa_kit")


class DeviceMeans:
    """Means of figures that stay on the device until they are read (one synchronisation per read)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        """Add one value of each figure (0-d tensors; no synchronisation)."""
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts.get(key, 0) + 1

    def read(self) -> dict[str, float]:
        """The mean of each figure since the last read, as floats; starts anew."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k].reshape(()) for k in keys]).tolist()  # the one synchronisation
        means = {k: v / self.counts[k] for k, v in zip(keys, values)}
        self.sums, self.counts = {}, {}
        return means


@attrs.frozen
class NonFinite:
    """The non-finite steps of a run so far, as read from the device.

    Attributes:
        skipped: optimizer steps skipped because their loss or gradient norm was not finite.
        step: the first of them (1-based), or 0.
        what: ``loss`` or ``gradient norm``: which was not finite at that step.
        value: that figure's value at that step.
        terms: the step's loss terms (summed over its micro-batches).
    """

    skipped: int
    step: int
    what: str
    value: float
    terms: dict[str, float]


@attrs.frozen
class StepDone:
    """What the trainer gets back from the micro-batch that ended an optimizer step.

    Attributes:
        step: optimizer steps done, this one included.
        scheduled: the step's scheduled figures (``lr``, ``wd``, ``momentum``): host values.
        target_tokens: the target tokens of the step's last micro-batch when feature statistics are
            due at this step (``logging.feature_stats_every_steps``), else ``None``.
    """

    step: int
    scheduled: dict[str, float]
    target_tokens: torch.Tensor | None = None


class TrainStep:
    """The micro-batches and the optimizer update of a run; the owner of the step counters.

    Args:
        model: the :class:`~hjepa_kit.model.HJEPA` module.
        loss_fn: the run's loss component.
        masker: the run's masker component.
        optimizer: AdamW over the context encoder and the predictor.
        schedules: the lr / weight-decay / EMA schedules.
        config: the run's configuration (seed, accumulation, clipping, logging intervals).
        device: where the step runs.
        amp_dtype: the autocast dtype (``None``: float32).
        dist: the distributed setup.
        ddp: the DDP wrappers of the context encoder and predictor (``None`` without DDP).
        health: the monitor fed with the pooled target features of the epoch's last images.
        epoch_batches: micro-batches per epoch (the health monitor takes the last images of those
            that make whole optimizer steps).

    Attributes:
        step: optimizer steps done.
        pending: micro-batches accumulated towards the next optimizer step (0 at a step boundary).
        interval, epoch_means: each step's mean loss terms and its gradient norm since the last log
            line / since the epoch began, on the device.
        health_widths: width of each pooled representation fed to ``health``.
    """

    def __init__(self, model: HJEPA, loss_fn: Any, masker: Any, optimizer: torch.optim.Optimizer, schedules: Schedules, *,
                 config: RunConfig, device: torch.device, amp_dtype: torch.dtype | None, dist: DistInfo,
                 ddp: tuple[Any, Any] = (None, None), health: HealthMonitor, epoch_batches: int = 0) -> None:
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
        self.mask_generator = torch.Generator()
        self.accumulation = config.training.accumulation_steps
        # The epoch's micro-batches that make whole optimizer steps (the rest are left over).
        self._whole_step_batches = epoch_batches // self.accumulation * self.accumulation
        self.step = 0
        self.pending = 0
        self._target_tokens: torch.Tensor | None = None
        self.health_widths: dict[str, int] = {}
        self.interval = DeviceMeans()
        self.epoch_means = DeviceMeans()
        self._fused = bool(optimizer.defaults.get("fused"))
        self._step_terms: dict[str, torch.Tensor] = {}  # this step's loss terms, summed over its micro-batches
        self._step_batches = 0  # this step's micro-batches so far
        self._term_names: list[str] = []
        zero = torch.zeros((), device=device)
        self._skipped = zero.long()
        self._first = {"step": zero.long(), "loss_bad": zero.bool(), "loss": zero.clone(), "grad_norm": zero.clone()}
        self._first_terms: torch.Tensor | None = None

    def resume(self, step: int) -> None:
        """Continue counting from ``step`` optimizer steps done, at a step boundary."""
        if self.pending:
            raise RuntimeError(f"cannot resume at step {step}: {self.pending} micro-batch(es) of a step are pending")
        self.step = int(step)

    def feed(self, images: torch.Tensor, *, epoch: int, batch_index: int) -> StepDone | None:
        """One micro-batch: forward and backward, and the optimizer update when it completes a step.

        Args:
            images: the augmented ``(B, C, H, W)`` batch.
            epoch: epochs done (it seeds the masks).
            batch_index: the micro-batch's index in the epoch (it seeds the masks and says whether
                the health monitor takes its features).

        Returns:
            A :class:`StepDone` when this micro-batch ended an optimizer step, else ``None``.
        """
        self.forward_backward(images, epoch=epoch, micro_index=batch_index, sync=self.pending + 1 == self.accumulation)
        self.pending += 1
        if self.pending < self.accumulation:
            return None
        self.pending = 0
        scheduled = self.optimizer_update(self.step)
        self.step += 1
        tokens, self._target_tokens = self._target_tokens, None
        return StepDone(step=self.step, scheduled=scheduled, target_tokens=tokens)

    def masks(self, batch_size: int, epoch: int, micro_index: int) -> Masks:
        """The masks of a micro-batch: a pure function of (seed, epoch, micro-batch, rank), so a resumed run draws the same ones."""
        seed = self.config.seed * 1_000_003 + epoch * 100_003 + micro_index * 101 + self.dist.rank
        self.mask_generator.manual_seed(seed % (2**63))
        masks = self.masker(batch_size, self.mask_generator)
        if self.device.type == "cuda" and masks.context.device.type == "cpu":
            # From pinned memory the copy is asynchronous: the host does not wait for it.
            masks = Masks(context=masks.context.pin_memory(), targets=masks.targets.pin_memory())
        return masks.to(self.device)

    def forward_backward(self, images: torch.Tensor, *, epoch: int, micro_index: int, sync: bool) -> None:
        """Forward and backward of one micro-batch; its loss terms are summed on the device.

        Call :meth:`feed` instead: it decides ``sync`` and when the update runs.

        Args:
            images: the augmented ``(B, C, H, W)`` batch.
            epoch: epochs done (it seeds the masks).
            micro_index: the micro-batch's index in the epoch (it seeds the masks).
            sync: whether DDP all-reduces the gradients after this backward (the step's last micro-batch).
        """
        accumulation = self.accumulation
        masks = self.masks(images.shape[0], epoch, micro_index)
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            with no_sync(self.ddp, not sync):
                out = self.model.forward_step(images, masks, *self.ddp)
                loss_out = call_loss(self.loss_fn, out.predictions, out.targets, out.context, masks, step=self.step)
                (loss_out.total / accumulation).backward()
            left = self._whole_step_batches - micro_index  # micro-batches left in the epoch, this one included
            if self.health.enabled and left * images.shape[0] <= self.health.samples + images.shape[0]:
                pooled = self.model.pooled(out.target)
                self.health_widths = {k: int(v.shape[1]) for k, v in pooled.items()}
                self.health.add(pooled)
        if sync and (self.step + 1) % self.config.logging.feature_stats_every_steps == 0:
            self._target_tokens = out.target.tokens.detach()
        terms = {"loss": loss_out.total, **{f"loss/{k}": v for k, v in loss_out.terms.items()}}
        for key, value in terms.items():
            value = value.detach().float()
            self._step_terms[key] = self._step_terms[key] + value if key in self._step_terms else value
        self._step_batches += 1

    def optimizer_update(self, step: int) -> dict[str, float]:
        """The optimizer update that ends optimizer step ``step + 1``: schedules, clipping, AdamW, EMA.

        Call :meth:`feed` instead: it counts the steps. A step whose loss or gradient norm is not
        finite changes no parameter and no optimizer state (the EMA still moves the target encoder
        towards the unchanged context encoder); it is counted for :meth:`non_finite`. Returns the
        scheduled figures (no device value).
        """
        lr = self.schedules.lr_at(step)
        wd = self.schedules.weight_decay_at(step)
        set_schedule(self.optimizer, lr, wd)
        grad_norm = gradient_norm(self.optimizer, self.config.training.grad_clip).to(self.device)
        terms, batches, self._step_terms, self._step_batches = self._step_terms, self._step_batches, {}, 0
        loss = terms.get("loss", torch.zeros((), device=self.device))
        # Under DDP a rank's loss is its own, but the all-reduced gradient norm is every rank's:
        # judging by it alone keeps the ranks in step (they skip, and stop, together).
        loss_bad = ~torch.isfinite(loss) if not self.dist.enabled else torch.zeros((), dtype=torch.bool, device=self.device)
        bad = loss_bad | ~torch.isfinite(grad_norm)
        self._record_first(bad, step + 1, loss_bad, loss, grad_norm, terms)
        if self._fused:
            self.optimizer.found_inf = bad.float()  # the fused kernel skips the whole update (0-d, like the step counters)
            self.optimizer.step()
            del self.optimizer.found_inf
        elif not bool(bad):  # the unfused AdamW has no device-side skip: this one waits for the device
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = self.schedules.momentum_at(step)
        self.model.update_target(momentum)
        # The step's mean terms (over its micro-batches) and its gradient norm, still on the device.
        figures = {**{k: v / max(batches, 1) for k, v in terms.items()}, "grad_norm": grad_norm}
        self.interval.add(figures)
        self.epoch_means.add(figures)
        every = self.config.training.ddp_check_every_steps
        if self.dist.enabled and every and (step + 1) % every == 0:
            modules = [self.model.context_encoder, self.model.target_encoder, self.model.predictor]
            same, spread = parameters_match(modules, self.dist, self.device)
            if not same:
                raise RuntimeError(f"step {step + 1}: the ranks' parameters differ (largest checksum difference {spread:.3g})")
            log.info("step %d: parameters identical on %d ranks", step + 1, self.dist.world_size)
        return {"lr": lr, "wd": wd, "momentum": momentum}

    def _record_first(self, bad: torch.Tensor, step: int, loss_bad: torch.Tensor, loss: torch.Tensor,
                      grad_norm: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        """Count a non-finite step and keep the figures of the first one, all on the device."""
        self._skipped = self._skipped + bad.long()
        first = bad & (self._first["step"] == 0)
        step_t = torch.full((), step, dtype=torch.long, device=self.device)
        current = {"step": step_t, "loss_bad": loss_bad, "loss": loss.float(), "grad_norm": grad_norm.float()}
        self._first = {k: torch.where(first, current[k], v) for k, v in self._first.items()}
        self._term_names = list(terms)
        stacked = torch.stack([terms[k].float().reshape(()) for k in self._term_names]) if terms else torch.zeros(0, device=self.device)
        if self._first_terms is None or self._first_terms.shape != stacked.shape:
            self._first_terms = torch.where(first, stacked, torch.zeros_like(stacked))
        else:
            self._first_terms = torch.where(first, stacked, self._first_terms)

    def read_interval(self) -> dict[str, float]:
        """The mean of each figure since the last log line (one synchronisation); starts a new interval."""
        return self.interval.read()

    def read_epoch(self) -> dict[str, float]:
        """The mean of each figure since the epoch began (one synchronisation); starts a new epoch."""
        return self.epoch_means.read()

    def non_finite(self) -> NonFinite:
        """Read the non-finite steps from the device (one synchronisation)."""
        first = self._first
        terms = self._first_terms if self._first_terms is not None else torch.zeros(0, device=self.device)
        values = torch.cat([torch.stack([self._skipped.float(), first["step"].float(), first["loss_bad"].float(),
                                         first["loss"], first["grad_norm"]]), terms]).tolist()
        skipped, step, loss_bad, loss, grad_norm = values[:5]
        what = "loss" if loss_bad else "gradient norm"
        names = [k.removeprefix("loss/") for k in self._term_names]
        return NonFinite(skipped=int(skipped), step=int(step), what=what, value=loss if loss_bad else grad_norm,
                         terms={k: v for k, v in zip(names, values[5:]) if k != "loss"})
