"""Losses ``smooth_l1`` and ``mse``: per-level prediction losses, optionally regularised.

Both compare each hierarchy level's predictions with its targets, element-wise and averaged over
every element of the level's ``(B, M, T, D)`` tensor, and sum the levels with the predictor's
per-level weights (read from ``ctx.level_weights``: the predictor owns them, so they are never
configured twice). Targets are treated as constants (stop-gradient), as in I-JEPA.

Optional regularisers keep the representation from collapsing: VICReg's variance and covariance
terms, and LeJEPA's SIGReg (:mod:`hjepa_kit.plugins.sigreg`), on the context encoder's tokens
(``regularise: tokens``, every token a sample, or with ``token_cell`` each image's tokens averaged
over grid cells) or on each image's pooled context (``pooled``).
All are off by default (weights 0.0) and then cost nothing and add no terms. Measured on real
digits (docs/quality.md): on tokens they prevent the collapse; on mean-pooled embeddings alone both
end below the untrained network, because nothing ties a pooled context embedding to its image
except the regulariser, which a content-free spread then satisfies. On the tokens and each image's
max-pooled tokens together (``regularise: both``, ``pooled_by: max``) the synthetic shapes stay
above their untrained network at the quickstart's length and both digit renderings gain; with the
tokens' terms on 4x4-patch cell means (``token_cell: 4``, the shipped recipe) the nearest digits
and the shapes gain again. The variance hinge's ``std_target``
may fall over the first steps (``std_target_end``, ``std_target_steps``): the loss follows the
optimizer step through ``set_step``, which the training step calls (the core's
:func:`~hjepa_kit.contracts.call_loss`).

References:
    Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
    Architecture" (I-JEPA), CVPR 2023, https://arxiv.org/abs/2301.08243
    Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, https://arxiv.org/abs/2105.04906
    Balestriero, LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
    Heuristics", 2025, https://arxiv.org/abs/2511.08544
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, LossOutput
from hjepa_kit.errors import ConfigError
from hjepa_kit.params import param
from hjepa_kit.plugins.sigreg import SIGReg

__all__ = [
    "SmoothL1Params",
    "MSEParams",
    "PredictionLoss",
    "SmoothL1PredictionLoss",
    "MSEPredictionLoss",
    "variance_loss",
    "covariance_loss",
    "cell_means",
    "cell_table",
    "build_smooth_l1",
    "build_mse",
]


# The regulariser's fields are declared by these helpers so every loss lists them after its own.
def _variance_weight() -> Any:
    return param(
        0.0, help="Weight of the VICReg variance hinge on the context tokens (0 = off; VICReg uses 25).", ge=0.0
    )


def _covariance_weight() -> Any:
    return param(0.0, help="Weight of the VICReg covariance penalty on the context tokens (0 = off; VICReg uses 1).", ge=0.0)


def _std_target() -> Any:
    return param(
        1.0,
        help="Per-dimension standard deviation the variance hinge asks of the context tokens. Tokens that leave the "
        "encoder through a LayerNorm of gain 1 spread at most about 1 on average, so 1 asks for isotropic tokens and "
        "never falls silent; lower values ask less (docs/quality.md measures 0.5-1.0).",
        gt=0.0,
    )


def _pooled_std_target() -> Any:
    return param(
        None,
        help="Standard deviation the variance hinge asks of the pooled context (each image's context tokens pooled as "
        "pooled_by says; `regularise: pooled` or `both`), when it should differ from std_target (null: std_target, "
        "and its schedule). A mean-pooled embedding averages its tokens' spread away, so 1 asks each image to differ from the others by as "
        "much as one token may spread: docs/quality.md measures 0.25-1.0 beside the `ema` cross-view level.",
        gt=0.0,
    )


def _pooled_by() -> Any:
    return param(
        "mean",
        help="How each image's context tokens are pooled for the regularisers on the pooled context (`regularise: "
        "pooled` or `both`): mean (the mean token) or max (each dimension's largest value over the tokens, the pooling "
        "the predictor's levels are evaluated with, feature_pool: max). A mean meets the hinge only when an image's "
        "tokens agree, a max when one token of each image stands out: docs/quality.md measures both; the shipped "
        "recipe uses max.",
        choices=("mean", "max"),
    )


def _std_target_end() -> Any:
    return param(
        None,
        help="Where the variance hinge's std_target ends: it falls linearly from std_target to this value over the "
        "first std_target_steps optimizer steps, then stays (null: std_target throughout). A hinge that never falls "
        "silent rewards any spread, pixel noise included: docs/quality.md measures 1.0 -> 0.5 over 312 steps.",
        gt=0.0,
    )


def _std_target_steps() -> Any:
    return param(
        None,
        help="Optimizer steps over which std_target falls to std_target_end (counted from the run's first step, "
        "so a longer run keeps the end value for longer); set with std_target_end.",
        ge=1,
    )


def _token_cell() -> Any:
    return param(
        1,
        help="Side, in patches, of the grid cells over which each image's context tokens are averaged before the "
        "regularisers on the tokens see them (1: every token a sample). Averaging neighbouring tokens shrinks what "
        "differs from patch to patch (pixel noise) and keeps what spans them (strokes, shapes), so the spread the "
        "variance hinge asks for must come from content. docs/quality.md measures 2 and 4: on the tokens alone 4 helps "
        "blocky digits at the quickstart's length and unlearns smooth ones over a longer schedule; beside the max-pooled "
        "context (regularise: both, pooled_by: max) it holds over a 4x schedule and is the shipped recipe.",
        ge=1,
    )


def _centre_tokens() -> Any:
    return param(
        False,
        help="Subtract each image's mean context token before the regularisers on the tokens see them: the token "
        "terms then ask for spread between the patches of one image, and with `regularise: both` the pooled terms ask "
        "for spread between images, each at its own target (pooled_std_target). Uncentred tokens may meet the hinge "
        "with anything that differs from image to image, such as each image's noise level (docs/quality.md).",
    )


def _sigreg_weight() -> Any:
    return param(
        0.0,
        help="Weight of SIGReg (LeJEPA's isotropic-Gaussian test over random 1-D projections) on the context "
        "embeddings (0 = off; LeJEPA's lambda = 0.05 is a weight of about 0.05).",
        ge=0.0,
    )


def _sigreg_slices() -> Any:
    return param(
        128, help="Random directions SIGReg draws per step (cost linear in it: 128 adds about 7% to a native-32 step).", ge=1
    )


def _regularise() -> Any:
    return param(
        "tokens",
        help="What the regularisers see: `tokens` (every context token is a sample) or `pooled` (each image's "
        "context tokens pooled, by their mean or their per-dimension max as pooled_by says: one sample per image, as "
        "LeJEPA and VICReg use image embeddings), or `both` "
        "(the same weights on each; the pooled terms are logged as pooled_variance ...).",
        choices=("tokens", "pooled", "both"),
    )


def _sigreg_regularise() -> Any:
    return param(
        None,
        help="What SIGReg sees, when it should differ from `regularise` (`tokens`, `pooled` or `both`); null: as "
        "`regularise`. LeJEPA tests the pooled image embeddings: `pooled` here keeps VICReg on the tokens.",
        choices=(None, "tokens", "pooled", "both"),
    )


@attrs.frozen(kw_only=True)
class SmoothL1Params:
    """Parameters of the ``smooth_l1`` loss."""

    beta: float = param(1.0, help="Where smooth L1 turns from quadratic to linear (I-JEPA uses 1.0).", gt=0.0)
    variance_weight: float = _variance_weight()
    covariance_weight: float = _covariance_weight()
    std_target: float = _std_target()
    pooled_std_target: float | None = _pooled_std_target()
    pooled_by: Literal["mean", "max"] = _pooled_by()
    std_target_end: float | None = _std_target_end()
    std_target_steps: int | None = _std_target_steps()
    token_cell: int = _token_cell()
    centre_tokens: bool = _centre_tokens()
    sigreg_weight: float = _sigreg_weight()
    sigreg_slices: int = _sigreg_slices()
    regularise: Literal["tokens", "pooled", "both"] = _regularise()
    sigreg_regularise: Literal["tokens", "pooled", "both"] | None = _sigreg_regularise()


@attrs.frozen(kw_only=True)
class MSEParams:
    """Parameters of the ``mse`` loss."""

    variance_weight: float = _variance_weight()
    covariance_weight: float = _covariance_weight()
    std_target: float = _std_target()
    pooled_std_target: float | None = _pooled_std_target()
    pooled_by: Literal["mean", "max"] = _pooled_by()
    std_target_end: float | None = _std_target_end()
    std_target_steps: int | None = _std_target_steps()
    token_cell: int = _token_cell()
    centre_tokens: bool = _centre_tokens()
    sigreg_weight: float = _sigreg_weight()
    sigreg_slices: int = _sigreg_slices()
    regularise: Literal["tokens", "pooled", "both"] = _regularise()
    sigreg_regularise: Literal["tokens", "pooled", "both"] | None = _sigreg_regularise()


def _as_rows(features: Tensor) -> Tensor:
    """``(..., D)`` -> ``(N, D)`` float32, checking there are at least two rows."""
    rows = features.reshape(-1, features.shape[-1]).float()
    if rows.shape[0] < 2:
        raise ValueError(f"features of shape {tuple(features.shape)} have fewer than 2 rows: a spread needs at least 2")
    return rows


def cell_means(tokens: Tensor, indices: Tensor, grid_size: tuple[int, int], cell: int) -> Tensor:
    """Each image's tokens averaged over the ``cell`` x ``cell`` patch cells of the grid that hold any of them.

    Args:
        tokens: ``(B, N, D)`` tokens of ``N`` patches per image.
        indices: ``(B, N)`` int64 grid positions of those patches (row-major patch indices).
        grid_size: ``(rows, cols)`` of the patch grid; edge cells of a grid the cell does not divide are smaller.
        cell: side of a cell in patches.

    Returns:
        ``(K, D)`` float32: one row per (image, cell) that holds at least one token, the mean of its tokens.
        ``K`` depends on the positions, so on a GPU this waits for the device; the loss uses
        :func:`cell_table` instead, whose shape is fixed.

    Raises:
        ValueError: when ``indices`` is not shaped like ``tokens``' first two dimensions (positions are
            not checked against the grid: that would wait for the device every step).
    """
    means, held = cell_table(tokens, indices, grid_size, cell)
    return means[held > 0]


def cell_table(tokens: Tensor, indices: Tensor, grid_size: tuple[int, int], cell: int) -> tuple[Tensor, Tensor]:
    """Every (image, cell) of the grid: the mean of its tokens and whether it holds any.

    The same rows as :func:`cell_means` plus a zero row for each empty cell, so the shapes do not
    depend on the positions and nothing waits for the device; :func:`variance_loss` and
    :func:`covariance_loss` take the second tensor as their ``weights``.

    Args:
        tokens, indices, grid_size, cell: as for :func:`cell_means`.

    Returns:
        ``(B * cells, D)`` float32 means (zero for empty cells) and ``(B * cells,)`` float32: 1 for a
        cell that holds a token, 0 for an empty one.

    Raises:
        ValueError: as :func:`cell_means`.
    """
    rows, cols = grid_size
    if indices.shape != tokens.shape[:2]:
        raise ValueError(f"context indices of shape {tuple(indices.shape)} do not match tokens of shape {tuple(tokens.shape)}")
    batch, _, dim = tokens.shape
    cells_across = -(-cols // cell)
    per_image = -(-rows // cell) * cells_across
    cell_id = (indices // cols) // cell * cells_across + (indices % cols) // cell
    flat = (cell_id + torch.arange(batch, device=indices.device)[:, None] * per_image).reshape(-1)
    values = tokens.float().reshape(-1, dim)
    sums = values.new_zeros(batch * per_image, dim).index_add_(0, flat, values)
    counts = values.new_zeros(batch * per_image).index_add_(0, flat, values.new_ones(flat.shape[0]))
    return sums / counts.clamp(min=1.0)[:, None], (counts > 0).float()


def _moments(features: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, centred rows, n - 1)``: rows of ``features`` (those of weight 1 when ``weights`` are given) centred on their mean.

    With ``weights`` (one 0/1 per row) the rows of weight 0 are kept, centred to zero, so shapes stay
    fixed and nothing waits for the device; at least two rows of weight 1 are assumed, not checked.
    """
    if weights is None:
        rows = _as_rows(features)
        return rows, rows - rows.mean(dim=0), rows.new_tensor(rows.shape[0] - 1.0)
    rows = features.reshape(-1, features.shape[-1]).float()
    w = weights.reshape(-1, 1).to(rows.dtype)
    n = w.sum()
    centred = (rows - (w * rows).sum(dim=0) / n.clamp(min=1.0)) * w
    return rows, centred, (n - 1.0).clamp(min=1.0)


