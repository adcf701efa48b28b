"""Feature-quality math (hjepa_kit.evaluation.metrics) and the ``feature_quality`` / ``hierarchy`` evaluators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_kit.contracts import BuildContext, FeatureSet
from hjepa_kit.evaluation.metrics import (
    dims_holding_variance,
    effective_rank,
    energy_rank,
    energy_rank_from_spectrum,
    feature_variance,
    grade,
    judge_collapse,
    linear_cka,
    mean_pairwise_cosine,
    rankme_from_spectrum,
    singular_values,
    topk_accuracy,
)
from hjepa_kit.plugins import feature_quality as module
from hjepa_kit.plugins.feature_quality import (
    FeatureQualityParams,
    HierarchyParams,
    collapse_verdict,
    build_feature_quality,
    build_hierarchy,
    feature_quality,
    level_names,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_spectrum(values: list[float], n: int = 500, seed: int = 0) -> torch.Tensor:
    """``(n, len(values))`` centred features whose singular values are exactly ``values``."""
    raw = torch.randn(n, len(values), generator=gen(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(raw - raw.mean(0))  # orthonormal, centred columns
    rotation, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=gen(seed + 1), dtype=torch.float64))
    return q * torch.tensor(values, dtype=torch.float64) @ rotation.T


# --- spectra and ranks ---------------------------------------------------------------------------


def test_singular_values_of_a_constructed_spectrum():
    values = [10.0, 5.0, 2.0, 1.0, 0.5]
    torch.testing.assert_close(singular_values(with_spectrum(values)), torch.tensor(values, dtype=torch.float64))


def test_effective_rank_is_the_width_for_isotropic_features_and_one_for_rank_one():
    isotropic = torch.randn(20000, 32, generator=gen(0))
    assert 31.0 < effective_rank(isotropic) <= 32.0
    rank_one = torch.randn(5000, 1, generator=gen(1)) * torch.randn(1, 32, generator=gen(2))
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=0.01)
    # Equal singular values: exactly their count; a zero spectrum uses no direction.
    assert rankme_from_spectrum(torch.ones(7)) == pytest.approx(7.0)
    assert rankme_from_spectrum(torch.zeros(4)) == 0.0


def test_effective_rank_ignores_the_mean():
    x = torch.randn(2000, 16, generator=gen(3))
    assert effective_rank(x + 1000.0) == pytest.approx(effective_rank(x), rel=1e-6)


def test_energy_rank_counts_components_holding_the_energy():
    # Squared energies 9, 4, 1, 0: cumulative 9/14 = 0.64, 13/14 = 0.93, 14/14 = 1.
    assert energy_rank_from_spectrum(torch.tensor([3.0, 2.0, 1.0, 0.0]), 0.95) == 3
    assert energy_rank_from_spectrum(torch.tensor([1.0, 3.0, 2.0]), 0.9) == 2  # order does not matter
    assert energy_rank_from_spectrum(torch.tensor([3.0, 2.0, 1.0]), 0.6) == 1
    assert energy_rank_from_spectrum(torch.zeros(3), 0.95) == 0
    # 100 equal values need 95 of them; from features with that spectrum too.
    assert energy_rank_from_spectrum(torch.ones(100), 0.95) == 95
    assert energy_rank(with_spectrum([4.0, 3.0, 0.1, 0.1, 0.1, 0.1])) == 2


def test_dims_holding_variance_counts_coordinates():
    x = torch.zeros(1000, 20)
    x[:, :3] = torch.randn(1000, 3, generator=gen(4))
    assert dims_holding_variance(x, 0.99) == 3
    assert feature_variance(x)[3:].abs().max() == 0


def test_mean_pairwise_cosine_matches_the_dense_mean():
    x = torch.randn(300, 8, generator=gen(5)) + 0.5
    unit = torch.nn.functional.normalize(x, dim=1)
    sim = unit @ unit.T
    dense = (sim.sum() - sim.diagonal().sum()) / (300 * 299)
    assert mean_pairwise_cosine(x) == pytest.approx(float(dense), abs=1e-6)
    assert mean_pairwise_cosine(torch.ones(50, 4)) == pytest.approx(1.0)


# --- CKA -----------------------------------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(1000, 24, generator=gen(6))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x = torch.randn(1000, 24, generator=gen(7)) * torch.linspace(0.5, 3, 24)
    rotation, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen(8)))
    assert linear_cka(x, 3.7 * x @ rotation + 5.0) == pytest.approx(1.0, abs=1e-6)
    # ... but not to an anisotropic rescaling: the property is not trivially true.
    assert linear_cka(x, x * torch.logspace(-2, 2, 24)) < 0.9


def test_cka_is_low_for_independent_features_and_handles_different_widths():
    x = torch.randn(2000, 16, generator=gen(9))
    y = torch.randn(2000, 40, generator=gen(10))
    assert linear_cka(x, y) < 0.05
    assert linear_cka(x, torch.cat([x, y], dim=1)) > 0.3
    assert np.isnan(linear_cka(x, torch.ones(2000, 3)))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, y[:10])


# --- verdicts and grades -------------------------------------------------------------------------


def test_grade_follows_the_thresholds():
    knn = (0.40, 0.50, 0.60)
    assert [grade(v, knn) for v in (0.3, 0.4, 0.45, 0.55, 0.61)] == ["below minimum", "below minimum", "minimum", "good", "excellent"]
    assert grade(float("nan"), knn) == "below minimum"


def test_collapse_verdict_fires_on_constant_features():
    result = feature_quality(torch.full((500, 16), 3.0))
    assert result.metrics["feature_quality/collapsed"] == 1.0
    assert result.metrics["feature_quality/variance_mean"] == 0.0
    assert result.metrics["feature_quality/cosine_mean"] == pytest.approx(1.0)
    assert result.artifacts["verdict"].startswith("COLLAPSED")


def test_healthy_and_dimensionally_collapsed_features():
    healthy = feature_quality(torch.randn(5000, 32, generator=gen(11)))
    assert healthy.metrics["feature_quality/collapsed"] == 0.0
    assert healthy.metrics["feature_quality/rank_collapsed"] == 0.0
    assert healthy.metrics["feature_quality/energy_rank95_frac"] > 0.75
    assert healthy.artifacts["verdict"].startswith("healthy")
    assert healthy.artifacts["singular_values"].shape == (32,)
    rank_one = torch.randn(2000, 1, generator=gen(12)) * torch.randn(1, 32, generator=gen(13))
    narrow = feature_quality(rank_one)
    assert narrow.metrics["feature_quality/collapsed"] == 0.0  # plenty of variance ...
    assert narrow.metrics["feature_quality/rank_collapsed"] == 1.0  # ... in a single direction
    assert narrow.artifacts["verdict"].startswith("DIMENSIONAL COLLAPSE")
    none = judge_collapse("x", 192, std=0.4, rank=100.0, std_threshold=0.01, rank_fraction=0.05)
    assert collapse_verdict(none, 0.2, 100, 192).startswith("healthy")
    assert collapse_verdict(none, 0.03, 100, 192).startswith("WARNING")


def test_feature_quality_evaluator_reports_every_metric():
    x = torch.randn(400, 12, generator=gen(14))
    labels = torch.zeros(400, dtype=torch.int64)
    fs = FeatureSet(train=x, train_labels=labels, test=x[:50], test_labels=labels[:50], num_classes=2)
    result = build_feature_quality(FeatureQualityParams(), BuildContext(image_size=32))({"encoder": fs}, "encoder")
    expected = {"variance_mean", "variance_min", "std_mean", "rankme", "rankme_frac", "energy_rank95",
                "energy_rank95_frac", "dims_var99", "cosine_mean", "dim", "collapsed", "rank_collapsed"}
    assert set(result.metrics) == {f"feature_quality/{name}" for name in expected}
    assert result.metrics["feature_quality/dim"] == 12
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert set(result.grades) == {"feature_quality/variance_mean", "feature_quality/energy_rank95_frac"}
    variance, rank = result.grades["feature_quality/variance_mean"], result.grades["feature_quality/energy_rank95_frac"]
    assert (variance.label, variance.thresholds) == ("Feature variance", (0.05, 0.10, 0.15))
    assert (rank.label, rank.thresholds) == ("Effective rank (95% energy) / D", (0.25, 0.50, 0.75))
    assert (rank.unit, rank.unit_value) == ("D", 12)  # shown as "> 0.25 D (3)"


def test_topk_accuracy_caps_k_at_the_number_of_classes():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15]])
    labels = torch.tensor([1, 2])
    assert topk_accuracy(scores, labels, (1, 2, 5)) == {1: 0.5, 2: 1.0, 5: 1.0}


# --- hierarchy -----------------------------------------------------------------------------------


def blob_set(seed: int, mix: torch.Tensor | None = None, noise_only: bool = False) -> FeatureSet:
    centres = torch.randn(5, 16, generator=gen(99)) * 3
    parts = []
    for split_seed in (seed, seed + 1):
        g = gen(split_seed)
        labels = torch.randint(0, 5, (300,), generator=g)
        x = torch.randn(300, 16, generator=g) + (0 if noise_only else centres[labels])
        parts += [x if mix is None else x @ mix, labels]
    return FeatureSet(train=parts[0], train_labels=parts[1], test=parts[2], test_labels=parts[3], num_classes=5)


def test_hierarchy_reports_each_level_and_pairwise_cka():
    level0 = blob_set(20)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen(21)))
    level1 = FeatureSet(train=level0.train @ rotation, train_labels=level0.train_labels, test=level0.test @ rotation,
                        test_labels=level0.test_labels, num_classes=5)
    noise = blob_set(20, noise_only=True)
    features = {"encoder": noise, "level1": level1, "level0": level0}
    result = build_hierarchy(HierarchyParams(), BuildContext(image_size=32))(features, "encoder")
    assert result.artifacts["cka_names"] == ["encoder", "level0", "level1"]
    for name in ("encoder", "level0", "level1"):
        for metric in ("knn_top1", "linear_top1", "rankme", "energy_rank95"):
            assert f"hierarchy/{name}/{metric}" in result.metrics
    assert result.metrics["hierarchy/level0/knn_top1"] > 0.9
    assert result.metrics["hierarchy/level1/linear_top1"] > 0.9
    assert result.metrics["hierarchy/encoder/knn_top1"] < 0.4  # labels are independent of noise
    assert result.metrics["hierarchy/cka/level0-level1"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics["hierarchy/cka/encoder-level0"] < 0.2
    assert result.artifacts["cka_matrix"].shape == (3, 3)
    graded = {name for name in result.metrics if name.endswith("_top1")}
    assert set(result.grades) == graded and len(graded) == 6
    assert not any(rule.summary for rule in result.grades.values())  # graded in the hierarchy table only
    assert result.grades["hierarchy/level0/knn_top1"].label == "k-NN accuracy (k=20)"
    assert result.grades["hierarchy/level0/linear_top1"].thresholds == (0.50, 0.60, 0.70)
    accuracy = result.artifacts["level_accuracy"]
    assert list(accuracy) == ["knn top-1", "linear top-1"]
    assert accuracy["knn top-1"]["values"]["level0"] == result.metrics["hierarchy/level0/knn_top1"]
    assert (accuracy["knn top-1"]["minimum"], accuracy["linear top-1"]["minimum"]) == (0.40, 0.50)


def test_hierarchy_without_levels_is_a_note_not_an_error():
    result = build_hierarchy(HierarchyParams(), BuildContext(image_size=32))({"encoder": blob_set(30)}, "encoder")
    assert result.metrics == {}
    assert "no hierarchy-level features" in result.artifacts["note"]


def test_level_names_are_ordered_numerically():
    names = {"level10": None, "level2": None, "encoder": None, "levelx": None, "level0": None}
    assert level_names(names) == ["level0", "level2", "level10"]


def test_both_evaluators_are_registered():
    registered = {}
    module.hjepa_register_evaluators(lambda name, factory, **kw: registered.setdefault(name, (factory, kw)))
    assert registered["feature_quality"] == (build_feature_quality, registered["feature_quality"][1])
    assert registered["feature_quality"][1]["params"] is FeatureQualityParams
    assert registered["hierarchy"][1]["params"] is HierarchyParams
