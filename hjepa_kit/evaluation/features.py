"""Extract frozen features once and share them with every evaluator."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..contracts import FeatureSet, ImageData
from ..data.loader import iter_eval_batches
from ..errors import ConfigError
from ..model import HJEPA
from .representation import choose_representation

__all__ = ["extract_features", "extract_features_and_tokens", "compact_tokens", "feature_sets", "subset", "check_representation"]


@torch.no_grad()
def extract_features(model: HJEPA, data: ImageData, **options: Any) -> dict[str, Tensor]:
    """Every representation's ``(N, D)`` float32 features of ``data``, on the CPU.

    ``options`` are the keyword arguments of :func:`extract_features_and_tokens` (``image_size``,
    ``batch_size``, ``mean``, ``std``, ``device``, ``autocast_dtype``, ``features``) but ``tokens``.
    The target encoder runs once per batch; the predictor's per-level features come from the same
    forward pass.
    """
    pooled, _ = extract_features_and_tokens(model, data, **options, tokens=False)
    return pooled


@torch.no_grad()
def extract_features_and_tokens(
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
    tokens: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The pooled features of :func:`extract_features` and, with ``tokens``, the patch tokens.

    With ``tokens`` the target encoder is called directly (``features`` is not used) and the same
    forward pass gives the pooled features (``model.pooled``) and the ``encoder`` representation's
    ``(N, T, D)`` final tokens, stored on the CPU in half precision (:func:`compact_tokens`) into
    one preallocated tensor, so the peak memory is the tokens themselves plus one batch.

    Returns:
        ``(pooled, tokens)``: representation -> ``(N, D)`` float32, and representation ->
        ``(N, T, D)`` tokens (``{"encoder": ...}``; empty without ``tokens``).
    """
    encode = features or model.features
    was_training = model.training
    model.eval()
    chunks: dict[str, list[Tensor]] = {}
    store: Tensor | None = None
    filled = 0
    try:
        for images, _ in iter_eval_batches(data, image_size=image_size, batch_size=batch_size, mean=mean, std=std, device=device):
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                if tokens:
                    output = model.target_encoder(images, return_blocks=tuple(model.predictor.target_blocks))
                    out = model.pooled(output)
                else:
                    out = encode(images)
            for name, value in out.items():
                chunks.setdefault(name, []).append(value.float().cpu())
            if tokens:
                batch = compact_tokens(output.tokens.detach().cpu())
                if store is None:
                    store = torch.empty((len(data), *batch.shape[1:]), dtype=batch.dtype)
                elif batch.dtype != store.dtype:  # a batch beyond float16's range: keep everything in bfloat16
                    store = store.to(torch.bfloat16)
                    batch = batch.to(torch.bfloat16)
                store[filled : filled + batch.shape[0]] = batch
                filled += batch.shape[0]
    finally:
        model.train(was_training)
    pooled = {name: torch.cat(parts) for name, parts in chunks.items()}
    return pooled, ({"encoder": store[:filled]} if store is not None else {})


#: The largest magnitude stored as float16 (its largest finite value is 65504; the margin keeps
#: a later sum of a few tokens finite).
_FLOAT16_LIMIT = 32768.0


def compact_tokens(tokens: Tensor) -> Tensor:
    """``tokens`` in half precision: float16 (11 significant bits) when every value is within its
    range, bfloat16 (8 bits, float32's range) otherwise. Normalised ViT tokens are of order 1, where
    float16's relative rounding error is 2**-11 (0.05%)."""
    if tokens.dtype in (torch.float16, torch.bfloat16):
        return tokens
    finite = tokens.isfinite().all()
    if bool(finite) and (tokens.numel() == 0 or float(tokens.abs().max()) <= _FLOAT16_LIMIT):
        return tokens.to(torch.float16)
    return tokens.to(torch.bfloat16)


def feature_sets(
    train: Mapping[str, Tensor],
    train_labels: Tensor,
    test: Mapping[str, Tensor],
    test_labels: Tensor,
    num_classes: int,
    *,
    train_tokens: Mapping[str, Tensor] | None = None,
    test_tokens: Mapping[str, Tensor] | None = None,
) -> dict[str, FeatureSet]:
    """Pair train and test features of each representation into :class:`FeatureSet` objects.

    ``train_tokens`` / ``test_tokens`` (representation -> ``(N, T, D)``) attach the patch tokens
    to the representations that have them in both splits.
    """
    train_tokens, test_tokens = train_tokens or {}, test_tokens or {}
    sets = {}
    for name in train:
        if name not in test:
            continue
        both = name in train_tokens and name in test_tokens
        sets[name] = FeatureSet(
            train=train[name], train_labels=train_labels, test=test[name], test_labels=test_labels, num_classes=num_classes,
            train_tokens=train_tokens[name] if both else None, test_tokens=test_tokens[name] if both else None,
        )  # fmt: skip
    return sets


def subset(data: ImageData, count: int, seed: int) -> ImageData:
    """A seeded random subset of ``count`` images (all of them when there are fewer)."""
    if count >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=generator)[:count].sort().values
    labels = data.labels[index] if data.labels is not None else None
    return ImageData(images=data.images[index], labels=labels, classes=data.classes)


def check_representation(name: str, sets: Mapping[str, FeatureSet]) -> str:
    """``name`` when the model produced that representation, else a ConfigError of ``evaluation.representation`` listing those it has."""
    return choose_representation(sets, name, option="evaluation.representation", error=lambda message: ConfigError(message, ""))
