"""Estimate a run's peak memory before it starts, and refuse runs that would not fit.

The estimate adds what is known exactly (the dataset held in RAM, parameters, gradients, AdamW
state, the EMA copy) to the activations autograd keeps for one micro-batch, which are measured,
not guessed: one forward pass of a single image records the bytes of every tensor saved for the
backward pass, and that is scaled by the batch size.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from .contracts import Masks
from .errors import TrainingStopped

__all__ = ["MemoryEstimate", "saved_activation_bytes", "estimate_peak_memory", "check_memory_budget"]

_MB = 1024 * 1024
#: The interpreter, torch, timm and faiss once imported, measured at about 600 MB.
FRAMEWORK_BYTES = 700 * _MB
#: Temporaries during backward and allocator slack on top of the saved activations.
TRANSIENT_FACTOR = 1.5


@attrs.frozen
class MemoryEstimate:
    """A peak-memory estimate in bytes, by part."""

    framework: int
    data: int
    parameters: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        """The estimated peak."""
        return self.framework + self.data + self.parameters + self.optimizer + self.activations

    def describe(self) -> str:
        """One line: total and parts in GB."""
        parts = ", ".join(
            f"{name} {getattr(self, name) / 1024**3:.2f}" for name in ("framework", "data", "parameters", "optimizer", "activations")
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
    autocast_dtype: torch.dtype | None, device: torch.device,
) -> int:
    """Bytes autograd saves for backward in one H-JEPA forward of ONE image.

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

    images = torch.zeros(1, in_chans, image_size, image_size, device=device)
    masks: Masks = masker(1, torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.train()
    try:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            with torch.no_grad():
                target = model.target_encoder(images, return_blocks=tuple(model.predictor.target_blocks))
                targets = model.predictor.make_targets(target, masks)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                predictions, context = model.predict(images, masks)
                loss_fn(predictions, targets, context)
    finally:
        model.train(was_training)
    return total


def estimate_peak_memory(
    model: nn.Module, loss_fn: Any, masker: Any, *, batch_size: int, image_size: int, in_chans: int,
    data_bytes: int, autocast_dtype: torch.dtype | None, device: torch.device,
) -> MemoryEstimate:
    """Estimate the peak resident memory of training (host memory; on CUDA, data and framework only)."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    activations = saved_activation_bytes(model, loss_fn, masker, image_size, in_chans, autocast_dtype, device)
    batch_images = batch_size * in_chans * image_size * image_size * 4 * 3  # uint8 -> float, augmented copies
    on_host = device.type == "cpu"
    return MemoryEstimate(
        framework=FRAMEWORK_BYTES,
        data=data_bytes + batch_images,
        parameters=(trainable * 2 + frozen) if on_host else 0,  # weights + gradients, EMA copy
        optimizer=trainable * 2 if on_host else 0,  # AdamW's two moments
        activations=int(activations * batch_size * TRANSIENT_FACTOR) if on_host else 0,
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
        f"({estimate.describe()}). Use the plan's fallback: a smaller batch with more accumulation keeps the "
        f"effective batch, e.g. --set data.batch_size={half} --set training.accumulation_steps={accumulation_steps * batch_size // half} "
        "(configs/cpu_cifar10_fallback.yaml is batch 4 x 8), or raise the budget with --set training.memory_budget_gb=N"
    )
