"""Pure math on feature matrices: spectra, ranks, variance, similarity, accuracy, grades, collapse.

These functions take plain tensors and return plain numbers, so the evaluator plugins, the report
and the training-time collapse monitor can all share them (the core may import this module; it
imports no plugin); :func:`judge_collapse` is the one definition of representation collapse.
Inputs are ``(N, D)`` feature matrices, ``N`` samples of width ``D``; any float dtype and device.
Sums that lose precision in float32 at ``N = 10^5`` (Gram matrices, centring) are done in float64,
in row chunks so memory stays ``O(chunk * D + D^2)``.

Two different "ranks" are computed, and they answer different questions:

- :func:`effective_rank` is RankMe (Garrido et al., 2023): ``exp`` of the Shannon entropy of the
  L1-normalised singular values of the centred features. A smooth count of used directions:
  ``D`` for isotropic features, ``1`` for rank-one features.
- :func:`energy_rank` is the plan's "effective rank", which the plan grades (48 / 96 / 144 of
  192): the number of leading singular values that hold a fraction (95%) of the
  squared-singular-value energy (the variance explained by principal components). (Summing plain
  singular values of uncentred tokens instead counts more components; squared values of centred
  features are the variance-explained reading.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
import torch
from torch import Tensor

__all__ = [
    "GRADES",
    "feature_variance",
    "singular_values",
    "effective_rank",
    "rankme_from_spectrum",
    "energy_rank",
    "energy_rank_from_spectrum",
    "dims_holding_variance",
    "mean_pairwise_cosine",
    "linear_cka",
    "cka_matrix",
    "topk_accuracy",
    "topk_correct",
    "grade",
    "Collapse",
    "judge_collapse",
]

#: Grade names, from below every threshold to above the last.
GRADES: tuple[str, ...] = ("below minimum", "minimum", "good", "excellent")

_CHUNK = 65536


def _as_matrix(x: Tensor, name: str = "x") -> Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix, got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    return x.detach()


def _column_mean(x: Tensor, chunk: int = _CHUNK) -> Tensor:
    """``(D,)`` float64 column means of ``(N, D)`` ``x``."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        total += x[start : start + chunk].to(torch.float64).sum(0)
    return total / x.shape[0]


def _centred_gram(x: Tensor, chunk: int = _CHUNK) -> Tensor:
    """Float64 ``(D, D)`` matrix ``Xc^T Xc`` of the column-centred ``(N, D)`` ``x``."""
    mean = _column_mean(x, chunk)
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        xc = x[start : start + chunk].to(torch.float64) - mean
        gram += xc.T @ xc
    return gram


def feature_variance(x: Tensor) -> Tensor:
    """Per-dimension (unbiased) variance of ``(N, D)`` features, as a float64 ``(D,)`` tensor.

    Zero when ``N == 1`` (a single sample has no spread).
    """
    x = _as_matrix(x)
    if x.shape[0] < 2:
        return torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    mean = _column_mean(x)
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _CHUNK):
        total += (x[start : start + _CHUNK].to(torch.float64) - mean).square().sum(0)
    return total / (x.shape[0] - 1)


def singular_values(x: Tensor) -> Tensor:
    """Singular values of the column-centred ``(N, D)`` features, descending, float64 on the CPU.

    Computed as square roots of the eigenvalues of the ``(D, D)`` Gram matrix: ``O(N D^2)`` work
    and ``O(D^2)`` memory instead of an SVD of the whole matrix. Relative precision of the
    smallest values is about ``1e-8`` of the largest, far below what the ranks here resolve.

    Returns:
        ``(min(N, D),)`` tensor.
    """
    x = _as_matrix(x)
    eigenvalues = torch.linalg.eigvalsh(_centred_gram(x).cpu())
    values = eigenvalues.clamp_min(0).sqrt().flip(0)
    return values[: min(x.shape[0], x.shape[1])]


def rankme_from_spectrum(values: Tensor, eps: float = 1e-12) -> float:
    """RankMe of a spectrum: ``exp(-sum p log p)`` with ``p = s / sum(s)``.

    Args:
        values: ``(K,)`` non-negative singular values.
        eps: added inside the log so zero values contribute nothing.

    Returns:
        A number in ``[1, K]``; ``0.0`` for an all-zero spectrum (features without any spread
        use no direction at all).
    """
    values = values.detach().to(torch.float64).clamp_min(0)
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total
    entropy = -(p * torch.log(p + eps)).sum()
    return float(torch.exp(entropy))