def variance_loss(features: Tensor, std_target: float = 1.0, eps: float = 1e-4, *, weights: Tensor | None = None) -> Tensor:
    """VICReg's variance term: a hinge that asks every dimension to spread at least ``std_target``.

    ``mean_d relu(std_target - sqrt(var_d + eps))`` over the rows of ``features``. Fully collapsed
    features (every row equal) give the largest value, ``std_target - sqrt(eps)``; their gradient
    is zero at exact equality (as in VICReg) and pushes the spread up as soon as rows differ.

    Args:
        features: ``(..., D)``; every leading position is one sample (``(B, Nc, D)`` context tokens
            count as ``B * Nc`` samples).
        std_target: the standard deviation asked of each dimension.
        eps: keeps the square root differentiable at zero variance.
        weights: optional 0/1 per row (:func:`cell_table`'s); rows of weight 0 are left out.

    Returns:
        A scalar float32 tensor.
    """
    _, centred, dof = _moments(features, weights)
    std = torch.sqrt(centred.pow(2).sum(dim=0) / dof + eps)
    return F.relu(std_target - std).mean()


def covariance_loss(features: Tensor, *, weights: Tensor | None = None) -> Tensor:
    """VICReg's covariance term: the squared off-diagonal covariances, summed and divided by ``D``.

    Pushes dimensions to be decorrelated, so information is not copied across them.

    Args:
        features: ``(..., D)``; every leading position is one sample.
        weights: optional 0/1 per row (:func:`cell_table`'s); rows of weight 0 are left out.

    Returns:
        A scalar float32 tensor.
    """
    rows, centred, dof = _moments(features, weights)
    d = rows.shape[1]
    cov = centred.T @ centred / dof  # (D, D)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


