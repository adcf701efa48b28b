"""What flows between components: the contract every plugin implements.

Shapes use ``B`` batch, ``N`` patches, ``D`` embedding width, ``M`` target blocks, ``Nc`` context
patches, ``Nt`` patches per target block. Patch indices are row-major over the encoder's patch
grid: index ``r * grid_w + c``.

Components of each kind are built by a factory ``factory(params, ctx)`` where ``params`` is an
instance of the component's parameter class (an attrs class, see :mod:`hjepa_kit.params`) and
``ctx`` is the :class:`BuildContext` that carries what earlier components settled (image size,
patch grid, embedding width, number of hierarchy levels, device). Sizes are never configured twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

__all__ = [
    "KINDS",
    "BuildContext",
    "Masks",
    "EncoderOutput",
    "LossOutput",
    "ImageData",
    "FeatureSet",
    "TOKEN_DTYPES",
    "needs_tokens",
    "EvalModel",
    "needs_model",
    "Grade",
    "EvalResult",
    "TimmExport",
    "Encoder",
    "Masker",
    "Predictor",
    "Loss",
    "Dataset",
    "SizedDataset",
    "StreamingDataset",
    "Evaluator",
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


@attrs.frozen
class ImageData:
    """A split of a dataset held in RAM.

    Attributes:
        images: ``(N, C, H, W)`` uint8 images.
        labels: ``(N,)`` int64 class indices, or ``None`` for unlabelled data.
        classes: class names, index-aligned with ``labels`` (empty when unlabelled).
    """

    images: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])


#: Dtypes the patch tokens of a :class:`FeatureSet` may have (half precision saves memory).
TOKEN_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


@attrs.frozen
class FeatureSet:
    """Frozen features of one representation for both evaluation splits.

    The pooled features are always there. The patch tokens they were pooled from are there only
    when an evaluator of the evaluation declared it reads them (``needs_tokens``, see
    :class:`Evaluator`), and only for a representation made of tokens (``encoder``); they are
    kept in half precision (``float16`` when every value fits its range, ``bfloat16`` otherwise)
    because they are ``T`` times larger than the pooled features: CIFAR-10's 50,000 training
    images x 64 tokens x 192 take 1.2 GB in half precision. Convert a slice to float32 before
    computing with it (``tokens[rows].float()``).

    Attributes:
        train: ``(N_train, D)`` float32 features.
        train_labels: ``(N_train,)`` int64 labels.
        test: ``(N_test, D)`` float32 features.
        test_labels: ``(N_test,)`` int64 labels.
        num_classes: number of classes.
        train_tokens: ``(N_train, T, D)`` patch tokens of the train images (``T`` patches in grid
            order, a dtype of :data:`TOKEN_DTYPES`), or ``None`` when they were not extracted.
        test_tokens: ``(N_test, T, D)`` tokens of the test images; set exactly when ``train_tokens`` is.
    """

    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor
    num_classes: int
    train_tokens: Tensor | None = attrs.field(default=None, kw_only=True)
    test_tokens: Tensor | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if (self.train_tokens is None) != (self.test_tokens is None):
            raise ValueError("FeatureSet: train_tokens and test_tokens must be given together")
        if self.train_tokens is None or self.test_tokens is None:
            return
        for split, tokens, rows in (("train", self.train_tokens, self.train), ("test", self.test_tokens, self.test)):
            if tokens.ndim != 3 or tokens.shape[0] != rows.shape[0]:
                raise ValueError(
                    f"FeatureSet: {split}_tokens must be ({rows.shape[0]}, T, D) like {split}'s rows, got {tuple(tokens.shape)}"
                )
            if tokens.dtype not in TOKEN_DTYPES:
                raise ValueError(f"FeatureSet: {split}_tokens must be one of {TOKEN_DTYPES}, got {tokens.dtype}")
        if self.train_tokens.shape[1:] != self.test_tokens.shape[1:]:
            raise ValueError(
                f"FeatureSet: train and test tokens differ in shape: {tuple(self.train_tokens.shape)} vs {tuple(self.test_tokens.shape)}"
            )

    @property
    def has_tokens(self) -> bool:
        """Whether the patch tokens were extracted for this representation."""
        return self.train_tokens is not None


def _thresholds(values: Sequence[float]) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3 or not out[0] <= out[1] <= out[2]:
        raise ValueError(f"Grade thresholds must be three increasing numbers (minimum, good, excellent), got {values!r}")
    return out  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class Grade:
    """How the report grades one figure: the name of the check and its three thresholds.

    A figure reaches a grade when its value is strictly above that grade's threshold (``> 50%``):
    below the first it is ``below minimum``, then ``minimum``, ``good``, ``excellent`` (see
    :func:`hjepa_kit.evaluation.metrics.grade`). A non-finite value grades ``below minimum``.

    Attributes:
        label: the name of the check in the report (``"k-NN accuracy (k=20)"``).
        thresholds: ``(minimum, good, excellent)``, increasing.
        percent: show the thresholds as percentages (for accuracies in ``[0, 1]``): ``> 50%``.
        unit: text written after each threshold, e.g. ``"D"`` for a fraction of the feature width:
            ``> 0.25 D``.
        unit_value: what one ``unit`` is worth; the absolute threshold is added in parentheses:
            ``> 0.25 D (48)`` for ``unit_value=192``.
        summary: also list the figure in the report's summary table at the top (a headline check);
            ``False``: graded only in its evaluator's own table (e.g. per-level figures).
    """

    label: str
    thresholds: tuple[float, float, float] = attrs.field(converter=_thresholds)
    percent: bool = False
    unit: str = ""
    unit_value: float | None = None
    summary: bool = True


@attrs.frozen
class EvalResult:
    """What an evaluator may return when it has more than scalar figures.

    Attributes:
        metrics: figure name -> value (``knn/top1@20`` ...); these go to ``results.json``, the
            report table and TensorBoard.
        artifacts: name -> data for figures and the report: arrays (``confusion_matrix``,
            ``singular_values``; numpy arrays, tensors or nested lists), strings (``verdict``,
            ``note``) or small mappings. A ``classes`` list names the confusion matrix's rows. A
            ``level_accuracy`` mapping, series -> ``{"values": {representation: accuracy},
            "minimum": threshold or None}``, is drawn as grouped bars with a dashed line at each
            series' minimum (``figures/level_accuracy.png``).
        grades: figure name -> the :class:`Grade` the report gives it; figures without one are
            shown ungraded. A name that is not among ``metrics`` is ignored.
    """

    metrics: Mapping[str, float]
    artifacts: Mapping[str, Any] = attrs.field(factory=dict)
    grades: Mapping[str, Grade] = attrs.field(factory=dict)


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


def needs_tokens(evaluator: Any) -> bool:
    """Whether an evaluator declared that it reads patch tokens (``evaluator.needs_tokens``; default False)."""
    return bool(getattr(evaluator, "needs_tokens", False))


def needs_model(evaluator: Any) -> bool:
    """Whether an evaluator declared that it trains the encoder on the images (``evaluator.needs_model``; default False)."""
    return bool(getattr(evaluator, "needs_model", False))


@attrs.frozen(kw_only=True)
class EvalModel:
    """What ``hjepa evaluate`` hands an evaluator that declared ``needs_model = True``: the
    checkpoint's encoder and the images, for protocols that train the encoder (fine-tuning).

    The evaluator is then called ``evaluator(features, default, model=EvalModel(...))``; see
    :class:`Evaluator`. Every such evaluator gets its own object and its own encoder copy.

    Attributes:
        encoder: a copy of the checkpoint's **target** encoder (the evaluated one), an
            :class:`Encoder` on ``device`` with ``requires_grad`` on; the evaluator's own, to train
            in place: the run's model and other evaluators never see it.
        train: the labelled train split, uint8 in RAM (as the features were extracted from).
        test: the labelled test split.
        image_size: side of the images the encoder sees.
        augment: the run's training augmentation (``data.augmentation``: random resized crop,
            flip, normalisation): ``augment(uint8 (B, C, H, W), generator) -> float32 (B, C, S, S)``
            on the images' device, all randomness drawn from the ``torch.Generator`` (on the CPU).
        transform: the evaluation transform (resize, normalise; no randomness):
            ``transform(uint8 (B, C, H, W)) -> float32 (B, C, S, S)``, as the features saw.
        device: where the encoder is and should be trained.
        autocast_dtype: the run's mixed precision on ``device`` (``torch.bfloat16``) or ``None`` (float32).
        state_dir: a folder of this evaluator's own inside the evaluation's output folder
            (``<output>/state/<evaluator name>``, not created yet), where it may save its progress
            (atomically, :mod:`hjepa_kit.helpers`) and resume it when the evaluation is run again;
            ``None`` when the evaluation writes no files.
        fingerprint: changes whenever the checkpoint file or the evaluation's configuration
            overrides change: store it with saved progress and start afresh on a mismatch.
    """

    encoder: Any
    train: ImageData
    test: ImageData
    image_size: int
    augment: Callable[[Tensor, torch.Generator], Tensor]
    transform: Callable[[Tensor], Tensor]
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    state_dir: Path | None = None
    fingerprint: str = ""


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

    Two optional members: ``collapse_remedies()`` returns parameter changes (``[{"weight": 2.0}]``)
    that a run stopped by a collapse or a non-finite loss suggests as ``--set loss.params.<key>=...``
    commands beside the core's own; and, for a module, its ``state_dict`` (buffers, extra state) is
    saved in checkpoints and restored on resume.
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


@runtime_checkable
class Evaluator(Protocol):
    """Computes named figures from frozen features, extracted once and shared by all evaluators.

    An evaluator is any callable, typically a closure over its parameters returned by the
    factory::

        figures = evaluator(features, default)   # {"mine/top1": 0.61} or EvalResult(metrics=..., artifacts=..., grades=...)

    **Representations.** ``features`` maps a representation name to a :class:`FeatureSet`:
    ``encoder`` (the target encoder's patch tokens, average-pooled, ``(N, D)``) and one entry per
    hierarchy level, ``level0``, ``level1`` ... (the predictor's ``level_features``, ``(N, D_l)``).
    ``default`` is the run's ``evaluation.representation`` and is always a key of ``features``.
    Evaluate ``features[default]`` unless your parameters say otherwise: the built-ins take a
    ``representation: str | None`` parameter (``null``: the default) and raise
    :class:`~hjepa_kit.errors.UserError` listing ``sorted(features)`` when the name asked for is
    missing.

    **Figure names.** The figures of every evaluator of a run land in one table
    (``results.json``, ``report.md``, TensorBoard), so name each ``<prefix>/<figure>`` with a
    prefix of your own: the evaluator's name or a short family name (``knn_faiss`` reports
    ``knn/top1@20``, ``linear_probe`` reports ``linear_probe/top1``). ``report.md`` groups figures
    by the prefix before the first ``/``; a figure without one lands under ``other``; a name that
    another evaluator also reports is overwritten by whichever runs later. During training the
    online evaluator's figures are logged with ``online/`` in front (``online/knn/top1@20``).
    A figure whose last part contains ``top1``, ``top5`` (any ``top<k>``) or ``acc`` is read as an
    accuracy in [0, 1] and shown as a percentage. Artifacts are filed under the evaluator's
    registered name (``results.json``: ``artifacts.<name>``).

    **Grades.** An :class:`EvalResult` may grade its own figures: ``grades`` maps a figure name to
    a :class:`Grade` (the check's label and its minimum / good / excellent thresholds). The report
    shows every grade it is given, in the evaluator's table and, unless ``summary=False``, in the
    summary table at the top; it knows no figure name of its own.

    **Patch tokens.** An evaluator that reads the tokens a representation was pooled from (an
    attentive probe) says so with an attribute on the callable, ``needs_tokens = True``
    (:func:`needs_tokens` reads it). ``hjepa evaluate`` builds every selected evaluator before
    it extracts features; when one of them needs tokens, the ``encoder`` representation's
    :class:`FeatureSet` carries ``train_tokens`` and ``test_tokens`` (``(N, T, D)``, half
    precision), shared by every evaluator of the run; otherwise they are not extracted (no time,
    no memory) and are ``None``. Representations that are not made of tokens (the levels) never
    carry them, and the online evaluation during training extracts none: an evaluator that needs
    tokens should raise :class:`~hjepa_kit.errors.UserError` when ``has_tokens`` is False. (The
    attribute is optional, so it is not a member of this protocol.)

    **The encoder and the images.** An evaluator that trains the encoder itself (end-to-end
    fine-tuning) says so with ``needs_model = True`` (:func:`needs_model` reads it; optional like
    ``needs_tokens``). ``hjepa evaluate`` then calls it with one more keyword argument,
    ``evaluator(features, default, model=EvalModel(...))``: its own copy of the checkpoint's
    target encoder, the train and test images, the run's augmentation and evaluation transform,
    and a folder for resumable progress (:class:`EvalModel`). Other evaluators are called with
    the two arguments only. The online evaluation during training hands no model: an evaluator
    that needs one should raise :class:`~hjepa_kit.errors.UserError` when ``model`` is missing.
    """

    def __call__(self, features: Mapping[str, FeatureSet], default: str) -> dict[str, float] | EvalResult:
        """Evaluate frozen features.

        Args:
            features: representation name -> :class:`FeatureSet` with ``train`` ``(N_train, D)``
                and ``test`` ``(N_test, D)`` float32 CPU features, their ``(N,)`` int64 labels and
                ``num_classes``.
            default: the name of the representation to evaluate unless told otherwise.

        An evaluator with ``needs_model = True`` also takes ``model``, an :class:`EvalModel`
        (keyword, passed by ``hjepa evaluate`` only).

        Returns:
            Figure name -> number, or an :class:`EvalResult` carrying the figures, artifacts for
            the report (a ``confusion_matrix``, ``singular_values``, a ``verdict`` ...) and grades.
        """
        ...
