"""The H-JEPA module: context encoder, EMA target encoder and predictor, wired together.

:meth:`HJEPA.forward_step` is the one place the JEPA step's forward is written (shapes for ``B``
images, ``M`` target blocks)::

    target  = target_encoder(images)                 # all patches, no grad, (B, N, D)
    targets = predictor.make_targets(target, masks)  # per level (B, M, T_l, D), parameter-free
    context = context_encoder(images, masks.context) # only the context patches, (B, Nc, D)
    preds   = predictor(context.tokens, masks)       # per level, shaped like targets

The trainer, the memory estimate and the benchmarks call it; the loss then takes
``(preds, targets, context)``.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .contracts import EncoderOutput, Masks

__all__ = ["HJEPA", "StepOutput"]


class StepOutput(NamedTuple):
    """What one JEPA forward produces: the loss's inputs and the target encoder's output.

    Attributes:
        predictions: per level, ``(B, M, T_l, D)``, with gradients.
        targets: the same shapes, detached.
        context: the context encoder's ``(B, Nc, D)`` tokens (the regulariser's input).
        target: the target encoder's output over all patches (for health figures and feature statistics).
    """

    predictions: list[Tensor]
    targets: list[Tensor]
    context: Tensor
    target: EncoderOutput


class HJEPA(nn.Module):
    """Context encoder + EMA target encoder + predictor.

    Args:
        encoder: the context encoder (an :class:`~hjepa_kit.contracts.Encoder`); its deep copy,
            frozen, becomes the target encoder.
        predictor: a :class:`~hjepa_kit.contracts.Predictor`.
    """

    def __init__(self, encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.context_encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder)
        self.target_encoder.requires_grad_(False)
        self.target_encoder.eval()

    def train(self, mode: bool = True) -> HJEPA:
        super().train(mode)
        self.target_encoder.eval()  # the target encoder never uses dropout / drop-path
        return self

    def forward_step(self, images: Tensor, masks: Masks, context_encoder: nn.Module | None = None,
                     predictor: nn.Module | None = None) -> StepOutput:
        """The JEPA step's forward: targets from the target encoder (no grad), then predictions from the context.

        ``context_encoder`` / ``predictor`` may be DDP wrappers of this module's own.
        """
        target, targets = self.targets(images, masks)
        predictions, context = self.predict(images, masks, context_encoder, predictor)
        return StepOutput(predictions, targets, context, target)

    @torch.no_grad()
    def targets(self, images: Tensor, masks: Masks) -> tuple[EncoderOutput, list[Tensor]]:
        """The target encoder's output over all patches and the per-level targets made from it (no grad)."""
        output = self.target_encoder(images, return_blocks=tuple(self.predictor.target_blocks))
        return output, [t.detach() for t in self.predictor.make_targets(output, masks)]

    def predict(self, images: Tensor, masks: Masks, context_encoder: nn.Module | None = None,
                predictor: nn.Module | None = None) -> tuple[list[Tensor], Tensor]:
        """Per-level predictions and the ``(B, Nc, D)`` context tokens.

        ``context_encoder`` / ``predictor`` may be DDP wrappers of this module's own.
        """
        encoder = context_encoder if context_encoder is not None else self.context_encoder
        head = predictor if predictor is not None else self.predictor
        context = encoder(images, indices=masks.context).tokens
        return head(context, masks), context

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: ``target = momentum * target + (1 - momentum) * context``, once per optimizer step."""
        target = [p for p in self.target_encoder.parameters()]
        online = [p.detach() for p in self.context_encoder.parameters()]
        if momentum >= 1.0:
            return
        torch._foreach_lerp_(target, online, 1.0 - momentum)
        for tb, ob in zip(self.target_encoder.buffers(), self.context_encoder.buffers()):
            tb.copy_(ob)

    @torch.no_grad()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """Frozen features for evaluation, ``(B, D)`` each.

        ``encoder`` is the target encoder's patch tokens averaged over the grid; ``level0``,
        ``level1`` ... are the predictor's per-level features of the same forward pass.
        """
        output: EncoderOutput = self.target_encoder(images, return_blocks=tuple(self.predictor.target_blocks))
        return self.pooled(output)

    @torch.no_grad()
    def pooled(self, output: EncoderOutput) -> dict[str, Tensor]:
        """Every representation's ``(B, D)`` float32 features from a target-encoder output over all patches."""
        features = {"encoder": output.tokens.mean(dim=1)}
        features.update(self.predictor.level_features(output))
        return {k: v.float() for k, v in features.items()}
