"""Label-free health of a run: RankMe of pooled embeddings.

:class:`HealthMonitor` keeps the pooled features (every representation: ``encoder``, ``level0``
...) of the last ``samples`` training images, taken from the target encoder's forward pass that
the step runs anyway (no extra forward), and measures their RankMe at each epoch's end:
``health/rankme/<representation>``. What the figures decide (a collapse, the best checkpoint,
early stopping) is :mod:`~hjepa_kit.training.epoch_policy`'s.

RankMe (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the Downstream Performance of
Pretrained Self-Supervised Representations by Their Rank", ICML 2023,
https://arxiv.org/abs/2210.02885) is the exponential of the entropy of the normalised singular
values: ``D`` for isotropic features, 1 for features on a line. It needs no labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..evaluation.metrics import effective_rank

__all__ = ["HealthMonitor", "HEALTH_PREFIX"]

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

