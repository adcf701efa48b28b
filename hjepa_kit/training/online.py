"""What the trainer watches while it trains: online evaluation, feature collapse, the best checkpoint.

- :class:`OnlineEvaluation` scores the current model with the configured online evaluator
  (``evaluation.online``) on fixed labelled subsets of the train and test splits.
- :func:`feature_stats` measures the target encoder's tokens (std, effective rank) and warns of
  representation collapse.
- :func:`new_best` decides whether an epoch's figures make a new ``best_model.pth``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..build import Resolved, build_component
from ..config import LoggingConfig, RunConfig
from ..contracts import BuildContext, Dataset, ImageData
from .health import select_metric
from ..evaluation.features import check_representation, extract_features, feature_sets, subset
from ..evaluation.metrics import effective_rank
from ..registry import Registry

__all__ = ["OnlineEvaluation", "feature_stats", "new_best"]

log = logging.getLogger("hjepa_kit")


class OnlineEvaluation:
    """The run's online evaluator on fixed labelled subsets; each split is loaded once.

    Args:
        config: the run's configuration (``evaluation``, ``data`` and ``seed`` are read).
        dataset: the run's dataset.
        registry: the registry that resolved the configuration.
        resolved: the resolved components (``evaluation.online`` is built from it at each call).
        ctx: the build context (image size).
    """

    def __init__(self, config: RunConfig, dataset: Dataset, registry: Registry, resolved: Resolved, ctx: BuildContext) -> None:
        self.config = config
        self.dataset = dataset
        self.registry = registry
        self.resolved = resolved
        self.ctx = ctx
        self._splits: dict[str, ImageData] = {}

    def split(self, name: str) -> ImageData:
        """The dataset's split ``name``, loaded on first use."""
        if name not in self._splits:
            self._splits[name] = self.dataset.load(name)
        return self._splits[name]

    def __call__(self, model: Any, *, device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, float] | None:
        """Score ``model``; figures are prefixed ``online/``.

        Returns:
            The figures and ``online/seconds``, or None where the dataset has no labels or no test split.
        """
        cfg = self.config
        ev = cfg.evaluation
        if self.dataset.num_classes is None or "test" not in self.dataset.splits:
            return None
        started = time.perf_counter()
        train = subset(self.split("train"), ev.online_train_samples, cfg.seed)
        test = subset(self.split("test"), ev.online_test_samples, cfg.seed + 1)
        if train.labels is None or test.labels is None:
            return None
        kwargs = dict(image_size=self.ctx.image_size, batch_size=cfg.data.eval_batch_size,
                      mean=cfg.data.augmentation.mean, std=cfg.data.augmentation.std,
                      device=device, autocast_dtype=amp_dtype)
        train_features = extract_features(model, train, **kwargs)
        test_features = extract_features(model, test, **kwargs)
        sets = feature_sets(train_features, train.labels, test_features, test.labels, int(self.dataset.num_classes))
        evaluator = build_component(self.resolved, "evaluation.online", self.ctx)
        result = evaluator(sets, check_representation(ev.representation, sets))
        figures = getattr(result, "metrics", result)
        out = {f"online/{k}": float(v) for k, v in figures.items()}
        out["online/seconds"] = time.perf_counter() - started
        return out


def feature_stats(tokens: torch.Tensor, cfg: LoggingConfig) -> dict[str, float]:
    """``features/std``, ``features/effective_rank`` and ``features/collapse_warning`` of ``tokens``.

    The warning flag is set where the std or the effective rank falls below the ``logging``
    thresholds; the trainer answers it as ``training.on_collapse`` says.
    """
    flat = tokens.float().reshape(-1, tokens.shape[-1])
    std = float(flat.std(dim=0).mean())
    rank = float(effective_rank(flat))
    width = flat.shape[1]
    stats = {"features/std": std, "features/effective_rank": rank}
    collapsed = std < cfg.collapse_std_threshold or rank < cfg.collapse_rank_fraction * width
    stats["features/collapse_warning"] = float(collapsed)
    return stats


def new_best(
    best: Mapping[str, Any], metrics: Mapping[str, float], criterion: str, epoch: int, representation: str = "encoder"
) -> dict[str, Any] | None:
    """The new best record (``metric``, ``value``, ``epoch``) where ``metrics`` beat ``best``, else None.

    ``criterion`` is ``checkpoint.best_metric``, resolved by :func:`~hjepa_kit.training.health.select_metric`:
    ``auto`` uses the first online k-NN top-1 figure where there is one, else the label-free RankMe
    of ``representation``'s pooled embeddings, else the loss. A change of metric always makes a new best.
    """
    name, value, higher = select_metric(criterion, metrics, representation)
    if not best or best.get("metric") != name or (value > best["value"] if higher else value < best["value"]):
        return {"metric": name, "value": value, "epoch": epoch}
    return None
