"""Evaluator ``attentive_probe``: a cross-attention probe on the frozen patch tokens.

Pooling the tokens of a masked-prediction encoder before a linear probe throws away what it
spreads over the patches; a probe that learns where to look reads more of it. Two heads
(``head``):

- ``efficient`` (the default): **efficient probing** (EP) of Psomas et al. 2025 ("Attention,
  Please! Revisiting Attentive Probing for Masked Image Modeling"), written here from the paper:
  ``num_queries`` learned queries (32) attend over the layer-normalised tokens without query or
  key projections; one value projection is split into one slice per query; the pooled slices side
  by side go through a LayerNorm and a linear layer to the classes.
- ``vjepa``: the probe of V-JEPA (Bardes et al. 2024, "Revisiting Feature Prediction for Learning
  Visual Representations from Video", ``src/models/attentive_pooler.py`` of
  ``facebookresearch/jepa``), written here from its description: **one learned query** ``q0``
  (``D``); **one cross-attention block**, ``q0 + proj(attn(q0, LN(tokens)))``, ``H`` heads of
  ``D / H`` (``num_heads``; default ``D / 64``, at least 1), then a residual MLP of hidden width
  ``mlp_ratio * D`` (4) behind a LayerNorm, GELU; **a linear layer** to the classes.

Why EP is the default: on the quickstart's tokens (1,132 train / 539 test digits, 20 epochs) it
scores 0.980-0.987 test top-1 over two seeds against V-JEPA's 0.961 and the max-pooled `level0`
linear probe's 0.985; on a run on the nearest-resampled digits 0.935 against V-JEPA's 0.846 and
the best pooled linear probe's 0.909 (docs/evaluation.md). One query is one weighted mean of the
tokens; 32 queries can each find a different part of the image, as max pooling does per channel.

The probes (V-JEPA's initialisation for both) and their optimiser are :mod:`hjepa_kit.plugins.attentive_heads`.
Trained with AdamW (weight decay on the weights and the query, not on biases or
LayerNorms; torch's betas and eps), a linear warmup and a cosine decay to 0, cross-entropy,
mini-batches of train tokens.

**Several heads, one pass.** As V-JEPA 2 does, a grid of ``lr x weight_decay`` probes is trained
together: every mini-batch of tokens is read and normalised once and goes through every probe
(their parameters are stacked; one AdamW update, with each probe's own learning rate and weight
decay, updates them all). The probes are trained
on the train split minus a held-out ``val_fraction`` (drawn with ``seed``); the probe with the
best held-out top-1 (ties: the lower held-out loss) is chosen and its **test** accuracy is
reported, so the test split chooses nothing.

**Cost.** Neither head forms the tokens' keys or values (:mod:`hjepa_kit.plugins.attentive_heads`
shows why the functions are the same): per image and probe the work is ``O(T D H + D^2)`` for
``vjepa`` and ``O(K T D + D^2)`` for ``efficient`` with ``K`` queries, instead of ``O(T D^2)``. The tokens stay in half precision in the shared
:class:`~hjepa_kit.contracts.FeatureSet`; the train tokens are standardised once (the first
LayerNorm's parameter-free part, shared by every probe) into a copy of the same dtype, and each
mini-batch is converted to float32. The probes train on the run's device (``ctx.device``; the
tokens are moved there once). Training costs about 2.5 MFLOP per image, probe and epoch for
``vjepa`` at ``D = 192`` (forward and backward; most of it the probe's MLP) and about 5 for
``efficient`` with 32 queries over 64 tokens (most of it the 32 attention maps): CIFAR-10-sized
tokens (45,000 train images of 64 x 192), 20 epochs, 4 probes make about 9 or 18 TFLOP, minutes on two
free CPU cores and several times longer on busy ones; cut ``epochs`` or the grid for a quicker
read, or evaluate with ``--device cuda``.

Metrics (accuracies are fractions in ``[0, 1]``): ``attentive_probe/top1``, ``attentive_probe/top5``
(test, the chosen probe), ``attentive_probe/val_top1`` (its held-out accuracy),
``attentive_probe/lr`` and ``attentive_probe/weight_decay`` (its grid point),
``attentive_probe/train_top1`` (its running accuracy over the last epoch). Artifacts:
``confusion_matrix`` (test), ``grid`` (``"lr=...,wd=..."`` -> held-out top-1 of each probe),
``representation``. The report grades ``attentive_probe/top1`` with :data:`ATTENTIVE_PROBE_GRADE`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import torch
from torch import Tensor
from torch.nn import functional as F

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet, Grade
from hjepa_kit.errors import UserError
from hjepa_kit.helpers import choose_representation, topk_accuracy
from hjepa_kit.params import param
from hjepa_kit.plugins.attentive_heads import AttentiveProbes, EfficientProbes, StackedAdamW, normalise_tokens
from hjepa_kit.plugins.linear_probe import _threads_for, confusion_matrix

__all__ = [
    "ATTENTIVE_PROBE_GRADE",
    "DEFAULT_LR",
    "AttentiveProbeParams",
    "AttentiveProbeResult",
    "attentive_probe",
    "batch_for",
    "select_token_features",
    "build_attentive_probe",
]

#: The grade of ``attentive_probe/top1``: the linear probe's thresholds, 50% / 60% / 70%.
ATTENTIVE_PROBE_GRADE = Grade(label="Attentive probe accuracy", thresholds=(0.50, 0.60, 0.70), percent=True)

#: Each head's default learning-rate grid. V-JEPA's probe: its 1e-3 and three times it. The efficient
#: probe has no MLP and starts as a mean pool, so it needs larger steps: on the quickstart's tokens at
#: (1e-3, 3e-3) it underfits (0.93 on its own train images, 0.92 test) and at (1e-2, 3e-2) reaches
#: 0.98-0.99, the max-pooled linear probe's 0.985 (docs/evaluation.md).
DEFAULT_LR = {"vjepa": (1e-3, 3e-3), "efficient": (1e-2, 3e-2)}


@attrs.frozen(kw_only=True)
class AttentiveProbeParams:
    """Parameters of the ``attentive_probe`` evaluator."""

    lr: tuple[float, ...] | None = param(
        None, help="Peak AdamW learning rates of the grid (one probe per lr x weight_decay); null = the head's: "
        "vjepa 1e-3, 3e-3; efficient 1e-2, 3e-2.", gt=0.0,
    )
    weight_decay: tuple[float, ...] = param((1e-3, 1e-1), help="AdamW weight decays of the grid.", ge=0.0)
    epochs: int = param(20, help="Passes over the train tokens (V-JEPA: 20).", ge=1)
    warmup_epochs: float = param(1.0, help="Linear warmup of the learning rate, in epochs; then a cosine decay to 0.", ge=0.0)
    batch_size: int = param(256, help="Images per mini-batch (smaller on a train split too small for min_steps).", ge=1)
    min_steps: int = param(
        400, help="Fewest optimiser steps over the epochs: a smaller train split trains in smaller mini-batches (not below 16 images), "
        "at the same cost; 0 = never shrink.", ge=0,
    )
    head: str = param(
        "efficient", help="vjepa: V-JEPA's one query and cross-attention block; efficient: Psomas et al.'s EP, num_queries queries "
        "without query/key projections, each pooling its slice of one value projection.", choices=("vjepa", "efficient"),
    )
    num_heads: int | None = param(None, help="head vjepa: attention heads of the cross-attention; null = D / 64, at least 1 (must divide D).", ge=1)
    mlp_ratio: float = param(4.0, help="head vjepa: hidden width of the block's MLP, in units of D.", gt=0.0)
    num_queries: int | None = param(
        None, help="head efficient: learned queries (must divide D); null = EP's 32, or the largest divisor of D below it.", ge=1
    )
    val_fraction: float = param(0.1, help="Fraction of train held out to choose the grid point.", gt=0.0, lt=1.0)
    seed: int = param(0, help="Seed of the held-out split, the initialisation and the mini-batch order.", ge=0)
    representation: str | None = param(
        None, help="Which representation's tokens to use; null = the run's default if it has tokens, else the first that has (encoder)."
    )


def _heads_for(dim: int, num_heads: int | None) -> int:
    heads = max(1, dim // 64) if num_heads is None else num_heads
    if dim % heads:
        raise UserError(f"evaluator attentive_probe: num_heads={heads} does not divide the token width {dim}")
    return heads


def _queries_for(dim: int, num_queries: int | None) -> int:
    if num_queries is None:
        return max(k for k in range(1, 33) if dim % k == 0)
    if dim % num_queries:
        raise UserError(f"evaluator attentive_probe: num_queries={num_queries} does not divide the token width {dim}")
    return num_queries


@attrs.frozen
class AttentiveProbeResult:
    """Outcome of :func:`attentive_probe`.

    Attributes:
        top1, top5: test accuracies of the chosen probe.
        val_top1: held-out accuracy of the chosen probe.
        train_top1: its running accuracy over the last epoch.
        lr, weight_decay: its grid point.
        batch_size: the mini-batch it trained with (see :func:`batch_for`).
        grid: ``(lr, weight_decay)`` -> held-out top-1 of every probe.
        confusion: ``(C, C)`` int64 test counts of the chosen probe.
    """

    top1: float
    top5: float
    val_top1: float
    train_top1: float
    lr: float
    weight_decay: float
    batch_size: int
    grid: dict[tuple[float, float], float]
    confusion: object


def batch_for(train_images: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """The mini-batch: ``batch_size``, or smaller when ``epochs`` passes at it would take fewer than ``min_steps`` steps.

    The shrunk batch is the largest that gives ``min_steps`` steps, but not below 16 images (nor above
    ``batch_size``): the work is the same (every image is read ``epochs`` times), only the steps are
    more. A probe on 1,132 train images at 256 takes 5 steps an epoch, 100 in 20 epochs, and
    underfits (the quickstart's tokens: 0.83 test top-1, 0.86 on its own train images); at 56,
    400 steps, 0.96 in the same time.
    """
    steps = epochs * math.ceil(train_images / batch_size)
    if steps >= min_steps:
        return batch_size
    return min(batch_size, max(16, (train_images * epochs) // max(1, min_steps)))


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def attentive_probe(
    train_tokens: Tensor,
    train_labels: Tensor,
    test_tokens: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    lr: Sequence[float] | None = None,
    weight_decay: Sequence[float] = (1e-3, 1e-1),
    epochs: int = 20,
    warmup_epochs: float = 1.0,
    batch_size: int = 256,
    min_steps: int = 0,
    head: str = "efficient",
    num_heads: int | None = None,
    mlp_ratio: float = 4.0,
    num_queries: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> AttentiveProbeResult:
    """Train a grid of attentive probes on ``train_tokens``, choose on held-out train, report on test.

    Args:
        train_tokens: ``(N_train, T, D)`` tokens (any float dtype; mini-batches become float32).
        train_labels: ``(N_train,)`` int64.
        test_tokens: ``(N_test, T, D)``; test_labels: ``(N_test,)`` int64.
        num_classes: ``C``.
        lr, weight_decay: the grid; one probe per pair, trained together. ``lr`` ``None``: the
            head's (:data:`DEFAULT_LR`).
        epochs, warmup_epochs, batch_size: the schedule.
        min_steps: fewest steps; a smaller train split trains in smaller batches (:func:`batch_for`).
        head: ``"vjepa"`` (:class:`AttentiveProbes`, with ``num_heads`` and ``mlp_ratio``) or
            ``"efficient"`` (:class:`EfficientProbes`, with ``num_queries``).
        val_fraction, seed: the held-out split; ``seed`` also seeds the weights and the batch order.
        device: where the probes train (the tokens are moved there once, in their dtype).

    Raises:
        UserError: an empty grid, too few train images, or tokens that do not match.
    """
    if head not in DEFAULT_LR:
        raise UserError(f"evaluator attentive_probe: head {head!r} is not one of vjepa, efficient")
    lr = DEFAULT_LR[head] if lr is None else lr
    grid = [(float(a), float(w)) for a in dict.fromkeys(lr) for w in dict.fromkeys(weight_decay)]
    if not grid:
        raise UserError("evaluator attentive_probe: lr and weight_decay need at least one value each")
    if train_tokens.ndim != 3 or test_tokens.ndim != 3 or train_tokens.shape[1:] != test_tokens.shape[1:]:
        raise UserError(
            f"evaluator attentive_probe: train and test tokens must both be (N, T, D), got {tuple(train_tokens.shape)} and {tuple(test_tokens.shape)}"
        )
    n = train_tokens.shape[0]
    if n < 2:
        raise UserError(f"evaluator attentive_probe: needs at least 2 train images (one held out), got {n}")
    dim = int(train_tokens.shape[2])
    heads = _heads_for(dim, num_heads) if head == "vjepa" else 0
    queries = _queries_for(dim, num_queries) if head == "efficient" else 0
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    held = min(max(1, round(n * val_fraction)), n - 1)
    val_rows, fit_rows = order[:held], order[held:]
    batch_size = batch_for(len(fit_rows), batch_size, epochs, min_steps)
    device = torch.device(device)
    labels = train_labels.detach().to(device, torch.int64).clone()
    train_x = normalise_tokens(train_tokens.detach().to(device))
    # Evaluation may run under torch.inference_mode(); the probes need autograd. Small problems run
    # on one thread (see linear_probe: a second thread costs more than it gives on tiny operations).
    with torch.inference_mode(False), torch.enable_grad(), _threads_for(train_tokens[:batch_size].numel()):
        if head == "vjepa":
            probes = AttentiveProbes(len(grid), dim, num_classes, heads, mlp_ratio, generator, device)
        else:
            probes = EfficientProbes(len(grid), dim, num_classes, queries, generator, device)
        optimizer = StackedAdamW(probes.params, torch.tensor([a for a, _ in grid], device=device),
                                 torch.tensor([w for _, w in grid], device=device),
                                 no_decay=probes.NO_DECAY)  # fmt: skip
        steps_per_epoch = math.ceil(len(fit_rows) / batch_size)
        total = epochs * steps_per_epoch
        warmup = min(total, round(warmup_epochs * steps_per_epoch))
        step = 0
        correct = torch.zeros(len(grid), device=device)
        for epoch in range(epochs):
            shuffled = fit_rows[torch.randperm(len(fit_rows), generator=generator)].to(device)
            correct.zero_()
            for start in range(0, len(shuffled), batch_size):
                rows = shuffled[start : start + batch_size]
                x = train_x[rows].to(torch.float32)
                y = labels[rows]
                logits = probes(x, normalised=True)  # (G, B, C)
                # The probes are independent: the sum of their mean losses gives each its own gradient.
                loss = F.cross_entropy(logits.reshape(-1, num_classes), y.repeat(len(grid)), reduction="sum") / len(rows)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step(_schedule(step, total, warmup))
                step += 1
                if epoch == epochs - 1:
                    correct += (logits.detach().argmax(2) == y).sum(1).float()
        train_top1 = correct / max(1, len(fit_rows))
        val_logits = probes.predict(train_x[val_rows.to(device)], batch_size, normalised=True)
        val_labels = labels[val_rows.to(device)]
        val_acc = (val_logits.argmax(2) == val_labels).float().mean(1)
        val_loss = torch.stack([F.cross_entropy(val_logits[g], val_labels) for g in range(len(grid))])
        best = max(range(len(grid)), key=lambda g: (float(val_acc[g]), -float(val_loss[g])))
        test_logits = probes.predict(test_tokens.detach().to(device), batch_size)[best].cpu()
    targets = test_labels.detach().to("cpu", torch.int64)
    accuracy = topk_accuracy(test_logits, targets, (1, 5))
    return AttentiveProbeResult(
        top1=accuracy[1],
        top5=accuracy[5],
        val_top1=float(val_acc[best]),
        train_top1=float(train_top1[best]),
        lr=grid[best][0],
        weight_decay=grid[best][1],
        batch_size=batch_size,
        grid={point: float(val_acc[g]) for g, point in enumerate(grid)},
        confusion=confusion_matrix(test_logits.argmax(1), targets, num_classes),
    )


def select_token_features(features: Mapping[str, FeatureSet], default: str, name: str | None, evaluator: str) -> tuple[str, FeatureSet]:
    """``(name, features[name])`` of a representation that carries patch tokens.

    ``name`` ``None``: ``default`` when it has tokens, else the first representation that has.

    Raises:
        UserError: the name is unknown or has no tokens, or no representation has any.
    """
    with_tokens = [k for k, v in features.items() if v.has_tokens]
    if name is not None:
        choose_representation(features, name, option=f"the {evaluator} parameter representation")
        if not features[name].has_tokens:
            raise UserError(
                f"evaluator {evaluator}: representation {name!r} carries no patch tokens; those with tokens: {', '.join(with_tokens) or '(none)'}"
            )
        return name, features[name]
    if default in with_tokens:
        return default, features[default]
    if not with_tokens:
        raise UserError(
            f"evaluator {evaluator}: it reads patch tokens, but none were extracted for {', '.join(sorted(features)) or 'any representation'}; "
            "tokens are extracted by `hjepa evaluate` for evaluators that declare needs_tokens (not by the online evaluation during training)"
        )
    return with_tokens[0], features[with_tokens[0]]


def build_attentive_probe(params: AttentiveProbeParams, ctx: BuildContext):
    """Factory of the ``attentive_probe`` evaluator (it declares ``needs_tokens``)."""
    if (params.lr is not None and not params.lr) or not params.weight_decay:
        raise UserError("evaluator attentive_probe: lr and weight_decay need at least one value each")
    if ctx.embed_dim is not None and params.num_heads is not None and ctx.embed_dim % params.num_heads:
        raise UserError(f"evaluator attentive_probe: num_heads={params.num_heads} does not divide the token width {ctx.embed_dim}")
    if ctx.embed_dim is not None and params.head == "efficient":
        _queries_for(ctx.embed_dim, params.num_queries)

    def evaluate_attentive_probe(features: Mapping[str, FeatureSet], default: str) -> EvalResult:
        name, feats = select_token_features(features, default, params.representation, "attentive_probe")
        result = attentive_probe(
            feats.train_tokens, feats.train_labels, feats.test_tokens, feats.test_labels, feats.num_classes,
            lr=params.lr, weight_decay=params.weight_decay, epochs=params.epochs, warmup_epochs=params.warmup_epochs,
            batch_size=params.batch_size, min_steps=params.min_steps, head=params.head, num_heads=params.num_heads,
            mlp_ratio=params.mlp_ratio, num_queries=params.num_queries,
            val_fraction=params.val_fraction, seed=params.seed, device=ctx.device,
        )  # fmt: skip
        metrics = {
            "attentive_probe/top1": result.top1,
            "attentive_probe/top5": result.top5,
            "attentive_probe/val_top1": result.val_top1,
            "attentive_probe/train_top1": result.train_top1,
            "attentive_probe/lr": result.lr,
            "attentive_probe/weight_decay": result.weight_decay,
        }
        artifacts = {
            "confusion_matrix": result.confusion,
            "representation": name,
            "batch_size": result.batch_size,
            "grid": {f"lr={a:g},wd={w:g}": acc for (a, w), acc in result.grid.items()},
        }
        return EvalResult(metrics=metrics, artifacts=artifacts, grades={"attentive_probe/top1": ATTENTIVE_PROBE_GRADE})

    evaluate_attentive_probe.needs_tokens = True  # type: ignore[attr-defined]
    return evaluate_attentive_probe


@hookimpl
def hjepa_register_evaluators(register) -> None:
    register(
        "attentive_probe",
        build_attentive_probe,
        params=AttentiveProbeParams,
        summary="Attentive probe on frozen patch tokens: efficient probing (EP, 32 queries; default) or V-JEPA's one-query block; an lr x wd grid trained in one pass.",
    )
