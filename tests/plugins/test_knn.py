"""The ``knn_faiss`` evaluator: weighted k-NN on cosine similarity with faiss."""

from __future__ import annotations

import faiss
import pytest
import torch

from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet
from hjepa_kit.errors import UserError
from hjepa_kit.plugins import knn
from hjepa_kit.plugins.knn import KNN_GRADE, KnnParams, build_knn, faiss_threads, knn_classify


def blobs(n: int, *, dim: int = 32, classes: int = 10, spread: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, dim)`` Gaussian blobs around fixed class centres (the same centres for every seed)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def feature_set(n_train: int = 600, n_test: int = 1000, **kw) -> FeatureSet:
    train, train_labels = blobs(n_train, seed=1, **kw)
    test, test_labels = blobs(n_test, seed=2, **kw)
    return FeatureSet(train=train, train_labels=train_labels, test=test, test_labels=test_labels, num_classes=10)


def brute_force_top1(fs: FeatureSet, k: int, temperature: float) -> float:
    """The same weighted vote with a dense cosine-similarity matrix, as a reference."""
    a = torch.nn.functional.normalize(fs.test, dim=1)
    b = torch.nn.functional.normalize(fs.train, dim=1)
    sim, idx = (a @ b.T).topk(k, dim=1)
    votes = torch.zeros(len(a), fs.num_classes).scatter_add_(1, fs.train_labels[idx], (sim / temperature).exp())
    return float((votes.argmax(1) == fs.test_labels).float().mean())


def test_separable_blobs_are_classified_far_above_chance():
    fs = feature_set()
    result = knn_classify(fs.train, fs.train_labels, fs.test, fs.test_labels, 10)
    assert result["top1@20"] > 0.9
    assert result["top5@20"] >= result["top1@20"]


def test_shuffled_labels_give_chance_accuracy():
    fs = feature_set()
    shuffled = fs.test_labels[torch.randperm(len(fs.test_labels), generator=torch.Generator().manual_seed(5))]
    result = knn_classify(fs.train, fs.train_labels, fs.test, shuffled, 10)
    # Chance is 0.1; with 1000 test points the standard error is about 0.01.
    assert result["top1@20"] < 0.2
    assert result["top5@20"] < 0.65


def test_matches_a_dense_reference_and_every_k_is_reported():
    fs = feature_set(spread=4.0)  # overlapping blobs, so the accuracy is neither 0 nor 1
    result = knn_classify(fs.train, fs.train_labels, fs.test, fs.test_labels, 10, k=(1, 5, 20), temperature=0.1)
    assert set(result) == {f"top{t}@{k}" for t in (1, 5) for k in (1, 5, 20)}
    for k in (1, 5, 20):
        assert result[f"top1@{k}"] == pytest.approx(brute_force_top1(fs, k, 0.1), abs=1e-3)
    assert 0.2 < result["top1@20"] < 0.99


def test_votes_are_weighted_by_similarity_and_temperature():
    # One very close neighbour of class 0 against two farther ones of class 1 (k = 3): a sharp
    # temperature lets the close one win, a flat one is a plain majority vote.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_labels = torch.tensor([0, 1, 1])
    test, test_labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    sharp = knn_classify(train, train_labels, test, test_labels, 2, k=(3,), temperature=0.07)
    flat = knn_classify(train, train_labels, test, test_labels, 2, k=(3,), temperature=100.0)
    assert sharp["top1@3"] == 1.0
    assert flat["top1@3"] == 0.0


def test_batch_size_and_large_k_do_not_change_the_result():
    fs = feature_set(n_train=50, n_test=97, spread=3.0)
    whole = knn_classify(fs.train, fs.train_labels, fs.test, fs.test_labels, 10, k=(20, 500))
    batched = knn_classify(fs.train, fs.train_labels, fs.test, fs.test_labels, 10, k=(20, 500), batch_size=7)
    assert whole == batched
    # k above the number of training points uses all of them.
    assert 0.0 <= whole["top1@500"] <= 1.0


def test_faiss_uses_torch_thread_count_and_restores_it():
    before = faiss.omp_get_max_threads()
    with faiss_threads():
        assert faiss.omp_get_max_threads() == torch.get_num_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_evaluator_reads_the_chosen_representation():
    good, bad = feature_set(), feature_set()
    bad = FeatureSet(train=torch.randn_like(bad.train), train_labels=bad.train_labels, test=torch.randn_like(bad.test),
                     test_labels=bad.test_labels, num_classes=10)
    features = {"encoder": good, "level0": bad}
    ctx = BuildContext(image_size=32)
    default = build_knn(KnnParams(), ctx)(features, "encoder")
    assert isinstance(default, EvalResult)
    assert set(default.metrics) == {"knn/top1@20", "knn/top5@20"}
    assert default.metrics["knn/top1@20"] > 0.9
    level0 = build_knn(KnnParams(k=(10,), representation="level0"), ctx)(features, "encoder")
    assert set(level0.metrics) == {"knn/top1@10", "knn/top5@10"}
    assert level0.metrics["knn/top1@10"] < 0.25
    with pytest.raises(UserError, match="knn_faiss parameter representation .level7.: unknown representation; this model has encoder, level0"):
        build_knn(KnnParams(representation="level7"), ctx)(features, "encoder")


def test_the_evaluator_grades_top1_at_20_only():
    ctx = BuildContext(image_size=32)
    features = {"encoder": feature_set()}
    graded = build_knn(KnnParams(k=(10, 20)), ctx)(features, "encoder")
    assert graded.grades == {"knn/top1@20": KNN_GRADE}
    assert (KNN_GRADE.label, KNN_GRADE.thresholds, KNN_GRADE.percent) == ("k-NN accuracy (k=20)", (0.40, 0.50, 0.60), True)
    assert build_knn(KnnParams(k=(10,)), ctx)(features, "encoder").grades == {}


def test_params_are_validated_and_registered():
    with pytest.raises(ValueError, match="k"):
        KnnParams(k=(0,))
    with pytest.raises(ValueError, match="temperature"):
        KnnParams(temperature=0.0)
    registered = {}
    knn.hjepa_register_evaluators(lambda name, factory, **kw: registered.setdefault(name, (factory, kw)))
    factory, kw = registered["knn_faiss"]
    assert factory is build_knn and kw["params"] is KnnParams and kw["summary"]