def effective_rank(x: Tensor) -> float:
    """RankMe effective rank of ``(N, D)`` features (see :func:`rankme_from_spectrum`)."""
    return rankme_from_spectrum(singular_values(x))


def energy_rank_from_spectrum(values: Tensor, energy: float = 0.95) -> int:
    """Number of leading singular values holding ``energy`` of the squared-value total.

    The smallest ``k`` with ``sum(s[:k]^2) >= energy * sum(s^2)``. ``values`` need not be sorted.

    Args:
        values: ``(K,)`` non-negative singular values.
        energy: the fraction to hold, in ``(0, 1]``.

    Returns:
        ``k`` in ``[1, K]``; ``0`` for an all-zero spectrum.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    squared = values.detach().to(torch.float64).clamp_min(0).sort(descending=True).values.square()
    total = squared.sum()
    if total <= 0:
        return 0
    cumulative = squared.cumsum(0) / total
    # A tolerance so that exactly-reached fractions (e.g. 1.0) are not lost to rounding.
    k = int((cumulative < energy - 1e-12).sum()) + 1
    return min(k, squared.numel())


def energy_rank(x: Tensor, energy: float = 0.95) -> int:
    """The energy rank of ``(N, D)`` features: principal components holding ``energy`` of the variance."""
    return energy_rank_from_spectrum(singular_values(x), energy)


def dims_holding_variance(x: Tensor, fraction: float = 0.99) -> int:
    """Number of coordinate dimensions (not principal components) holding ``fraction`` of the variance.

    Sorts the per-dimension variances of ``(N, D)`` ``x`` and counts the largest ones needed to
    reach ``fraction`` of their sum: low when a few raw feature dimensions carry all the spread.
    ``0`` when there is no variance at all.
    """
    return energy_rank_from_spectrum(feature_variance(x).sqrt(), fraction)


def mean_pairwise_cosine(x: Tensor) -> float:
    """Mean cosine similarity over all pairs ``i != j`` of the ``(N, D)`` rows, exactly, in ``O(N D)``.

    With unit rows ``u_i``, ``sum_{i != j} <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2``, so no
    ``N x N`` matrix (and no subsample) is needed. Zero rows count as similarity 0. ``1.0`` means
    every sample points the same way (collapse); about ``0`` means directions are spread.
    """
    x = _as_matrix(x)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squared_norms = 0.0
    for start in range(0, n, _CHUNK):
        rows = x[start : start + _CHUNK].to(torch.float64)
        unit = torch.nn.functional.normalize(rows, dim=1)
        total += unit.sum(0)
        squared_norms += float(unit.square().sum())
    return (float(total.square().sum()) - squared_norms) / (n * (n - 1))


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019) of two representations of the same samples.

    ``CKA = |Xc^T Yc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F)`` on column-centred features; the widths may
    differ. It is 1 for ``y = x``, unchanged by orthogonal transforms and isotropic scaling of
    either side, and near 0 for unrelated features (with a positive bias of order ``D / N``).

    Args:
        x: ``(N, Dx)`` features.
        y: ``(N, Dy)`` features of the same ``N`` samples, in the same order.

    Returns:
        CKA in ``[0, 1]``; ``nan`` when either side has no variance.
    """
    return float(cka_matrix([x, y])[0, 1])


