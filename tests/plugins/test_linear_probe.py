"""The ``linear_probe`` evaluator: softmax regression on standardised frozen features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet
from hjepa_kit.plugins import linear_probe as module
from hjepa_kit.plugins.linear_probe import (
    LinearProbeParams,
    build_linear_probe,
    confusion_matrix,
    fit_linear_classifier,
    linear_probe,
)


def blobs(n: int, *, dim: int = 32, classes: int = 10, spread: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, dim)`` Gaussian blobs around fixed class centres (the same centres for every seed)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def data(n_train: int = 800, n_test: int = 1000, **kw):
    return (*blobs(n_train, seed=1, **kw), *blobs(n_test, seed=2, **kw))


def test_separable_blobs_are_classified_far_above_chance():
    result = linear_probe(*data(), num_classes=10, weight_decay=1e-3)
    assert result.top1 > 0.95
    assert result.top5 >= result.top1
    assert result.train_top1 > 0.95


def test_shuffled_train_labels_give_chance_accuracy():
    train, train_labels, test, test_labels = data()
    shuffled = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(3))]
    result = linear_probe(train, shuffled, test, test_labels, 10, weight_decay=1e-3, max_iter=100)
    # Chance is 0.1; with 1000 test points the standard error is about 0.01.
    assert result.top1 < 0.2
    assert result.top5 < 0.65


def test_standardisation_makes_the_probe_blind_to_per_dimension_scale_and_offset():
    train, train_labels, test, test_labels = data(spread=3.0)
    scale = torch.logspace(-3, 3, train.shape[1])
    plain = linear_probe(train, train_labels, test, test_labels, 10, weight_decay=1e-2)
    skewed = linear_probe(train * scale + 100, train_labels, test * scale + 100, test_labels, 10, weight_decay=1e-2)
    assert skewed.top1 == pytest.approx(plain.top1, abs=0.01)


def test_weight_decay_is_chosen_on_held_out_train_and_reported():
    train, train_labels, test, test_labels = data(spread=3.0)
    grid = (1e-4, 1e-2, 10.0)
    result = linear_probe(train, train_labels, test, test_labels, 10, weight_decay=grid, seed=0)
    assert set(result.val_top1) == set(grid)
    assert result.weight_decay in grid
    # A huge penalty shrinks the weights to nearly nothing; it is never the best here.
    assert result.weight_decay != 10.0
    assert result.val_top1[result.weight_decay] == max(result.val_top1.values())


def test_larger_weight_decay_shrinks_the_weights():
    train, train_labels, *_ = data(spread=3.0)
    small = fit_linear_classifier(train, train_labels, 10, weight_decay=1e-3)
    large = fit_linear_classifier(train, train_labels, 10, weight_decay=1.0)
    assert large.weight.norm() < 0.5 * small.weight.norm()


def test_result_is_deterministic_and_chunking_does_not_change_it():
    train, train_labels, test, test_labels = data(n_train=400, n_test=200, spread=3.0)
    threads = torch.get_num_threads()
    a = linear_probe(train, train_labels, test, test_labels, 10, weight_decay=(1e-3, 1e-2), max_iter=100)
    b = linear_probe(train, train_labels, test, test_labels, 10, weight_decay=(1e-3, 1e-2), max_iter=100)
    assert a.top1 == b.top1 and a.weight_decay == b.weight_decay
    assert torch.get_num_threads() == threads  # a small fit runs on one thread, then restores
    whole = fit_linear_classifier(train, train_labels, 10, weight_decay=1e-2)
    chunked = fit_linear_classifier(train, train_labels, 10, weight_decay=1e-2, batch_size=97)
    torch.testing.assert_close(chunked.weight, whole.weight, atol=1e-3, rtol=1e-3)


def test_the_fit_is_the_minimum_of_the_regularised_cross_entropy():
    # The probe writes its gradient out by hand; autograd's gradient of the objective it states
    # (mean cross-entropy of the standardised features + weight_decay / 2 |W|^2) must vanish there.
    train, train_labels, *_ = data(n_train=600, spread=4.0)
    wd = 1e-2
    probe = fit_linear_classifier(train, train_labels, 10, weight_decay=wd, batch_size=250)
    weight = probe.weight.clone().requires_grad_(True)
    bias = probe.bias.clone().requires_grad_(True)
    x = (train - probe.mean) / probe.std
    loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, train_labels) + 0.5 * wd * weight.square().sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    assert probe.weight.abs().max() > 0.05  # not the zero start


def test_strongly_correlated_features_converge_within_few_iterations():
    # Overlapping classes plus a few shared factors that dominate every dimension (as in a ViT's
    # features): unpreconditioned L-BFGS is still far from the minimum after 50 iterations
    # (largest gradient entry ~1e-3); preconditioned it is there (~1e-5).
    train, labels, *_ = data(n_train=3000, spread=6.0)
    g = torch.Generator().manual_seed(5)
    correlated = train + torch.randn(3000, 4, generator=g) @ torch.randn(4, 32, generator=g) * 30.0
    wd = 1e-4
    probe = fit_linear_classifier(correlated, labels, 10, weight_decay=wd, max_iter=50)
    weight = probe.weight.clone().requires_grad_(True)
    x = (correlated - probe.mean) / probe.std
    loss = torch.nn.functional.cross_entropy(x @ weight.T + probe.bias, labels) + 0.5 * wd * weight.square().sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4


def test_works_under_inference_mode():
    with torch.inference_mode():
        train, train_labels, test, test_labels = data(n_train=200, n_test=100)
        result = linear_probe(train, train_labels, test, test_labels, 10, weight_decay=1e-3)
    assert result.top1 > 0.9


def test_confusion_matrix_rows_are_true_classes():
    predicted = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(predicted, labels, 3), expected)


def test_evaluator_returns_metrics_and_confusion_matrix():
    train, train_labels, test, test_labels = data(n_train=400, n_test=300, spread=2.0)
    fs = FeatureSet(train=train, train_labels=train_labels, test=test, test_labels=test_labels, num_classes=10)
    result = build_linear_probe(LinearProbeParams(weight_decay=(1e-4, 1e-2)), BuildContext(image_size=32))({"encoder": fs}, "encoder")
    assert isinstance(result, EvalResult)
    assert {"linear_probe/top1", "linear_probe/top5", "linear_probe/weight_decay", "linear_probe/val_top1"} <= set(result.metrics)
    matrix = result.artifacts["confusion_matrix"]
    assert matrix.shape == (10, 10)
    assert matrix.sum() == len(test_labels)
    np.testing.assert_array_equal(matrix.sum(axis=1), torch.bincount(test_labels, minlength=10).numpy())
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result.metrics["linear_probe/top1"])
    (name, rule), = result.grades.items()
    assert name == "linear_probe/top1" and rule.label == "Linear probe accuracy"
    assert rule.thresholds == (0.50, 0.60, 0.70) and rule.percent and rule.summary


def test_params_are_validated_and_registered():
    with pytest.raises(ValueError, match="weight_decay"):
        LinearProbeParams(weight_decay=(-1.0,))
    with pytest.raises(ValueError, match="val_fraction"):
        LinearProbeParams(val_fraction=1.0)
    registered = {}
    module.hjepa_register_evaluators(lambda name, factory, **kw: registered.setdefault(name, (factory, kw)))
    assert registered["linear_probe"][0] is build_linear_probe
    assert registered["linear_probe"][1]["params"] is LinearProbeParams
