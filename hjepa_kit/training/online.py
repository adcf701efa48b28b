"""What the trainer watches while it trains: online evaluation and the target tokens' spread.

- :class:`OnlineEvaluation` scores the current model with the configured online evaluator
  (``evaluation.online``) on fixed labelled subsets of the train and test splits, and keeps the
  headline figure that evaluator declares.
- :func:`feature_stats` measures the target encoder's tokens (std, effective rank) and judges them
  by the one collapse rule (:func:`~hjepa_kit.evaluation.metrics.judge_collapse`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..build import Resolved, build_component
from ..config import LoggingConfig, RunConfig
from ..contracts import BuildContext, Dataset, ImageData, needs_model
from ..errors import ConfigError
from ..evaluation.features import check_representation, extract_features, feature_sets, subset
from ..evaluation.metrics import Collapse, effective_rank, judge_collapse
from ..registry import Registry

__all__ = ["OnlineEvaluation", "feature_stats"]

log = logging.getLogger("hjepa_kit")


class OnlineEvaluation:
    """The run's online evaluator on fixed labelled subsets; each split is loaded once.

    Args:
        config: the run's configuration (``evaluation``, ``data`` and ``seed`` are read).
        dataset: the run's dataset.
        registry: the registry that resolved the configuration.
        resolved: the resolved components (``evaluation.online`` is built from it at each call).
        ctx: the build context (image size).

    Attributes:
        headline: the evaluator's headline figure as logged (``online/`` + its
            :attr:`~hjepa_kit.contracts.EvalResult.headline`), once it has run and declared one.
    """

    def __init__(self, config: RunConfig, dataset: Dataset, registry: Registry, resolved: Resolved, ctx: BuildContext) -> None:
        self.config = config
        self.dataset = dataset
        self.registry = registry
        self.resolved = resolved
        self.ctx = ctx
        self._splits: dict[str, ImageData] = {}
        self.headline: str | None = None
        online = config.evaluation.online
        if online is not None and config.evaluation.online_every_epochs > 0 \
                and needs_model(build_component(resolved, "evaluation.online", ctx)):
            # Refused before the first step, not after the first epoch: the online evaluation sees
            # frozen features only, never the encoder to train.
            raise ConfigError(
                f"evaluation.online: {online.name!r} trains the encoder (it declares needs_model), which the "
                "evaluation during training cannot give it; choose an evaluator of frozen features "
                "(knn_faiss, linear_probe, few_shot ...) and run it after training with "
                f"`hjepa evaluate --eval-type {online.name}`", source="",
            )

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
        headline = getattr(result, "headline", None)
        self.headline = f"online/{headline}" if headline in figures else None
        out = {f"online/{k}": float(v) for k, v in figures.items()}
        out["online/seconds"] = time.perf_counter() - started
        return out


def feature_stats(tokens: torch.Tensor, cfg: LoggingConfig) -> tuple[dict[str, float], Collapse]:
    """``features/std``, ``features/effective_rank`` and ``features/collapse_warning`` of ``tokens``, and the collapse verdict.

    The warning flag is set where the std or the effective rank falls below the ``logging``
    thresholds; the trainer answers it as ``training.on_collapse`` says.
    """
    flat = tokens.float().reshape(-1, tokens.shape[-1])
    std = float(flat.std(dim=0).mean())
    rank = float(effective_rank(flat))
    collapse = judge_collapse("the target tokens", flat.shape[1], std=std, rank=rank,
                              std_threshold=cfg.collapse_std_threshold, rank_fraction=cfg.collapse_rank_fraction)
    stats = {"features/std": std, "features/effective_rank": rank, "features/collapse_warning": float(bool(collapse))}
    return stats, collapse