class PredictionLoss(nn.Module):
    """Weighted sum over hierarchy levels of an element-wise prediction loss, plus a regulariser.

    ``total = sum_l level_weights[l] * loss(predictions[l], targets[l])
    + variance_weight * variance(context) + covariance_weight * covariance(context)``.
    Subclasses define :meth:`element_loss`.

    Attributes:
        level_weights: loss weight per hierarchy level.
        variance_weight: weight of :func:`variance_loss` on the context tokens (0 = off).
        covariance_weight: weight of :func:`covariance_loss` on the context tokens (0 = off).
        std_target: standard deviation the variance hinge asks for now (it follows the schedule
            when ``std_target_end`` is given; :meth:`set_step` moves it).
        std_target_start, std_target_end, std_target_steps: the schedule: ``std_target`` falls
            linearly from ``std_target_start`` to ``std_target_end`` over the first
            ``std_target_steps`` optimizer steps, then stays (``std_target_end`` ``None``: no schedule).
        pooled_std_target: the std asked of the pooled context instead (``None``: ``std_target``).
        pooled_by: how the pooled context pools each image's tokens: ``"mean"`` or ``"max"`` (per dimension).
        centre_tokens: whether each image's context tokens are centred on their mean before the
            regularisers on the tokens see them (spread within images only).

    Raises:
        ValueError: when the numbers of predictions, targets and weights differ, a level's
            prediction and target shapes differ, or the regulariser is on and no context is given.
    """

    def __init__(
        self,
        level_weights: Sequence[float],
        *,
        variance_weight: float = 0.0,
        covariance_weight: float = 0.0,
        std_target: float = 1.0,
        pooled_std_target: float | None = None,
        pooled_by: str = "mean",
        std_target_end: float | None = None,
        std_target_steps: int | None = None,
        token_cell: int = 1,
        centre_tokens: bool = False,
        grid_size: tuple[int, int] | None = None,
        sigreg_weight: float = 0.0,
        sigreg_slices: int = 128,
        regularise: str = "tokens",
        sigreg_regularise: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, side in (("regularise", regularise), ("sigreg_regularise", sigreg_regularise or regularise)):
            if side not in ("tokens", "pooled", "both"):
                raise ValueError(f"{name} must be 'tokens', 'pooled' or 'both', got {side!r}")
        self.level_weights = tuple(float(w) for w in level_weights)
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.std_target = self.std_target_start = float(std_target)
        if (std_target_end is None) != (std_target_steps is None):
            raise ValueError(f"std_target_end={std_target_end} and std_target_steps={std_target_steps}: give both "
                             "(a schedule of the hinge's std_target) or neither")
        if std_target_steps is not None and std_target_steps < 1:
            raise ValueError(f"std_target_steps must be at least 1, got {std_target_steps}")
        self.std_target_end = None if std_target_end is None else float(std_target_end)
        self.std_target_steps = None if std_target_steps is None else int(std_target_steps)
        if pooled_std_target is not None and pooled_std_target <= 0:
            raise ValueError(f"pooled_std_target must be positive, got {pooled_std_target}")
        self.pooled_std_target = None if pooled_std_target is None else float(pooled_std_target)
        if pooled_by not in ("mean", "max"):
            raise ValueError(f"pooled_by must be 'mean' or 'max', got {pooled_by!r}")
        self.pooled_by = pooled_by
        if token_cell < 1:
            raise ValueError(f"token_cell must be at least 1, got {token_cell}")
        if token_cell > 1 and grid_size is None:
            raise ValueError(f"token_cell={token_cell} averages the context tokens over grid cells, but no grid_size was given")
        self.token_cell = int(token_cell)
        self.centre_tokens = bool(centre_tokens)
        self.grid_size = (int(grid_size[0]), int(grid_size[1])) if grid_size is not None else None
        self.sigreg_weight = float(sigreg_weight)
        self.regularise = regularise
        self.sigreg_regularise = sigreg_regularise or regularise
        self.sigreg = SIGReg(num_slices=sigreg_slices, seed=seed) if self.sigreg_weight > 0 else None

    def std_target_at(self, step: int) -> float:
        """The std the variance hinge asks for after ``step`` optimizer steps (the schedule's value; constant without one)."""
        if self.std_target_end is None or self.std_target_steps is None:
            return self.std_target_start
        progress = min(max(step, 0) / self.std_target_steps, 1.0)
        return self.std_target_start + (self.std_target_end - self.std_target_start) * progress

    def _side_std_target(self, pooled: bool) -> float:
        """The std the variance hinge asks of the pooled context (``pooled``) or of the tokens now."""
        return self.pooled_std_target if pooled and self.pooled_std_target is not None else self.std_target

    def set_step(self, step: int) -> None:
        """Follow the schedule: the core calls this before each micro-batch with the optimizer steps done.

        A pure function of ``step``, so a resumed run asks for exactly what it asked before.
        """
        self.std_target = self.std_target_at(step)

    @property
    def regularised(self) -> bool:
        """Whether any regulariser is on (the loss then needs the context tokens)."""
        return self.variance_weight > 0 or self.covariance_weight > 0 or self.sigreg_weight > 0

    @property
    def uses_context_indices(self) -> bool:
        """Whether the loss needs the context tokens' grid positions (``token_cell > 1`` on the tokens)."""
        return self.token_cell > 1 and "tokens" in self._sides()

    def collapse_remedies(self) -> list[dict[str, object]]:
        """Parameter changes a collapsed run may resume with: VICReg on the context tokens (measured in docs/quality.md)."""
        # Centred tokens hold nothing against every image's mean falling to one point: the remedy drops them.
        uncentre: dict[str, object] = {"centre_tokens": False} if self.centre_tokens else {}
        if self.variance_weight >= 1.0 and self.regularise == "tokens":
            return [{"variance_weight": 2 * self.variance_weight, **uncentre}]
        remedy: dict[str, object] = {"variance_weight": max(1.0, self.variance_weight), "covariance_weight": max(0.04, self.covariance_weight)}
        if self.regularise != "tokens":
            remedy["regularise"] = "tokens"
            if self.pooled_std_target is not None:  # nothing pooled is left to ask it of
                remedy["pooled_std_target"] = None
            if self.pooled_by != "mean":
                remedy["pooled_by"] = "mean"
        return [{**remedy, **uncentre}]

    def _sides(self) -> dict[str, tuple[bool, bool]]:
        """``side -> (vicreg, sigreg)``: which terms see the ``tokens`` and the ``pooled`` context (sides nothing sees left out).

        VICReg's terms see the sides ``regularise`` names, SIGReg's those ``sigreg_regularise`` names.
        """
        sides = {side: (self.regularise in (side, "both"), self.sigreg is not None and self.sigreg_regularise in (side, "both"))
                 for side in ("tokens", "pooled")}  # fmt: skip
        return {side: flags for side, flags in sides.items() if any(flags)}

    def _regulariser_terms(
        self, embeddings: Tensor, prefix: str, terms: dict[str, Tensor], vicreg: bool, sigreg: bool, weights: Tensor | None = None,
        *, pooled: bool = False,
    ) -> list[Tensor]:
        """The weighted regulariser terms of ``embeddings`` (their unweighted values go into ``terms``): VICReg's if ``vicreg``, SIGReg's if ``sigreg``.

        ``weights`` (0/1 per row, :func:`cell_table`'s) leave rows out of VICReg's terms without a
        device wait; SIGReg takes the kept rows (a wait, only when it sees cell means).
        """
        term_weights = (("variance", self.variance_weight if vicreg else 0.0), ("covariance", self.covariance_weight if vicreg else 0.0),
                        ("sigreg", self.sigreg_weight if sigreg else 0.0))  # fmt: skip
        if embeddings.reshape(-1, embeddings.shape[-1]).shape[0] < 2:
            # One image pooled (a memory estimate, a batch of 1): no spread to measure; the terms
            # are zero but stay in the graph so that backward() sees the same parameters.
            zero = embeddings.float().sum() * 0.0
            terms.update({prefix + name: zero for name, weight in term_weights if weight > 0})
            return [zero]
        parts = []
        if vicreg and self.variance_weight > 0:
            terms[prefix + "variance"] = variance_loss(embeddings, self._side_std_target(pooled), weights=weights)
            parts.append(self.variance_weight * terms[prefix + "variance"])
        if vicreg and self.covariance_weight > 0:
            terms[prefix + "covariance"] = covariance_loss(embeddings, weights=weights)
            parts.append(self.covariance_weight * terms[prefix + "covariance"])
        if sigreg:
            kept = embeddings if weights is None else embeddings.reshape(-1, embeddings.shape[-1])[weights.reshape(-1) > 0]
            terms[prefix + "sigreg"] = self.sigreg(kept)
            parts.append(self.sigreg_weight * terms[prefix + "sigreg"])
        return parts

    def _token_rows(self, context: Tensor, context_indices: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """What the regularisers on the tokens see: the tokens, or with ``token_cell > 1`` their cell table (means, weights).

        With ``centre_tokens`` each image's tokens are first centred on their mean.
        """
        if self.centre_tokens:
            context = context.float() - context.float().mean(dim=1, keepdim=True)
        if self.token_cell == 1:
            return context, None
        if context_indices is None:
            raise ValueError(f"token_cell={self.token_cell} averages the context tokens over grid cells, but no "
                             "context_indices were given (call the loss through hjepa_kit.contracts.call_loss)")
        assert self.grid_size is not None  # checked in __init__
        return cell_table(context, context_indices, self.grid_size, self.token_cell)

    def _pooled_rows(self, context: Tensor) -> Tensor:
        """What the regularisers on the pooled context see: each image's ``(B, Nc, D)`` tokens pooled to ``(B, D)``."""
        return context.float().amax(dim=1) if self.pooled_by == "max" else context.float().mean(dim=1)

    def element_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean element-wise loss of one level (scalar)."""
        raise NotImplementedError

    def forward(
        self, predictions: Sequence[Tensor], targets: Sequence[Tensor], context: Tensor | None = None, *,
        context_indices: Tensor | None = None,
    ) -> LossOutput:
        """Combine the levels' losses.

        Args:
            predictions: one ``(B, M, T, D)`` tensor per level.
            targets: one tensor per level, shaped like its prediction (treated as constants).
            context: ``(B, Nc, D)`` context-encoder tokens; needed only when the regulariser is on.
            context_indices: ``(B, Nc)`` grid positions of the context tokens; needed only with
                ``token_cell > 1`` (:func:`hjepa_kit.contracts.call_loss` passes them).

        Returns:
            ``total`` and ``terms``: ``level0``, ``level1`` ... (unweighted), plus ``variance`` and
            ``covariance`` (unweighted) when their weights are positive.
        """
        if not len(predictions) == len(targets) == len(self.level_weights):
            raise ValueError(
                f"got {len(predictions)} prediction levels, {len(targets)} target levels and "
                f"{len(self.level_weights)} level weights {self.level_weights}; they must be equal"
            )
        terms: dict[str, Tensor] = {}
        parts = []
        for level, (prediction, target, weight) in enumerate(zip(predictions, targets, self.level_weights)):
            if prediction.shape != target.shape:
                raise ValueError(
                    f"level {level}: predictions have shape {tuple(prediction.shape)} but targets "
                    f"have shape {tuple(target.shape)}"
                )
            # float32: a bf16 mean over ~10^5 elements loses the small differences late in training.
            value = self.element_loss(prediction.float(), target.detach().float())
            terms[f"level{level}"] = value
            parts.append(weight * value)
        if self.regularised:
            if context is None:
                raise ValueError(
                    f"variance_weight={self.variance_weight}, covariance_weight={self.covariance_weight} and "
                    f"sigreg_weight={self.sigreg_weight} regularise the context tokens, but no context was given"
                )
            sides = self._sides()
            for side, (vicreg, sigreg) in sides.items():
                embeddings, weights = (self._pooled_rows(context), None) if side == "pooled" else self._token_rows(context, context_indices)
                prefix = "pooled_" if len(sides) == 2 and side == "pooled" else ""
                parts.extend(self._regulariser_terms(embeddings, prefix, terms, vicreg, sigreg, weights, pooled=side == "pooled"))
        total = torch.stack(parts).sum()
        return LossOutput(total=total, terms=terms)


class SmoothL1PredictionLoss(PredictionLoss):
    """Smooth L1 (Huber with slope 1) between predicted and target features, per level.

    I-JEPA's prediction loss: quadratic for differences below ``beta``, linear above, so early large
    errors do not dominate the gradient. Paper: Assran et al., I-JEPA, CVPR 2023
    (https://arxiv.org/abs/2301.08243); regulariser: Bardes et al., VICReg, ICLR 2022
    (https://arxiv.org/abs/2105.04906).

    Attributes:
        beta: where the loss turns from quadratic to linear.
        level_weights, variance_weight, covariance_weight, std_target: see :class:`PredictionLoss`.

    Example:
        ```python
        loss = SmoothL1PredictionLoss((1.0, 0.5))
        out = loss(predictor(context, masks), predictor.make_targets(target_output, masks), context)
        out.total.backward()  # out.terms: {"level0": ..., "level1": ...}
        ```

    Raises:
        ValueError: see :class:`PredictionLoss`.
    """

    def __init__(self, level_weights: Sequence[float], *, beta: float = 1.0, **regulariser: float) -> None:
        super().__init__(level_weights, **regulariser)
        self.beta = float(beta)

    def element_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(prediction, target, beta=self.beta)


class MSEPredictionLoss(PredictionLoss):
    """Mean squared error between predicted and target features, per level.

    The L2 prediction loss of JEPA-style methods; more sensitive to large errors than smooth L1.
    Papers: Assran et al., I-JEPA (https://arxiv.org/abs/2301.08243); regulariser: Bardes et al.,
    VICReg (https://arxiv.org/abs/2105.04906).

    Attributes:
        level_weights, variance_weight, covariance_weight, std_target: see :class:`PredictionLoss`.

    Example:
        ```python
        loss = MSEPredictionLoss((1.0, 0.5), variance_weight=1.0)
        loss(predictions, targets, context).terms  # {"level0": ..., "level1": ..., "variance": ...}
        ```

    Raises:
        ValueError: see :class:`PredictionLoss`.
    """

    def element_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target)


def _level_weights(ctx: BuildContext) -> tuple[float, ...]:
    if ctx.level_weights is None:
        raise ConfigError(
            "the loss reads its per-level weights from the predictor (ctx.level_weights), which is not known yet: "
            "build the predictor first"
        )
    weights = tuple(float(w) for w in ctx.level_weights)
    if ctx.num_levels is not None and len(weights) != ctx.num_levels:
        raise ConfigError(
            f"the predictor declares num_levels={ctx.num_levels} but level_weights={weights} "
            f"({len(weights)} entries): give one weight per level"
        )
    return weights


def _regulariser(params: SmoothL1Params | MSEParams, ctx: BuildContext) -> dict[str, Any]:
    if (params.std_target_end is None) != (params.std_target_steps is None):
        given, missing = ("std_target_end", "std_target_steps") if params.std_target_steps is None else ("std_target_steps", "std_target_end")
        raise ConfigError(f"{given} is set but {missing} is not: the variance hinge's std_target falls from std_target "
                          "to std_target_end over std_target_steps optimizer steps; set both, or neither")
    sigreg_sides = (params.sigreg_regularise or params.regularise) if params.sigreg_weight > 0 else None
    if params.centre_tokens and params.regularise == "pooled" and sigreg_sides in (None, "pooled"):
        raise ConfigError("centre_tokens centres the context tokens for the regularisers on the tokens, but none sees them "
                          f"(regularise: {params.regularise}): set regularise to tokens or both, or drop centre_tokens")
    if params.pooled_std_target is not None and params.regularise == "tokens":
        raise ConfigError(f"pooled_std_target={params.pooled_std_target} is what the variance hinge asks of the pooled context, "
                          "but regularise: tokens never shows it the pooled context: set regularise to pooled or both, or "
                          "drop pooled_std_target")
    if params.pooled_by != "mean" and sigreg_sides in (None, "tokens") and params.regularise == "tokens":
        raise ConfigError(f"pooled_by: {params.pooled_by} is how the pooled context is pooled for the regularisers, but "
                          "none sees it (regularise: tokens): set regularise to pooled or both, or pooled_by to mean")
    if params.token_cell > 1 and ctx.grid_size is None:
        raise ConfigError(f"token_cell={params.token_cell} averages the context tokens over cells of the encoder's patch "
                          "grid, which is not known yet: build the encoder first")
    return dict(
        variance_weight=params.variance_weight, covariance_weight=params.covariance_weight, std_target=params.std_target,
        pooled_std_target=params.pooled_std_target, pooled_by=params.pooled_by, std_target_end=params.std_target_end, std_target_steps=params.std_target_steps,
        token_cell=params.token_cell, centre_tokens=params.centre_tokens, grid_size=ctx.grid_size,
        sigreg_weight=params.sigreg_weight, sigreg_slices=params.sigreg_slices, regularise=params.regularise,
        sigreg_regularise=params.sigreg_regularise,
    )


def build_smooth_l1(params: SmoothL1Params, ctx: BuildContext) -> SmoothL1PredictionLoss:
    """Build the ``smooth_l1`` loss with the predictor's level weights from ``ctx``.

    Raises:
        ConfigError: when ``ctx.level_weights`` is unknown or its length differs from ``ctx.num_levels``.
    """
    return SmoothL1PredictionLoss(_level_weights(ctx), beta=params.beta, **_regulariser(params, ctx))


def build_mse(params: MSEParams, ctx: BuildContext) -> MSEPredictionLoss:
    """Build the ``mse`` loss with the predictor's level weights from ``ctx``.

    Raises:
        ConfigError: when ``ctx.level_weights`` is unknown or its length differs from ``ctx.num_levels``.
    """
    return MSEPredictionLoss(_level_weights(ctx), **_regulariser(params, ctx))


@hookimpl
def hjepa_register_losses(register) -> None:  # noqa: ANN001 - the core's Register callback
    register("smooth_l1", build_smooth_l1, params=SmoothL1Params,
             summary="I-JEPA's smooth L1 over hierarchy levels, optional SIGReg or VICReg regulariser.")
    register("mse", build_mse, params=MSEParams,
             summary="Mean squared error over hierarchy levels, optional SIGReg or VICReg regulariser.")
