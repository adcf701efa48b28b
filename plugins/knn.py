"""Evaluator ``knn_faiss``: weighted k-nearest-neighbour classification on frozen features.

Features are L2-normalised, so faiss's exact inner-product search (``IndexFlatIP``) finds the
neighbours of highest cosine similarity. Each neighbour votes for its class with weight
``exp(similarity / T)`` (the weighted k-NN of Wu et al., 2018, as used by DINO), and the classes
with the largest vote totals are the top-1 / top-5 predictions. One search with the largest ``k``
serves every ``k`` asked for, because the ``k`` nearest are a prefix of the ``k_max`` nearest.

Metrics (accuracies are fractions in ``[0, 1]``): ``knn/top1@<k>`` and ``knn/top5@<k>`` per ``k``.
The report grades ``knn/top1@20`` (when 20 is among the ``k``) with :data:`KNN_GRADE`; the
headline figure (what ``checkpoint.best_metric: auto`` follows when this is the online evaluator)
is the top-1 of the first ``k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import attrs
import faiss
import numpy as np
import torch
from torch import Tensor

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet, Grade
from hjepa_kit.helpers import choose_representation, topk_correct
from hjepa_kit.params import param

__all__ = ["KNN_GRADE", "GRADED_K", "KnnParams", "knn_classify", "knn_scores", "faiss_threads", "build_knn"]

#: The neighbour count whose top-1 accuracy is graded.
GRADED_K = 20

#: The grade of ``knn/top1@20``: minimum / good / excellent above 40% / 50% / 60%.
KNN_GRADE = Grade(label=f"k-NN accuracy (k={GRADED_K})", thresholds=(0.40, 0.50, 0.60), percent=True)


@attrs.frozen(kw_only=True)
class KnnParams:
    """Parameters of the ``knn_faiss`` evaluator."""

    k: tuple[int, ...] = param((20,), help="Neighbour counts to report; one search with the largest serves all.", ge=1)
    temperature: float = param(0.07, help="Vote weight is exp(cosine similarity / temperature).", gt=0.0)
    batch_size: int = param(
        4096, help="Test features searched per faiss call; bounds the memory of distances and votes.", ge=1
    )
    representation: str | None = param(None, help="Which extracted features to use (encoder, level0, ...); null = the run's default.")


@contextmanager
def faiss_threads(count: int | None = None) -> Iterator[None]:
    """Run faiss with ``count`` OpenMP threads (default: ``torch.get_num_threads()``), then restore.

    faiss keeps its own OpenMP pool; without this it would use every core, ignoring the thread
    budget the run gave torch.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, count if count is not None else torch.get_num_threads()))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _unit_rows(x: Tensor) -> np.ndarray:
    """``(N, D)`` tensor -> C-contiguous float32 numpy array of L2-normalised rows (faiss's input)."""
    x = torch.nn.functional.normalize(x.detach().to("cpu", torch.float32), dim=1)
    return np.ascontiguousarray(x.numpy())


