"""Label-free health of a run: RankMe of pooled embeddings, collapse detection, metric selection.

- :class:`HealthMonitor` keeps the pooled features (every representation: ``encoder``,
  ``level0`` ...) of the last ``samples`` training images, taken from the target encoder's forward
  pass that the step runs anyway (no extra forward), and measures their RankMe at each epoch's
  end: ``health/rankme/<representation>``.
- :func:`collapse_problem` judges the evaluated representation's RankMe against the ``logging`` thresholds.
- :func:`select_metric` turns ``checkpoint.best_metric`` (``auto``, ``knn``, ``rankme``, ``loss`` or
  any logged figure) into one figure and its direction.

RankMe (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the Downstream Performance of
Pretrained Self-Supervised Representations by Their Rank", ICML 2023,
https://arxiv.org/abs/2210.02885) is the exponential of the entropy of the normalised singular
values: ``D`` for isotropic features, 1 for features on a line. It needs no labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..evaluation.metrics import effective_rank

__all__ = ["HealthMonitor", "collapse_problem", "select_metric", "HEALTH_PREFIX"]

log = logging.getLogger("hjepa_kit")

#: Prefix of the RankMe figures in metrics.jsonl, TensorBoard and ``checkpoint.best_metric``.
HEALTH_PREFIX = "health/rankme/"


class HealthMonitor:
    """Pooled training features of the last ``samples`` images, per representation; RankMe on demand.

    Args:
        samples: rows kept per representation (0 = off: :meth:`add` does nothing).
    """

    def __init__(self, samples: int) -> None:
        self.samples = int(samples)
        self._rows: dict[str, list[Tensor]] = {}
        self._count = 0

    @property
    def enabled(self) -> bool:
        """Whether features are kept."""
        return self.samples > 0

    def add(self, features: Mapping[str, Tensor]) -> None:
        """Keep ``(B, D)`` features per representation (detached, float32, on the CPU)."""
        if not self.enabled:
            return
        for name, value in features.items():
            self._rows.setdefault(name, []).append(value.detach().float().cpu())
        self._count += next(iter(features.values())).shape[0] if features else 0
        # Drop whole old batches while the rest still holds enough rows.
        while self._rows and self._count - next(iter(self._rows.values()))[0].shape[0] >= self.samples:
            dropped = 0
            for parts in self._rows.values():
                dropped = parts.pop(0).shape[0]
            self._count -= dropped

    def rankme(self) -> dict[str, float]:
        """``health/rankme/<representation>`` of the kept rows, then forget them; empty when too few."""
        out = {}
        if self._count >= 2:
            for name, parts in self._rows.items():
                out[HEALTH_PREFIX + name] = float(effective_rank(torch.cat(parts)[-self.samples:]))
        self._rows.clear()
        self._count = 0
        return out


def collapse_problem(
    metrics: Mapping[str, float], widths: Mapping[str, int], rank_fraction: float, representation: str
) -> str | None:
    """Why the figures show a collapse, or None.

    A collapse is a RankMe of the evaluated ``representation``'s pooled features below
    ``rank_fraction`` of its width. Only that representation counts: the others may be low-rank by
    construction (the mean over 64 mostly-background tokens of a digit spans ~15 of 192 dimensions
    in a run that learns well, while the max-pooled tokens of the same run span ~120).
    """
    value = metrics.get(HEALTH_PREFIX + representation)
    width = widths.get(representation)
    if value is None or not width or value >= rank_fraction * width:
        return None
    return (f"RankMe of the pooled '{representation}' embeddings is {value:.1f} of {width} dimensions "
            f"(below logging.collapse_rank_fraction={rank_fraction:g}, i.e. {rank_fraction * width:.1f})")


def select_metric(criterion: str, metrics: Mapping[str, float], representation: str) -> tuple[str, float, bool]:
    """The figure ``criterion`` names in ``metrics``: ``(name, value, higher_is_better)``.

    ``auto``: the first online k-NN top-1 figure, else the RankMe of ``representation``, else the
    loss. ``knn`` / ``rankme`` / ``loss``: that figure (the loss when it is missing, with a warning).
    Any other value is a figure's own name (``online/knn/top1@20``, ``health/rankme/level1``,
    ``loss/level0``); names containing ``loss`` are minimised, the others maximised.
    """
    knn = [k for k in metrics if k.startswith("online/") and "top1" in k]
    rankme = HEALTH_PREFIX + representation
    if criterion == "auto":
        name = knn[0] if knn else rankme if rankme in metrics else "loss"
    elif criterion == "knn":
        name = knn[0] if knn else "loss"
    elif criterion == "rankme":
        name = rankme
    else:
        name = criterion
    if name not in metrics and name != "loss":
        log.warning("the figure %r (from %r) was not logged this epoch; using the loss. Logged figures: %s",
                    name, criterion, ", ".join(sorted(metrics)))
        name = "loss"
    value = float(metrics.get(name, math.inf))
    return name, value, "loss" not in name
