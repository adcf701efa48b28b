"""The evaluator's contract: the features it gets, what it returns, how its figures are graded.

Part of :mod:`hjepa_kit.contracts`, which re-exports every name here: import them from there.
An evaluator is called ``evaluator(features, default)`` with frozen features extracted once per
evaluation and shared by every evaluator (:class:`Evaluator`); one that declares ``needs_model``
also gets an :class:`EvalModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from .image_data import ImageData

__all__ = [
    "FeatureSet",
    "TOKEN_DTYPES",
    "needs_tokens",
    "EvalModel",
    "needs_model",
    "Grade",
    "EvalResult",
    "Evaluator",
]


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
        headline: the one figure among ``metrics`` that sums the evaluation up (``knn/top1@20``),
            or ``None``. When the evaluator is the online evaluator (``evaluation.online``),
            ``checkpoint.best_metric`` and ``training.early_stopping.metric`` ``auto`` (and
            ``knn``) follow it, as ``online/<headline>``; without one they use the label-free RankMe.
    """

    metrics: Mapping[str, float]
    artifacts: Mapping[str, Any] = attrs.field(factory=dict)
    grades: Mapping[str, Grade] = attrs.field(factory=dict)
    headline: str | None = None


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
            :class:`~hjepa_kit.contracts.Encoder` on ``device`` with ``requires_grad`` on; the
            evaluator's own, to train in place: the run's model and other evaluators never see it.
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
class Evaluator(Protocol):
    """Computes named figures from frozen features, extracted once and shared by all evaluators.

    An evaluator is any callable, typically a closure over its parameters returned by the
    factory::

        figures = evaluator(features, default)   # {"mine/top1": 0.61} or EvalResult(metrics=..., grades=..., headline=...)

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
    summary table at the top; it knows no figure name of its own. Its ``headline`` names the figure
    that sums it up; during training the online evaluator's headline is what picks
    ``best_model.pth`` and what early stopping watches (``auto``): the core reads no figure name.

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
