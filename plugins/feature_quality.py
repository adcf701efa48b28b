"""Evaluators ``feature_quality`` (collapse diagnostics) and ``hierarchy`` (per-level figures).

``feature_quality`` looks at one representation's train features without labels, judges them by
the one collapse rule (:func:`~hjepa_kit.helpers.judge_collapse`, the training monitor's, at the
``logging.collapse_*`` thresholds by default) and grades them against the plan's variance and rank
thresholds (:data:`VARIANCE_GRADE`, :func:`rank_grade`). Metrics:

| Metric | Meaning |
|---|---|
| ``feature_quality/variance_mean`` | mean per-dimension variance (graded: > 0.05 / 0.1 / 0.15) |
| ``feature_quality/variance_min`` | smallest per-dimension variance |
| ``feature_quality/std_mean`` | mean per-dimension standard deviation |
| ``feature_quality/rankme`` | RankMe effective rank: exp entropy of normalised singular values |
| ``feature_quality/rankme_frac`` | RankMe / D |
| ``feature_quality/energy_rank95`` | energy rank: principal components holding 95% of the energy |
| ``feature_quality/energy_rank95_frac`` | energy rank / D (graded: > 0.25 / 0.5 / 0.75, i.e. 48/96/144 of 192) |
| ``feature_quality/dims_var99`` | coordinate dimensions holding 99% of the per-dimension variance |
| ``feature_quality/cosine_mean`` | mean cosine similarity over all pairs of samples (1 = one direction) |
| ``feature_quality/dim`` | feature width D |
| ``feature_quality/collapsed`` | 1 when std_mean < collapse_std_threshold (default 0.01), else 0 |
| ``feature_quality/rank_collapsed`` | 1 when rankme < collapse_rank_fraction * D (default 5%), else 0 |

Artifacts: ``singular_values`` (descending, of the centred features), ``verdict`` (one line).

``hierarchy`` measures how the hierarchy levels differ, for the default representation and every
representation named ``level<i>``: ``hierarchy/<name>/knn_top1`` (weighted k-NN, k = 20),
``hierarchy/<name>/linear_top1`` (linear probe), ``hierarchy/<name>/rankme`` and
``hierarchy/<name>/energy_rank95``; and linear CKA between every pair, ``hierarchy/cka/<a>-<b>``,
on the train split. The per-representation accuracies are graded like ``knn/top1@20`` and
``linear_probe/top1`` (in the ``hierarchy`` table only); the first one is the headline figure. Artifacts: ``cka_matrix`` with
``cka_names``, ``levels``, ``level_accuracy`` (drawn as ``figures/level_accuracy.png``); when no
``level*`` representation was extracted, the metrics are empty and the artifact ``note`` says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import attrs

from hjepa_kit import hookimpl
from hjepa_kit.config import LoggingConfig
from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet, Grade
from hjepa_kit.helpers import (
    Collapse,
    choose_representation,
    cka_matrix,
    energy_rank_from_spectrum,
    feature_variance,
    grade,
    judge_collapse,
    mean_pairwise_cosine,
    rankme_from_spectrum,
    singular_values,
)
from hjepa_kit.params import param
from hjepa_kit.plugins.knn import KNN_GRADE, knn_classify
from hjepa_kit.plugins.linear_probe import LINEAR_PROBE_GRADE, linear_probe

__all__ = [
    "VARIANCE_THRESHOLDS",
    "RANK_FRACTION_THRESHOLDS",
    "VARIANCE_GRADE",
    "rank_grade",
    "collapse_verdict",
    "FeatureQualityParams",
    "HierarchyParams",
    "feature_quality",
    "level_names",
    "hierarchy",
    "build_feature_quality",
    "build_hierarchy",
]

_LEVEL = re.compile(r"^level(\d+)$")

#: The plan's thresholds (minimum, good, excellent) of the mean per-dimension feature variance: a
#: value strictly above a threshold reaches its grade.
VARIANCE_THRESHOLDS: tuple[float, float, float] = (0.05, 0.10, 0.15)

#: The plan's thresholds (minimum, good, excellent) of the 95%-energy rank divided by the feature
#: width ``D`` (48 / 96 / 144 of ``D = 192``).
RANK_FRACTION_THRESHOLDS: tuple[float, float, float] = (0.25, 0.50, 0.75)

#: The collapse thresholds' defaults: the training monitor's (``logging.collapse_*``).
_MONITOR = attrs.fields(LoggingConfig)

#: The grade of ``feature_quality/variance_mean``.
VARIANCE_GRADE = Grade(label="Feature variance", thresholds=VARIANCE_THRESHOLDS)


def rank_grade(dim: int) -> Grade:
    """The grade of ``feature_quality/energy_rank95_frac`` for features of width ``dim`` (``> 0.25 D (48)``)."""
    return Grade(label="Effective rank (95% energy) / D", thresholds=RANK_FRACTION_THRESHOLDS, unit="D", unit_value=float(dim))


@attrs.frozen(kw_only=True)
class FeatureQualityParams:
    """Parameters of the ``feature_quality`` evaluator."""

    representation: str | None = param(None, help="Which extracted features to use (encoder, level0, ...); null = the run's default.")
    split: str = param("train", help="Which split's features to analyse.", choices=("train", "test"))
    collapse_std_threshold: float = param(
        _MONITOR.collapse_std_threshold.default, ge=0.0,
        help="Mean per-dimension std below this is a collapse (default: logging.collapse_std_threshold's).",
    )
    collapse_rank_fraction: float = param(
        _MONITOR.collapse_rank_fraction.default, ge=0.0, le=1.0,
        help="RankMe below this fraction of D is a dimensional collapse (default: logging.collapse_rank_fraction's).",
    )
    collapse_variance: float | None = param(
        None, ge=0.0,
        help="Deprecated, for older configurations: a mean-variance threshold, used as collapse_std_threshold = its square root.",
    )

    @property
    def std_threshold(self) -> float:
        """The std threshold in force (``collapse_variance``, where set, replaces ``collapse_std_threshold``)."""
        return self.collapse_std_threshold if self.collapse_variance is None else math.sqrt(self.collapse_variance)


@attrs.frozen(kw_only=True)
class HierarchyParams:
    """Parameters of the ``hierarchy`` evaluator."""

    k: int = param(20, help="Neighbours of the per-level weighted k-NN.", ge=1)
    temperature: float = param(0.07, help="k-NN vote weight is exp(similarity / temperature).", gt=0.0)
    knn: bool = param(True, help="Report per-level k-NN top-1.")
    linear_probe: bool = param(True, help="Report per-level linear-probe top-1 (the slowest part).")
    probe_weight_decay: float = param(1e-4, help="L2 penalty of the per-level linear probes (no search).", ge=0.0)
    probe_max_iter: int = param(300, help="L-BFGS iterations of each per-level probe.", ge=1)
    include_default: bool = param(True, help="Also report the default representation and its CKA to each level.")


def _split_features(feats: FeatureSet, split: str):
    return feats.train if split == "train" else feats.test


def collapse_verdict(collapse: Collapse, variance_mean: float, energy_rank: float, dim: int) -> str:
    """One line on features of width ``dim``: the collapse found, or whether they reach the plan's minimum.

    Args:
        collapse: what :func:`~hjepa_kit.helpers.judge_collapse` found.
        variance_mean: the mean per-dimension variance, graded by :data:`VARIANCE_THRESHOLDS`.
        energy_rank: the 95%-energy rank, graded as a fraction of ``dim`` by :data:`RANK_FRACTION_THRESHOLDS`.
    """
    fraction = energy_rank / dim if dim > 0 else 0.0
    detail = (f"mean variance {variance_mean:.4g} ({grade(variance_mean, VARIANCE_THRESHOLDS)}); "
              f"95%-energy rank {energy_rank:g}/{dim} = {fraction:.2f} D ({grade(fraction, RANK_FRACTION_THRESHOLDS)})")
    if collapse:
        return f"{'COLLAPSED' if collapse.flat else 'DIMENSIONAL COLLAPSE'}: {collapse.reason} ({detail})"
    if not (variance_mean > VARIANCE_THRESHOLDS[0] and fraction > RANK_FRACTION_THRESHOLDS[0]):
        return f"WARNING: below the minimum ({detail})"
    return f"healthy ({detail})"


def feature_quality(
    x,
    *,
    collapse_std_threshold: float = _MONITOR.collapse_std_threshold.default,
    collapse_rank_fraction: float = _MONITOR.collapse_rank_fraction.default,
) -> EvalResult:
    """Collapse diagnostics of ``(N, D)`` features ``x`` (see the module docstring for the names).

    Returns:
        An :class:`EvalResult` with ``feature_quality/*`` metrics, the ``singular_values`` and
        ``verdict`` artifacts, and the grades of ``variance_mean`` and ``energy_rank95_frac``.
    """
    dim = int(x.shape[1])
    variance = feature_variance(x)
    spectrum = singular_values(x)
    rank = energy_rank_from_spectrum(spectrum, 0.95)
    rankme = rankme_from_spectrum(spectrum)
    variance_mean = float(variance.mean())
    std_mean = float(variance.sqrt().mean())
    collapse = judge_collapse("the features", dim, std=std_mean, rank=rankme, std_threshold=collapse_std_threshold,
                              rank_fraction=collapse_rank_fraction, source="")
    metrics = {
        "feature_quality/variance_mean": variance_mean,
        "feature_quality/variance_min": float(variance.min()),
        "feature_quality/std_mean": std_mean,
        "feature_quality/rankme": rankme,
        "feature_quality/rankme_frac": rankme / dim,
        "feature_quality/energy_rank95": float(rank),
        "feature_quality/energy_rank95_frac": rank / dim,
        # Coordinate dimensions, from the variances already at hand (as dims_holding_variance).
        "feature_quality/dims_var99": float(energy_rank_from_spectrum(variance.sqrt(), 0.99)),
        "feature_quality/cosine_mean": mean_pairwise_cosine(x),
        "feature_quality/dim": float(dim),
        "feature_quality/collapsed": float(collapse.flat),
        "feature_quality/rank_collapsed": float(collapse.narrow),
    }
    artifacts = {"singular_values": spectrum.numpy(), "verdict": collapse_verdict(collapse, variance_mean, rank, dim)}
    grades = {"feature_quality/variance_mean": VARIANCE_GRADE, "feature_quality/energy_rank95_frac": rank_grade(dim)}
    return EvalResult(metrics=metrics, artifacts=artifacts, grades=grades)


def level_names(features: Mapping[str, FeatureSet]) -> list[str]:
    """The ``level<i>`` representations of ``features``, ordered by ``i``."""
    found = [(int(m.group(1)), name) for name in features if (m := _LEVEL.match(name))]
    return [name for _, name in sorted(found)]


def hierarchy(features: Mapping[str, FeatureSet], default: str, params: HierarchyParams = HierarchyParams()) -> EvalResult:
    """Per-representation accuracy and rank, and pairwise CKA, of the default and ``level*`` features.

    Returns:
        An :class:`EvalResult`; empty metrics and a ``note`` artifact when no level was extracted.
    """
    levels = level_names(features)
    if not levels:
        available = ", ".join(sorted(features)) or "(none)"
        return EvalResult(
            metrics={},
            artifacts={"note": f"no hierarchy-level features (level0, level1, ...) were extracted; available: {available}"},
        )
    names = ([default] if params.include_default and default in features and default not in levels else []) + levels
    metrics: dict[str, float] = {}
    grades: dict[str, Grade] = {}
    knn_grade = attrs.evolve(KNN_GRADE, label=f"k-NN accuracy (k={params.k})", summary=False)
    linear_grade = attrs.evolve(LINEAR_PROBE_GRADE, summary=False)
    for name in names:
        feats = features[name]
        if params.knn:
            accuracy = knn_classify(
                feats.train, feats.train_labels, feats.test, feats.test_labels, feats.num_classes,
                k=(params.k,), temperature=params.temperature,
            )  # fmt: skip
            metrics[f"hierarchy/{name}/knn_top1"] = accuracy[f"top1@{params.k}"]
            grades[f"hierarchy/{name}/knn_top1"] = knn_grade
        if params.linear_probe:
            probe = linear_probe(
                feats.train, feats.train_labels, feats.test, feats.test_labels, feats.num_classes,
                weight_decay=params.probe_weight_decay, max_iter=params.probe_max_iter,
            )  # fmt: skip
            metrics[f"hierarchy/{name}/linear_top1"] = probe.top1
            grades[f"hierarchy/{name}/linear_top1"] = linear_grade
        spectrum = singular_values(feats.train)
        metrics[f"hierarchy/{name}/rankme"] = rankme_from_spectrum(spectrum)
        metrics[f"hierarchy/{name}/energy_rank95"] = float(energy_rank_from_spectrum(spectrum, 0.95))
    cka = cka_matrix([features[name].train for name in names]).numpy()
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            metrics[f"hierarchy/cka/{a}-{names[j]}"] = float(cka[i, j])
    series = (("knn top-1", "knn_top1", knn_grade), ("linear top-1", "linear_top1", linear_grade))
    level_accuracy = {  # drawn as figures/level_accuracy.png, a dashed line at each minimum
        label: {"values": {name: metrics[f"hierarchy/{name}/{figure}"] for name in names}, "minimum": rule.thresholds[0]}
        for label, figure, rule in series
        if f"hierarchy/{names[0]}/{figure}" in metrics
    }
    artifacts = {"cka_matrix": cka, "cka_names": names, "levels": levels, "level_accuracy": level_accuracy}
    # The headline: the first representation's first accuracy (k-NN, else linear probe), as graded.
    return EvalResult(metrics=metrics, artifacts=artifacts, grades=grades, headline=next(iter(grades), None))


def build_feature_quality(params: FeatureQualityParams, ctx: BuildContext):
    """Factory of the ``feature_quality`` evaluator."""

    def evaluate_feature_quality(features: Mapping[str, FeatureSet], default: str) -> EvalResult:
        name = choose_representation(features, params.representation, default=default,
                                     option="the feature_quality parameter representation")
        feats = features[name]
        result = feature_quality(
            _split_features(feats, params.split),
            collapse_std_threshold=params.std_threshold,
            collapse_rank_fraction=params.collapse_rank_fraction,
        )
        return EvalResult(metrics=result.metrics, artifacts={**result.artifacts, "representation": name}, grades=result.grades)

    return evaluate_feature_quality


def build_hierarchy(params: HierarchyParams, ctx: BuildContext):
    """Factory of the ``hierarchy`` evaluator."""

    def evaluate_hierarchy(features: Mapping[str, FeatureSet], default: str) -> EvalResult:
        return hierarchy(features, default, params)

    return evaluate_hierarchy


@hookimpl
def hjepa_register_evaluators(register) -> None:
    register(
        "feature_quality",
        build_feature_quality,
        params=FeatureQualityParams,
        summary="Collapse diagnostics: variance, RankMe and 95%-energy rank, cosine, collapse verdict.",
    )
    register(
        "hierarchy",
        build_hierarchy,
        params=HierarchyParams,
        summary="Hierarchy differentiation: per-level k-NN / linear top-1 and rank, pairwise linear CKA.",
    )
