"""The ``few_shot`` evaluator: nearest class prototype from 1, 5 and 10 labelled images per class."""

from __future__ import annotations

import math

import pytest
import torch

from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet
from hjepa_kit.errors import UserError
from hjepa_kit.evaluation.figures import draw_figures
from hjepa_kit.plugins.few_shot import FEW_SHOT_GRADE, FewShotParams, build_few_shot, few_shot

CLASSES = 10


def clusters(n: int, *, spread: float, dim: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, dim)`` points around fixed class centres (the same for every seed), ``n / 10`` per class."""
    centres = torch.randn(CLASSES, dim, generator=torch.Generator().manual_seed(99)) * 3
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def feature_set(spread: float, n_train: int = 400, n_test: int = 500) -> FeatureSet:
    train, train_labels = clusters(n_train, spread=spread, seed=1)
    test, test_labels = clusters(n_test, spread=spread, seed=2)
    return FeatureSet(train=train, train_labels=train_labels, test=test, test_labels=test_labels, num_classes=CLASSES)


def run(fs: FeatureSet, **kw):
    return few_shot(fs.train, fs.train_labels, fs.test, fs.test_labels, fs.num_classes, **kw)


def test_tight_clusters_are_classified_perfectly_from_one_image_per_class():
    result = run(feature_set(spread=0.1), draws=5)
    for k in (1, 5, 10):
        assert result.accuracy[k] == [1.0] * 5


def test_shuffled_labels_give_chance_accuracy():
    fs = feature_set(spread=0.5)
    shuffled = fs.train_labels[torch.randperm(len(fs.train_labels), generator=torch.Generator().manual_seed(3))]
    result = few_shot(fs.train, shuffled, fs.test, fs.test_labels, CLASSES, draws=20)
    for k in (1, 5, 10):
        assert abs(result.mean(k) - 1 / CLASSES) < 0.05, (k, result.mean(k))
    # the same features with their true labels are far above chance
    assert run(fs, draws=5).mean(10) > 0.9


def test_more_labels_per_class_help_on_overlapping_clusters():
    result = run(feature_set(spread=3.0), draws=10)
    assert 0.15 < result.mean(1) < result.mean(5) < result.mean(10)
    assert result.ci95(10) < result.ci95(1)  # a larger support varies less from draw to draw


def test_seeded_draws_are_reproducible_and_the_seed_matters():
    fs = feature_set(spread=3.0)
    assert run(fs, seed=4).accuracy == run(fs, seed=4).accuracy
    assert run(fs, seed=4).accuracy[1] != run(fs, seed=5).accuracy[1]


def test_the_interval_is_the_normal_95_percent_interval_of_the_mean():
    result = run(feature_set(spread=3.0), draws=8)
    values = torch.tensor(result.accuracy[5], dtype=torch.float64)
    assert result.std(5) == pytest.approx(float(values.std()))
    assert result.ci95(5) == pytest.approx(1.959964 * float(values.std()) / math.sqrt(8))
    assert math.isnan(run(feature_set(spread=3.0), draws=1).ci95(5))


def test_the_evaluator_reports_each_shot_count_grades_the_largest_and_draws_the_curve(tmp_path):
    fs = feature_set(spread=3.0)
    evaluate = build_few_shot(FewShotParams(shots=(1, 5, 10), draws=4), BuildContext(image_size=16))
    result = evaluate({"encoder": fs}, "encoder")
    assert isinstance(result, EvalResult)
    assert set(result.metrics) == {f"few_shot/{k}shot_top1{s}" for k in (1, 5, 10) for s in ("", "_ci95", "_std")}
    assert result.grades == {"few_shot/10shot_top1": FEW_SHOT_GRADE}
    assert not getattr(evaluate, "needs_tokens", False)  # pooled features only
    curve = result.artifacts["label_curve"]["prototypes (encoder)"]
    assert curve["labels_per_class"] == [1, 5, 10] and curve["low"][0] < curve["mean"][0] < curve["high"][0]
    figures = draw_figures(tmp_path, {"few_shot": result.artifacts})
    assert figures["accuracy_vs_labels"].stat().st_size > 0


def test_bad_parameters_are_clear_errors():
    fs = feature_set(spread=1.0, n_train=40)  # 4 train images per class
    with pytest.raises(UserError, match="10 labelled images per class.*fewer for 10 class"):
        run(fs, shots=(1, 10))
    with pytest.raises(UserError, match="shots"):
        run(fs, shots=())
    with pytest.raises(ValueError, match="shots"):
        FewShotParams(shots=(0, 5))
    with pytest.raises(UserError, match="representation 'level7'"):
        build_few_shot(FewShotParams(representation="level7"), BuildContext(image_size=16))({"encoder": fs}, "encoder")
