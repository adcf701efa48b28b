"""Evaluator ``fine_tune``: end-to-end fine-tuning of the checkpoint's encoder with a linear head.

The frozen-feature protocols (k-NN, probes) read what pretraining put in the features; fine-tuning
reads how good a starting point the encoder is when every weight may move. The recipe is MAE's
fine-tuning protocol (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners",
appendix A.3), scaled down, without mixup, cutmix or random erasing:

- **the model**: a copy of the checkpoint's target encoder (the evaluated one), its final tokens
  mean-pooled (the ``encoder`` representation, MAE's global pooling; ``pool: max`` takes the
  per-channel maximum of the layer-normed tokens instead, what the built-in hierarchical
  predictor's ``level0`` is), then a head: batch normalisation without affine (MAE's linear-probe
  head: each pooled dimension standardised, which mean-pooled tokens need, their spread across
  images being small beside their common part) and a linear layer. The head starts as a linear
  probe of the frozen encoder (``head_init: probe``; LP-FT, Kumar et al. 2022, "Fine-Tuning can
  Distort Pretrained Features and Underperform Out-of-Distribution"): one pass over the train
  images, augmented as the fine-tuning will see them, a softmax regression fitted by L-BFGS
  (L2 ``1e-2``), its standardisation as the batch norm's statistics. A head started near zero (``zero``: weights of standard deviation ``2e-5``,
  MAE's) spends the first epochs learning what the probe finds in seconds while its random
  gradients reach the encoder. The per-level features are not reachable: they are the
  predictor's ``level_features``, evaluation-only and computed without gradients;
- **the loss**: cross-entropy with label smoothing (``label_smoothing`` 0.1; Szegedy et al. 2016,
  "Rethinking the Inception Architecture for Computer Vision");
- **the optimiser**: AdamW (betas 0.9 / 0.999) with weight decay on the weight matrices only (not
  on biases, norms or position embeddings) and **layer-wise learning-rate decay** (Clark et al.
  2020, ELECTRA; Bao et al. 2022, BEiT): the head and the parameters after the last block
  (final norm) train at ``lr``, block ``i`` of ``L`` at ``lr * layer_decay ** (L - i)``, the
  parameters before the first block (patch embedding) at ``lr * layer_decay ** (L + 1)``.
  Blocks are found by their parameter names (``blocks.<i>.``, as timm and the built-in ViT name
  them); an encoder without such names trains at one learning rate (said in the ``note``);
- **the schedule**: a linear warmup over ``warmup_epochs``, then a cosine decay to 0 at the end of
  the budget of ``epochs``, updated every step;
- **the data**: the run's training augmentation (``data.augmentation``: random resized crop, flip)
  on every train batch (``augment: false``: the evaluation transform, better where a flip or a
  tight crop changes the class, as on the digits), the whole train split or
  ``labels_per_class`` seeded images of each class; the test split, with the evaluation transform,
  is scored after every epoch and never chooses anything.

**Resumable.** After every epoch the encoder, the head, the optimiser and the history are saved
atomically in the evaluation's output folder (``<output>/state/fine_tune/progress.pt``). Run the
same evaluation again and it continues at the next epoch (a finished fine-tune is re-read, not
redone); progress saved for another checkpoint, other overrides or other parameters is discarded.
Each epoch's batch order, augmentation and stochastic depth draw from generators seeded with
``(seed, epoch)``, so a resumed fine-tune ends where an uninterrupted one would.

Metrics (accuracies are fractions in ``[0, 1]``): ``fine_tune/top1``, ``fine_tune/top5`` (test,
after the last epoch), ``fine_tune/train_top1`` and ``fine_tune/train_loss`` (the last epoch's,
on augmented images while the weights move), ``fine_tune/epochs``, ``fine_tune/epoch_s`` (mean
seconds per epoch, test scoring included) and ``fine_tune/labels_per_class``. Artifacts:
``history`` (each epoch's figures), ``epoch_accuracy`` (drawn as ``accuracy_vs_epoch.png`` and
logged to TensorBoard per epoch), ``label_curve`` (its point in ``accuracy_vs_labels.png``),
``confusion_matrix``, ``note``. The report grades ``fine_tune/top1`` with :data:`FINE_TUNE_GRADE`.
The training loop is in :mod:`hjepa_kit.plugins.fine_tune_loop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs
import torch

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EvalModel, EvalResult, FeatureSet, Grade
from hjepa_kit.errors import UserError
from hjepa_kit.params import param
from hjepa_kit.plugins.fine_tune_loop import FineTuneResult, fine_tune

__all__ = ["FINE_TUNE_GRADE", "FineTuneParams", "build_fine_tune", "fine_tune_result"]

#: The grade of ``fine_tune/top1``: 60% / 70% / 80%. This kit's choice, ten points above the linear
#: probe's, since fine-tuning also moves the encoder; the plan sets no fine-tuning thresholds.
FINE_TUNE_GRADE = Grade(label="Fine-tuning accuracy", thresholds=(0.60, 0.70, 0.80), percent=True)


@attrs.frozen(kw_only=True)
class FineTuneParams:
    """Parameters of the ``fine_tune`` evaluator."""

    epochs: int = param(10, help="Epoch budget: passes over the labelled train images.", ge=1)
    batch_size: int = param(64, help="Train images per step.", ge=1)
    lr: float = param(1e-3, help="Peak AdamW learning rate of the head and the last block.", gt=0.0)
    layer_decay: float = param(0.75, help="Layer-wise learning-rate decay: each block down trains at this factor of the one above.", gt=0.0, le=1.0)
    weight_decay: float = param(0.05, help="AdamW weight decay of the weight matrices (not biases, norms, position embeddings).", ge=0.0)
    label_smoothing: float = param(0.1, help="Label smoothing of the cross-entropy.", ge=0.0, lt=1.0)
    warmup_epochs: float = param(1.0, help="Linear warmup of the learning rate, in epochs; then a cosine decay to 0.", ge=0.0)
    augment: bool = param(True, help="The run's training augmentation on the train images; false: the evaluation transform.")
    pool: Literal["mean", "max"] = param(
        "mean", help="How the final tokens are pooled: mean (the encoder representation) or max of the layer-normed tokens (as level0).",
    )
    head_init: Literal["probe", "zero"] = param(
        "probe", help="Start the head as a linear probe of the frozen pooled train features (LP-FT), or near zero (MAE).",
    )
    labels_per_class: int | None = param(None, help="Fine-tune on this many seeded labelled images per class; null: the whole train split.", ge=1)
    eval_batch_size: int = param(256, help="Test images per batch when scoring each epoch.", ge=1)
    seed: int = param(0, help="Seeds the head, the labelled subset, each epoch's order, augmentation and stochastic depth.", ge=0)
    resume: bool = param(True, help="Continue from the progress saved in the evaluation's output folder; false: start afresh.")


def fine_tune_result(result: FineTuneResult, params: FineTuneParams) -> EvalResult:
    """The figures, artifacts and grade of a finished :func:`~hjepa_kit.plugins.fine_tune_loop.fine_tune`."""
    history = result.history
    last = history[-1]
    label = f"fine-tune ({len(history)} epochs)"
    metrics = {
        "fine_tune/top1": result.top1,
        "fine_tune/top5": result.top5,
        "fine_tune/train_top1": float(last["train_top1"]),
        "fine_tune/train_loss": float(last["train_loss"]),
        "fine_tune/epochs": float(len(history)),
        "fine_tune/epoch_s": sum(float(h["seconds"]) for h in history) / len(history),
        "fine_tune/labels_per_class": result.labels_per_class,
    }
    epochs = [int(h["epoch"]) for h in history]
    artifacts = {
        "representation": f"encoder (fine-tuned, {params.pool}-pooled final tokens)",
        "history": history,
        "epoch_accuracy": {
            "epochs": epochs,
            "series": {
                "test_top1": [float(h["test_top1"]) for h in history],
                "train_top1": [float(h["train_top1"]) for h in history],
            },
        },
        "label_curve": {label: {"labels_per_class": [result.labels_per_class], "mean": [result.top1],
                                "low": [result.top1], "high": [result.top1]}},  # fmt: skip
        "confusion_matrix": result.confusion,
        "note": "; ".join(result.notes) if result.notes else f"{len(history)} epochs, lr {params.lr:g}, layer decay {params.layer_decay:g}",
    }
    return EvalResult(metrics=metrics, artifacts=artifacts, grades={"fine_tune/top1": FINE_TUNE_GRADE})


def build_fine_tune(params: FineTuneParams, ctx: BuildContext):
    """Factory of the ``fine_tune`` evaluator (it declares ``needs_model``)."""

    def evaluate_fine_tune(features: Mapping[str, FeatureSet], default: str, model: EvalModel | None = None) -> EvalResult:
        if model is None:
            raise UserError(
                "evaluator fine_tune trains the checkpoint's encoder on the images, which only `hjepa evaluate` hands over "
                "(it declares needs_model); it cannot be the online evaluator (evaluation.online)"
            )
        num_classes = features[default].num_classes
        with torch.inference_mode(False), torch.enable_grad():
            result = fine_tune(model, num_classes, **attrs.asdict(params))
        return fine_tune_result(result, params)

    evaluate_fine_tune.needs_model = True  # type: ignore[attr-defined]
    return evaluate_fine_tune


@hookimpl
def hjepa_register_evaluators(register) -> None:
    register(
        "fine_tune",
        build_fine_tune,
        params=FineTuneParams,
        summary="End-to-end fine-tuning of the checkpoint's encoder with a linear head (MAE's recipe: label smoothing, "
        "layer-wise lr decay, the run's augmentation, warmup + cosine); resumable per epoch.",
    )