def knn_scores(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    num_classes: int,
    *,
    k: Sequence[int] = (20,),
    temperature: float = 0.07,
    batch_size: int = 4096,
) -> Iterator[tuple[slice, dict[int, Tensor]]]:
    """Yield weighted class votes for each batch of test rows.

    Args:
        train: ``(N_train, D)`` reference features.
        train_labels: ``(N_train,)`` int64 labels of ``train``.
        test: ``(N_test, D)`` query features.
        num_classes: number of classes ``C``.
        k: neighbour counts; a ``k`` above ``N_train`` uses all ``N_train`` neighbours.
        temperature: vote weight ``exp(similarity / temperature)``.
        batch_size: queries per faiss search.

    Yields:
        ``(rows, votes)``: the slice of test rows and ``k -> (len(rows), C)`` float32 vote totals.
    """
    if train.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train and test widths differ: {tuple(train.shape)} vs {tuple(test.shape)}")
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(_unit_rows(train))
    labels = train_labels.detach().to("cpu", torch.int64)
    k_max = min(max(k), train.shape[0])
    for start in range(0, test.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, test.shape[0]))
        similarity, neighbours = index.search(_unit_rows(test[rows]), k_max)
        similarity_t = torch.from_numpy(similarity)
        neighbour_labels = labels[torch.from_numpy(neighbours)]
        # Subtracting each row's best similarity leaves every vote ratio (so the ranking of
        # classes) unchanged and keeps exp() far from overflow at small temperatures.
        weights = ((similarity_t - similarity_t[:, :1]) / temperature).exp()
        votes: dict[int, Tensor] = {}
        for kk in k:
            used = min(kk, k_max)
            totals = torch.zeros(similarity_t.shape[0], num_classes, dtype=torch.float32)
            totals.scatter_add_(1, neighbour_labels[:, :used], weights[:, :used])
            votes[kk] = totals
        yield rows, votes


def knn_classify(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    k: Sequence[int] = (20,),
    temperature: float = 0.07,
    batch_size: int = 4096,
    num_threads: int | None = None,
) -> dict[str, float]:
    """Weighted k-NN top-1 and top-5 accuracy of ``test`` against ``train``, for each ``k``.

    Args:
        train: ``(N_train, D)`` features; ``train_labels``: ``(N_train,)`` int64.
        test: ``(N_test, D)`` features; ``test_labels``: ``(N_test,)`` int64.
        num_classes: number of classes ``C`` (top-5 is capped at ``C``).
        k, temperature, batch_size: as in :func:`knn_scores`.
        num_threads: faiss threads; default ``torch.get_num_threads()``.

    Returns:
        ``{"top1@20": ..., "top5@20": ...}`` (fractions in ``[0, 1]``), one pair per ``k``.
    """
    ks = tuple(dict.fromkeys(k))  # unique, in the order given
    correct = {kk: {1: 0, 5: 0} for kk in ks}
    targets = test_labels.detach().to("cpu", torch.int64)
    with faiss_threads(num_threads):
        for rows, votes in knn_scores(
            train, train_labels, test, num_classes, k=ks, temperature=temperature, batch_size=batch_size
        ):
            for kk, totals in votes.items():
                for top, hits in topk_correct(totals, targets[rows], (1, 5)).items():
                    correct[kk][top] += hits
    n = max(int(test.shape[0]), 1)
    out: dict[str, float] = {}
    for kk in ks:
        out[f"top1@{kk}"] = correct[kk][1] / n
        out[f"top5@{kk}"] = correct[kk][5] / n
    return out


def build_knn(params: KnnParams, ctx: BuildContext):
    """Factory of the ``knn_faiss`` evaluator."""

    def evaluate_knn(features: Mapping[str, FeatureSet], default: str) -> EvalResult:
        name = choose_representation(features, params.representation, default=default,
                                     option="the knn_faiss parameter representation")
        feats = features[name]
        accuracy = knn_classify(
            feats.train,
            feats.train_labels,
            feats.test,
            feats.test_labels,
            feats.num_classes,
            k=params.k,
            temperature=params.temperature,
            batch_size=params.batch_size,
        )
        graded = f"top1@{GRADED_K}"
        return EvalResult(
            metrics={f"knn/{key}": value for key, value in accuracy.items()},
            artifacts={"representation": name, "num_train": int(feats.train.shape[0])},
            grades={f"knn/{graded}": KNN_GRADE} if graded in accuracy else {},
            headline=f"knn/top1@{params.k[0]}",  # the first k asked for: what best_model.pth follows online
        )

    return evaluate_knn


@hookimpl
def hjepa_register_evaluators(register) -> None:
    register(
        "knn_faiss",
        build_knn,
        params=KnnParams,
        summary="Weighted k-NN (cosine, exp(sim/T) votes) with exact faiss search: top-1/top-5 per k.",
    )
