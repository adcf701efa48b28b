"""The in-RAM dataset split that datasets return and evaluators read (re-exported by :mod:`hjepa_kit.contracts`).

It sits below both contract modules so that :mod:`hjepa_kit.evaluator_contracts` needs nothing of
:mod:`hjepa_kit.contracts` (one direction: contracts re-exports the evaluator's contract).
"""

from __future__ import annotations

import attrs
from torch import Tensor

__all__ = ["ImageData"]


@attrs.frozen
class ImageData:
    """A split of a dataset held in RAM.

    Attributes:
        images: ``(N, C, H, W)`` uint8 images.
        labels: ``(N,)`` int64 class indices, or ``None`` for unlabelled data.
        classes: class names, index-aligned with ``labels`` (empty when unlabelled).
    """

    images: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])