def cka_matrix(representations: Sequence[Tensor]) -> Tensor:
    """Linear CKA between every pair of ``K`` representations of the same ``N`` samples.

    Each representation's Gram matrix is computed once and each cross product once, in row
    chunks, so ``K`` representations cost ``K (K + 1) / 2`` products of ``O(N D^2)``.

    Args:
        representations: ``K`` matrices ``(N, D_k)``; widths may differ.

    Returns:
        ``(K, K)`` float64 symmetric matrix (see :func:`linear_cka`); ``nan`` where a side has no
        variance, including its diagonal entry.
    """
    xs = [_as_matrix(x, f"representations[{i}]") for i, x in enumerate(representations)]
    n = xs[0].shape[0] if xs else 0
    for i, x in enumerate(xs):
        if x.shape[0] != n:
            raise ValueError(f"CKA needs the same samples in every representation: [0] has {n} rows, [{i}] has {x.shape[0]}")
    means = [_column_mean(x) for x in xs]
    products = {
        (i, j): torch.zeros(xs[i].shape[1], xs[j].shape[1], dtype=torch.float64)
        for i in range(len(xs))
        for j in range(i, len(xs))
    }
    chunk = max(1, _CHUNK // max(1, len(xs)))
    for start in range(0, n, chunk):
        centred = [(x[start : start + chunk].to(torch.float64) - m).cpu() for x, m in zip(xs, means)]
        for i, j in products:
            products[i, j] += centred[i].T @ centred[j]
    norms = [float(torch.linalg.matrix_norm(products[i, i])) for i in range(len(xs))]
    out = torch.full((len(xs), len(xs)), float("nan"), dtype=torch.float64)
    for (i, j), product in products.items():
        if norms[i] > 0 and norms[j] > 0:
            out[i, j] = out[j, i] = float(product.square().sum()) / (norms[i] * norms[j])
    return out


def topk_accuracy(scores: Tensor, labels: Tensor, topk: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true label is among the ``k`` highest scores, for each ``k``.

    Args:
        scores: ``(N, C)`` class scores (logits, votes).
        labels: ``(N,)`` int64 true classes.
        topk: the ``k`` values; each is capped at ``C`` (top-5 of 3 classes is top-3, i.e. 1.0).

    Returns:
        ``k -> accuracy`` in ``[0, 1]``, keyed by the requested ``k``.
    """
    correct = topk_correct(scores, labels, topk)
    n = max(int(labels.shape[0]), 1)
    return {k: c / n for k, c in correct.items()}


def topk_correct(scores: Tensor, labels: Tensor, topk: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of rows whose true label is among the ``k`` highest of ``(N, C)`` ``scores``, per ``k``."""
    topk = tuple(topk)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    largest = min(max(topk), scores.shape[1])
    predicted = scores.topk(largest, dim=1).indices
    hits = predicted == labels.to(predicted.device).view(-1, 1)
    return {k: int(hits[:, : min(k, largest)].any(dim=1).sum()) for k in topk}


def grade(value: float, thresholds: Sequence[float]) -> str:
    """The grade of ``value``: one of :data:`GRADES`, from ``(minimum, good, excellent)``.

    A grade is reached when the value is strictly above its threshold ("> 50%").
    ``nan`` grades ``"below minimum"``.
    """
    reached = sum(1 for t in thresholds if value > t)  # nan > t is False
    return GRADES[reached]


@attrs.frozen
class Collapse:
    """What :func:`judge_collapse` found.

    Attributes:
        flat: the mean per-dimension std is below its threshold: every sample maps to nearly one
            point (complete collapse).
        narrow: the RankMe is below its fraction of the width: the spread lies in a few directions
            (dimensional collapse).
        reason: what fell below which threshold, for a message; ``None`` when neither did.
    """

    flat: bool
    narrow: bool
    reason: str | None

    def __bool__(self) -> bool:
        return self.flat or self.narrow


def judge_collapse(
    what: str, width: int, *, std: float | None = None, rank: float | None = None,
    std_threshold: float, rank_fraction: float, source: str = "logging",
) -> Collapse:
    """The one definition of representation collapse, for features of width ``width``.

    Features have collapsed when their mean per-dimension standard deviation ``std`` is below
    ``std_threshold``, or their RankMe ``rank`` (:func:`effective_rank`) is below
    ``rank_fraction * width``. ``nan`` counts as collapsed; a figure left ``None`` is not judged.
    The training monitor (the target tokens every ``logging.feature_stats_every_steps`` steps, the
    evaluated representation's pooled RankMe at each epoch's end) and the collapse diagnostics of
    the evaluation all judge with it, at the thresholds of ``logging.collapse_std_threshold`` and
    ``logging.collapse_rank_fraction``.

    Args:
        what: the features, for the reason (``"the target tokens"``).
        width: their width ``D``.
        std, rank: their mean per-dimension std and their RankMe.
        std_threshold, rank_fraction: the thresholds.
        source: where the thresholds were set, for the reason: their keys are
            ``<source>.collapse_std_threshold`` and ``<source>.collapse_rank_fraction``.
    """
    flat = std is not None and not std >= std_threshold
    narrow = rank is not None and width > 0 and not rank >= rank_fraction * width
    prefix = f"{source}." if source else ""
    parts = []
    if flat:
        parts.append(f"the mean per-dimension std of {what} is {std:.4g} (below {prefix}collapse_std_threshold={std_threshold:g})")
    if narrow:
        parts.append(f"RankMe of {what} is {rank:.1f} of {width} dimensions "
                     f"(below {prefix}collapse_rank_fraction={rank_fraction:g}, i.e. {rank_fraction * width:.1f})")
    return Collapse(flat=flat, narrow=narrow, reason="; ".join(parts) or None)
