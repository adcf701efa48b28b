"""What flows between components: the contract every plugin implements.

Shapes use ``B`` batch, ``N`` patches, ``D`` embedding width, ``M`` target blocks, ``Nc`` context
patches, ``Nt`` patches per target block. Patch indices are row-major over the encoder's patch
grid: index ``r * grid_w + c``.

Components of each kind are built by a factory ``factory(params, ctx)`` where ``params`` is an
instance of the component's parameter class (an attrs class, see :mod:`hjepa_kit.params`) and
``ctx`` is the :class:`BuildContext` that carries what earlier components settled (image size,
patch grid, embedding width, number of hierarchy levels, device). Sizes are never configured twice.

The evaluator's contract (:class:`FeatureSet`, :class:`EvalResult`, :class:`Grade`, :class:`EvalModel`,
:class:`Evaluator` ...) is written in :mod:`hjepa_kit.evaluator_contracts` and re-exported here,
with the rest: plugins import every contract from this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from . import evaluator_contracts
from .image_data import ImageData
from .evaluator_contracts import (
    TOKEN_DTYPES,
    EvalModel,
    EvalResult,
    Evaluator,
    FeatureSet,
    Grade,
    needs_model,
    needs_tokens,
)

__all__ = [
    "KINDS",
    "BuildContext",
    "Masks",
    "EncoderOutput",
    "LossOutput",
    "ImageData",
    "TimmExport",
    "Encoder",
    "Masker",
    "Predictor",
    "Loss",
    "call_loss",
    "Dataset",
    "SizedDataset",
    "StreamingDataset",
    *evaluator_contracts.__all__,  # re-exported: hjepa_kit.contracts is the one import path
]

#: The component kinds, in the order a run builds them.
KINDS: tuple[str, ...] = ("dataset", "encoder", "masker", "predictor", "loss", "evaluator", "callback")


@attrs.define(kw_only=True)
class BuildContext:
    """What is known while a run's components are built, in order.

    The core fills the first group from the configuration; each later field is filled by the core
    from the component built before it (``grid_size``, ``patch_size`` and ``embed_dim`` from the
    encoder; ``num_levels`` and ``level_weights`` from the predictor).

    Attributes:
        image_size: side of the square images the encoder sees (after augmentation).
        in_chans: number of image channels.
        device: where the model runs.
        num_classes: number of labelled classes of the dataset, if it has labels.
        views: augmented views of each image in a training micro-batch (``data.views``): the step's
            ``(V * B, C, H, W)`` images hold view ``v`` of image ``i`` at row ``v * B + i``.
        grid_size: ``(rows, cols)`` of the encoder's patch grid.
        patch_size: side of one square patch in pixels.
        embed_dim: width ``D`` of the encoder's tokens.
        depth: number of transformer blocks of the encoder.
        num_levels: number of hierarchy levels the predictor predicts.
        level_weights: the loss weight of each level, ``len == num_levels``.
        extra: free-form values plugins may hand on to later plugins.
    """

    image_size: int
    in_chans: int = 3
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    num_classes: int | None = None
    views: int = 1
    grid_size: tuple[int, int] | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_levels: int | None = None
    level_weights: tuple[float, ...] | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def num_patches(self) -> int:
        """Number of patches of the grid (requires ``grid_size``)."""
        if self.grid_size is None:
            raise RuntimeError("grid_size is not known yet: build the encoder first")
        return self.grid_size[0] * self.grid_size[1]


@attrs.frozen
class Masks:
    """The patches a step shows the context encoder and the patches it must predict.

    Attributes:
        context: ``(B, Nc)`` int64 indices of the visible context patches; no index appears in
            ``targets`` of the same sample.
        targets: ``(B, M, Nt)`` int64 indices of the ``M`` target blocks' patches.
    """

    context: Tensor
    targets: Tensor

    def to(self, device: torch.device | str) -> Masks:
        """The same masks on ``device`` (non-blocking)."""
        return Masks(context=self.context.to(device, non_blocking=True), targets=self.targets.to(device, non_blocking=True))


@attrs.frozen
class EncoderOutput:
    """What an encoder returns.

    Attributes:
        tokens: ``(B, N, D)`` final (normalised) tokens of the encoded patches, in the order of the
            indices given (all patches in grid order when no indices were given).
        blocks: block index -> ``(B, N, D)`` output of that transformer block, for the blocks asked
            for with ``return_blocks``. Negative indices count from the end (``-1`` is the last).
    """

    tokens: Tensor
    blocks: Mapping[int, Tensor] = attrs.field(factory=dict)


@attrs.frozen
class LossOutput:
    """A loss value and its named parts.

    Attributes:
        total: scalar tensor to back-propagate.
        terms: named scalar tensors for logging (``level0``, ``level1``, ``variance`` ...). They are
            detached by the trainer before logging.
    """

    total: Tensor
    terms: Mapping[str, Tensor] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class TimmExport:
    """What an encoder's optional ``export_timm()`` returns: itself as a plain timm model (``hjepa export``).

    ``timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=...),
    **model_args)`` with ``state_dict`` saved in that file must build a model whose
    ``forward(images)`` returns the ``encoder`` representation, ``(B, D)``: the mean of the
    encoder's final normed patch tokens (``HJEPA.features``). The export checks this numerically.

    Attributes:
        architecture: a registered timm model name (``vit_tiny_patch16_224``).
        model_args: keyword arguments of ``timm.create_model`` (JSON values), including
            ``num_classes=0``; they override the architecture's defaults (image and patch size ...).
        state_dict: the timm model's parameter names -> tensors (position embeddings included).
    """

    architecture: str
    model_args: Mapping[str, Any]
    state_dict: Mapping[str, Tensor]


@runtime_checkable
class Encoder(Protocol):
    """A patch encoder (an ``nn.Module``), built on the CPU; the core moves it to ``ctx.device``.

    Attributes:
        embed_dim: token width ``D``.
        patch_size: side of a square patch in pixels.
        grid_size: ``(rows, cols)`` of the patch grid.
        depth: number of transformer blocks (valid ``return_blocks`` are ``-depth .. depth-1``).

    An encoder that plain timm can load also offers ``export_timm() -> TimmExport`` (optional:
    ``hjepa export --format timm`` refuses an encoder without it and names ``--format onnx``).
    """

    embed_dim: int
    patch_size: int
    grid_size: tuple[int, int]
    depth: int

    def __call__(
        self, images: Tensor, indices: Tensor | None = None, return_blocks: Sequence[int] = ()
    ) -> EncoderOutput:
        """Encode ``(B, C, H, W)`` images.

        Args:
            images: float images, already augmented and normalised.
            indices: ``(B, K)`` patch indices to keep. Patches not listed are dropped before the
                first block (not zeroed), so the cost scales with ``K``.
            return_blocks: blocks whose outputs to return in :attr:`EncoderOutput.blocks`.
        """
        ...


@runtime_checkable
class Masker(Protocol):
    """Draws context and target patches for a batch. Runs on the CPU, off the hot path.

    Built after the encoder: the factory reads the patch grid from ``ctx.grid_size`` and should
    raise :class:`~hjepa_kit.errors.ConfigError` when its parameters cannot fit that grid (the
    core adds the configuration file and the key path to the message; ``hjepa config validate``
    runs the same check). A masker is any callable, typically an object::

        masks = masker(batch_size, generator)   # Masks(context=(B, Nc), targets=(B, M, Nt))

    A masker whose shapes depend on the batch size alone may say so with an attribute
    ``static_shapes = True``: the trainer then compiles the model for those shapes only (no
    dynamic-shape graphs), which also makes CUDA graphs possible.
    """

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        """Draw masks for ``batch_size`` samples.

        Args:
            batch_size: ``B``, the number of samples.
            generator: the only source of randomness to use: the core seeds it per micro-batch, so
                runs are reproducible and a resumed run draws the same masks.

        Returns:
            :class:`Masks` with int64 CPU tensors: ``context`` ``(B, Nc)`` and ``targets``
            ``(B, M, Nt)``, patch indices ``r * grid_w + c`` on ``ctx.grid_size``. ``Nc``, ``M`` and
            ``Nt`` are the same for every sample of the batch (they may change from batch to batch);
            no context index appears among the same sample's targets; ``Nc >= 1``.
        """
        ...


@runtime_checkable
class Predictor(Protocol):
    """Predicts every hierarchy level's targets from the context (an ``nn.Module``).

    The predictor owns both sides of the prediction so they always agree: :meth:`make_targets`
    builds each level's targets from the target encoder's output, :meth:`forward` predicts them.

    Attributes:
        num_levels: number of hierarchy levels.
        level_weights: loss weight per level.
        target_blocks: encoder blocks whose outputs :meth:`make_targets` and
            :meth:`level_features` need (passed as ``return_blocks`` to the target encoder).
    """

    num_levels: int
    level_weights: tuple[float, ...]
    target_blocks: tuple[int, ...]

    def make_targets(self, target: EncoderOutput, masks: Masks) -> list[Tensor]:
        """Per-level targets, parameter-free; level ``l`` is ``(B, M, T_l, D)``."""
        ...

    def __call__(self, context: Tensor, masks: Masks) -> list[Tensor]:
        """Predict every level's targets from the context.

        Args:
            context: ``(B, Nc, D)`` context-encoder tokens of the patches ``masks.context``.
            masks: the batch's :class:`Masks`; ``masks.targets`` ``(B, M, Nt)`` says where to predict.

        Returns:
            One tensor per level, shaped like :meth:`make_targets`' (level ``l``: ``(B, M, T_l, D)``).
        """
        ...

    def level_features(self, target: EncoderOutput) -> dict[str, Tensor]:
        """Pooled ``(B, D_l)`` features of each level (``"level0"``, ...) for evaluation."""
        ...


@runtime_checkable
class Loss(Protocol):
    """Combines per-level predictions and targets into one value to back-propagate.

    Built after the predictor: read the per-level weights from ``ctx.level_weights`` (and
    ``ctx.num_levels``), never as a parameter of your own. A loss is any callable, typically an
    ``nn.Module`` (the core moves it to the run's device)::

        out = loss(predictions, targets, context)   # LossOutput(total=(), terms={"level0": (), ...})

    Optional members: ``collapse_remedies()`` returns parameter changes (``[{"weight": 2.0}]``)
    that a run stopped by a collapse or a non-finite loss suggests as ``--set loss.params.<key>=...``
    commands beside the core's own; ``uses_context_indices``, when true, makes the core pass the
    context tokens' grid positions as the keyword ``context_indices`` (``masks.context``,
    ``(B, Nc)`` int64, patch indices in grid order), for a term that depends on where each
    context token sits (every caller goes through :func:`call_loss`); ``set_step(step)``, which
    the training step calls before each micro-batch's loss with the optimizer steps done so far
    (the same on every rank, and the stored step on resume), for terms that follow a schedule:
    keep what it sets a pure function of ``step`` and a resumed run continues exactly; and, for a
    module, its ``state_dict`` (buffers, extra state) is saved in checkpoints and restored on resume.
    """

    def __call__(
        self, predictions: Sequence[Tensor], targets: Sequence[Tensor], context: Tensor | None = None
    ) -> LossOutput:
        """Compute the loss of one micro-batch.

        Args:
            predictions: one tensor per hierarchy level, level ``l`` shaped ``(B, M, T_l, D)``
                (``T_0 = Nt`` patch tokens; the built-in ``hierarchical`` predictor keeps ``T_l = Nt``
                at every level, each token the mean of the pooled cell holding that target patch,
                and gives its cross-view level ``T = 1``; a predictor may choose other ``T_l``).
            targets: the same shapes, made by the predictor's ``make_targets`` from the target
                encoder; they carry no gradient.
            context: ``(B, Nc, D)`` context-encoder tokens, for a regulariser on the features
                (variance / covariance); ``None`` when a caller has none.

        Returns:
            :class:`LossOutput`: ``total``, a finite scalar tensor that depends on every level's
            predictions, and ``terms``, named scalar tensors logged as ``loss/<name>``
            (``loss/level0``, ``loss/variance`` ...).
        """
        ...


def call_loss(loss_fn: Any, predictions: Sequence[Tensor], targets: Sequence[Tensor], context: Tensor | None,
              masks: Masks | None = None, *, step: int | None = None) -> LossOutput:
    """Call a :class:`Loss` as the core does: with ``context_indices=masks.context`` when it declares ``uses_context_indices``.

    ``step`` (the optimizer steps done; the training step passes it) goes first to the loss's
    ``set_step``, where it has one; ``None`` leaves the loss's schedule where it is.

    Raises:
        ValueError: when the loss asks for the context's positions and ``masks`` is ``None``.
    """
    set_step = getattr(loss_fn, "set_step", None)
    if step is not None and callable(set_step):
        set_step(int(step))
    if getattr(loss_fn, "uses_context_indices", False):
        if masks is None:
            raise ValueError(f"the loss {type(loss_fn).__name__} needs the context's positions (uses_context_indices) "
                             "but no masks were given")
        return loss_fn(predictions, targets, context, context_indices=masks.context)
    return loss_fn(predictions, targets, context)


@runtime_checkable
class Dataset(Protocol):
    """A source of images, one split at a time.

    Attributes:
        splits: the split names this dataset offers (``"train"``, ``"test"``, ``"unlabeled"``).
        image_size: native side of its images in pixels.
        num_classes: number of classes, or ``None`` when unlabelled.
    """

    splits: tuple[str, ...]
    image_size: int
    num_classes: int | None

    def load(self, split: str) -> ImageData:
        """Read ``split`` into RAM as uint8."""
        ...


@runtime_checkable
class SizedDataset(Dataset, Protocol):
    """A dataset that can tell its decoded size without decoding (``data.in_memory: auto``)."""

    def estimate_bytes(self, split: str) -> int | None:
        """Decoded uint8 size of ``split`` in bytes, or None when unknown."""
        ...


@runtime_checkable
class StreamingDataset(Dataset, Protocol):
    """A dataset too large for RAM that can be streamed through loader workers."""

    def open_stream(self, split: str) -> Any:
        """A map-style ``torch.utils.data.Dataset`` whose item ``i`` is ``(uint8 (C, H, W), label)``
        (label -1 when unlabelled); items share one size; picklable for worker processes. It may
        carry ``labelled: bool``."""
        ...
