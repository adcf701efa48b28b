"""Extract frozen features once and share them with every evaluator."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..contracts import FeatureSet, ImageData
from ..errors import ConfigError
from ..data.loader import iter_eval_batches
from ..model import HJEPA

__all__ = ["extract_features", "feature_sets", "subset", "check_representation"]


@torch.no_grad()
def extract_features(
    model: HJEPA,
    data: ImageData,
    *,
    image_size: int,
    batch_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    features: Callable[[Tensor], dict[str, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Every representation's ``(N, D)`` float32 features of ``data``, on the CPU.

    The target encoder runs once per batch; the predictor's per-level features come from the
    same forward pass. ``features`` replaces ``model.features`` (e.g. a compiled
    :class:`~hjepa_kit.training.compiling.FeatureFunction` of the same model).
    """
    encode = features or model.features
    was_training = model.training
    model.eval()
    chunks: dict[str, list[Tensor]] = {}
    try:
        for images, _ in iter_eval_batches(data, image_size=image_size, batch_size=batch_size, mean=mean, std=std, device=device):
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                out = encode(images)
            for name, value in out.items():
                chunks.setdefault(name, []).append(value.float().cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def feature_sets(
    train: Mapping[str, Tensor], train_labels: Tensor, test: Mapping[str, Tensor], test_labels: Tensor, num_classes: int
) -> dict[str, FeatureSet]:
    """Pair train and test features of each representation into :class:`FeatureSet` objects."""
    return {
        name: FeatureSet(train=train[name], train_labels=train_labels, test=test[name], test_labels=test_labels, num_classes=num_classes)
        for name in train
        if name in test
    }


def subset(data: ImageData, count: int, seed: int) -> ImageData:
    """A seeded random subset of ``count`` images (all of them when there are fewer)."""
    if count >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=generator)[:count].sort().values
    labels = data.labels[index] if data.labels is not None else None
    return ImageData(images=data.images[index], labels=labels, classes=data.classes)


def check_representation(name: str, sets: Mapping[str, FeatureSet]) -> str:
    """``name`` when the model produced that representation, else a ConfigError listing those it has."""
    if name not in sets:
        raise ConfigError(
            f"evaluation.representation: the model has no representation {name!r}; it has {', '.join(sorted(sets))}", ""
        )
    return name
