"""Estimate a run's peak memory before it starts, and refuse runs that would not fit.

The estimate adds what is known exactly (the dataset held in RAM, parameters, gradients, AdamW
state, the EMA copy) to the activations autograd keeps for one micro-batch, which are measured,
not guessed: forward passes of one and of two images record the bytes of every tensor saved for
the backward pass, which give a per-image and a fixed part, scaled to the batch. A measured
allowance for kernel caches and allocator slack (``RUNTIME_BYTES``) completes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from ..contracts import Masks, call_loss
from ..errors import TrainingStopped

if TYPE_CHECKING:
    from ..build import Built
    from ..config import RunConfig

log = logging.getLogger("hjepa_kit")

__all__ = ["MemoryEstimate", "saved_activation_bytes", "activation_bytes", "estimate_peak_memory", "check_memory_budget", "check_run_memory"]

_MB = 1024 * 1024
#: The interpreter, torch, timm and faiss once imported, with some room (docs/performance.md, "Memory").
FRAMEWORK_BYTES = 700 * _MB
#: Temporaries during backward on top of the saved activations.
TRANSIENT_FACTOR = 1.5
#: What the process gains in its first ~100 training steps beyond live tensors, on the CPU:
#: oneDNN's kernel cache (a kernel per matrix shape; the masks change the shapes every step)
#: and the allocator's free-but-kept pages. Not computable from the model, so a measured
#: allowance (docs/performance.md, "Memory").
RUNTIME_BYTES = 1024 * _MB


@attrs.frozen
class MemoryEstimate:
    """A peak-memory estimate in bytes, by part."""

    framework: int
    data: int
    parameters: int
    optimizer: int
    activations: int
    runtime: int = 0

    @property
    def total(self) -> int:
        """The estimated peak."""
        return self.framework + self.data + self.parameters + self.optimizer + self.activations + self.runtime

    def describe(self) -> str:
        """One line: total and parts in GB."""
        parts = ", ".join(
            f"{name} {getattr(self, name) / 1024**3:.2f}"
            for name in ("framework", "data", "parameters", "optimizer", "activations", "runtime")
        )
        return f"{self.total / 1024**3:.2f} GB ({parts})"


def _tensor_bytes(tensor: torch.Tensor) -> int:
    try:
        storage = tensor.untyped_storage()
        return storage.nbytes()
    except (RuntimeError, NotImplementedError):
        return tensor.numel() * tensor.element_size()


def saved_activation_bytes(
    model: nn.Module, loss_fn: Any, masker: Any, image_size: int, in_chans: int,
    autocast_dtype: torch.dtype | None, device: torch.device, batch_size: int = 1,
) -> int:
    """Bytes autograd saves for backward in one H-JEPA forward of ``batch_size`` images.

    Storages shared by several saved tensors are counted once.
    """
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        try:
            key = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            key = id(tensor)
        if key not in seen:
            seen.add(key)
            total += _tensor_bytes(tensor)
        return tensor

    images = torch.zeros(batch_size, in_chans, image_size, image_size, device=device)
    masks: Masks = masker(batch_size, torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.train()
    try:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model.forward_step(images, masks)
                call_loss(loss_fn, out.predictions, out.targets, out.context, masks)
    finally:
        model.train(was_training)
    return total


def activation_bytes(
    model: nn.Module, loss_fn: Any, masker: Any, *, batch_size: int, image_size: int, in_chans: int,
    autocast_dtype: torch.dtype | None, device: torch.device,
) -> int:
    """Saved-for-backward bytes of a micro-batch of ``batch_size``: measured at 1 and 2 images.

    Part of what autograd saves does not grow with the batch (under autocast, the bf16 copies of
    the weights: about 2 bytes per parameter), so the batch-2 and batch-1 measurements are
    differenced into a per-image and a fixed part instead of scaling one image's total.
    """
    one = saved_activation_bytes(model, loss_fn, masker, image_size, in_chans, autocast_dtype, device, 1)
    if batch_size == 1:
        return one
    two = saved_activation_bytes(model, loss_fn, masker, image_size, in_chans, autocast_dtype, device, 2)
    per_image = max(two - one, 0)
    return max(one - per_image, 0) + per_image * batch_size


def estimate_peak_memory(
    model: nn.Module, loss_fn: Any, masker: Any, *, batch_size: int, image_size: int, in_chans: int,
    data_bytes: int, autocast_dtype: torch.dtype | None, device: torch.device,
) -> MemoryEstimate:
    """Estimate the peak resident memory of training (host memory; on CUDA, data and framework only)."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    activations = activation_bytes(model, loss_fn, masker, batch_size=batch_size, image_size=image_size, in_chans=in_chans,
                                   autocast_dtype=autocast_dtype, device=device)
    batch_images = batch_size * in_chans * image_size * image_size * 4 * 3  # uint8 -> float, augmented copies
    on_host = device.type == "cpu"
    return MemoryEstimate(
        framework=FRAMEWORK_BYTES,
        data=data_bytes + batch_images,
        parameters=(trainable * 2 + frozen) if on_host else 0,  # weights + gradients, EMA copy
        optimizer=trainable * 2 if on_host else 0,  # AdamW's two moments
        activations=int(activations * TRANSIENT_FACTOR) if on_host else 0,
        runtime=RUNTIME_BYTES if on_host else 0,
    )


def check_memory_budget(estimate: MemoryEstimate, budget_gb: float | None, *, batch_size: int, accumulation_steps: int) -> None:
    """Refuse a run whose estimated peak exceeds ``training.memory_budget_gb`` (None: no budget).

    Raises:
        TrainingStopped: over budget; the message proposes a smaller batch with more accumulation
            (the same effective batch) or a larger budget.
    """
    if budget_gb is None or estimate.total <= budget_gb * 1024**3:
        return
    half = max(batch_size // 2, 1)
    raise TrainingStopped(
        f"the estimated peak memory {estimate.total / 1024**3:.1f} GB exceeds training.memory_budget_gb={budget_gb:g} "
        f"({estimate.describe()}). A smaller batch with more accumulation keeps the "
        f"effective batch, e.g. --set data.batch_size={half} --set training.accumulation_steps={accumulation_steps * batch_size // half} "
        "(configs/cpu_cifar10_fallback.yaml is batch 4 x 8), or raise the budget with --set training.memory_budget_gb=N"
    )


def check_run_memory(
    cfg: RunConfig, built: Built, dataset: Any, *, amp_dtype: torch.dtype | None, device: torch.device,
) -> MemoryEstimate:
    """Estimate a run's peak memory, log it, and refuse a run over ``training.memory_budget_gb``.

    Args:
        cfg: the run's configuration (batch, views, accumulation, budget, training split).
        built: the run's model, masker and loss and the context they were built with.
        dataset: the run's dataset (the bytes of its training split held in RAM count).
        amp_dtype: the autocast dtype (``None``: float32).
        device: where the model runs.
    """
    from ..data.loader import estimate_bytes

    data_bytes = estimate_bytes(dataset, cfg.data.train_split) or 0
    estimate = estimate_peak_memory(
        built.model, built.loss, built.masker, batch_size=cfg.data.batch_size * cfg.data.views, image_size=built.ctx.image_size,
        in_chans=built.ctx.in_chans, data_bytes=data_bytes, autocast_dtype=amp_dtype, device=device,
    )
    budget = cfg.training.memory_budget_gb
    log.info("estimated peak memory: %s; budget %s", estimate.describe(), f"{budget:g} GB" if budget else "none")
    check_memory_budget(estimate, budget, batch_size=cfg.data.batch_size, accumulation_steps=cfg.training.accumulation_steps)
    return estimate
