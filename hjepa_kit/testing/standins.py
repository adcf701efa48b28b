"""Stand-ins for what a contract check needs: a small encoder, valid masks, a build context, features,
and the encoder and images an evaluator that declares ``needs_model`` is given.

They meet the contracts of :mod:`hjepa_kit.contracts` without any built-in plugin, so a component
is checked against them alone; :func:`~hjepa_kit.testing.check_component` uses a registered
encoder's sizes instead when given ``encoder=``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import AugmentationConfig
from ..contracts import BuildContext, EncoderOutput, EvalModel, FeatureSet, ImageData, Masks
from ..data.augment import BatchAugment, eval_transform

#: Side of the images components are checked on (32 pixels: a 2x2 grid for 16-pixel patches,
#: 8x8 for 4-pixel ones).
IMAGE_SIZE = 32


class _ProbeEncoder(nn.Module):
    """A small encoder that meets the encoder contract: a patch projection and ``depth`` MLP blocks."""

    def __init__(self, image_size: int = IMAGE_SIZE, patch_size: int = 4, embed_dim: int = 32, depth: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.depth = depth
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU()) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor, indices: Tensor | None = None, return_blocks: Sequence[int] = ()) -> EncoderOutput:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        if indices is not None:
            x = torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        wanted = {key % self.depth: key for key in return_blocks}
        blocks = {}
        for position, block in enumerate(self.blocks):
            x = x + block(x)
            if position in wanted:
                blocks[wanted[position]] = x
        return EncoderOutput(tokens=self.norm(x), blocks=blocks)


def probe_encoder(image_size: int = IMAGE_SIZE, patch_size: int = 4, embed_dim: int = 32, depth: int = 2) -> nn.Module:
    """A small stand-in encoder that meets the encoder contract (8x8 grid, width 32 by default)."""
    torch.manual_seed(0)
    return _ProbeEncoder(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth)


def probe_masks(batch_size: int, grid_size: tuple[int, int], num_targets: int = 2, target_len: int = 4, seed: int = 0) -> Masks:
    """Valid masks for tests: ``num_targets`` blocks of ``target_len`` random patches, the rest is context.

    Returns:
        :class:`~hjepa_kit.contracts.Masks` with context ``(B, N - M * Nt)`` and targets
        ``(B, M, Nt)``, disjoint, int64.
    """
    num_patches = grid_size[0] * grid_size[1]
    taken = num_targets * target_len
    if taken >= num_patches:
        raise ValueError(f"{num_targets} targets of {target_len} patches leave no context on a {grid_size} grid")
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(batch_size, num_patches, generator=generator).argsort(dim=1)
    targets = order[:, :taken].reshape(batch_size, num_targets, target_len)
    context = order[:, taken:].sort(dim=1).values
    return Masks(context=context, targets=targets)


def tiny_context(image_size: int = IMAGE_SIZE, *, encoder: Any = None, num_levels: int = 2, device: str = "cpu") -> BuildContext:
    """A build context as a run would hand it on, for small checks.

    Args:
        image_size: side of the images.
        encoder: a built encoder whose sizes fill ``grid_size``, ``patch_size``, ``embed_dim``
            and ``depth`` (default: :func:`probe_encoder`).
        num_levels: hierarchy levels; ``level_weights`` become ``0.5**level``.
        device: the device in the context.
    """
    encoder = encoder if encoder is not None else probe_encoder(image_size)
    return BuildContext(
        image_size=image_size,
        in_chans=3,
        device=torch.device(device),
        num_classes=4,
        grid_size=(int(encoder.grid_size[0]), int(encoder.grid_size[1])),
        patch_size=int(encoder.patch_size),
        embed_dim=int(encoder.embed_dim),
        depth=int(encoder.depth),
        num_levels=num_levels,
        level_weights=tuple(0.5**level for level in range(num_levels)),
    )


def random_feature_sets(
    names: Sequence[str] = ("encoder", "level0", "level1"),
    *,
    num_train: int = 96,
    num_test: int = 48,
    dim: int = 16,
    num_classes: int = 4,
    seed: int = 0,
    tokens: int = 0,
) -> dict[str, FeatureSet]:
    """Small labelled features with some class structure, one :class:`FeatureSet` per name.

    With ``tokens`` (``T > 0``), the ``encoder`` set also carries ``(N, T, dim)`` float16 patch
    tokens whose mean over the ``T`` tokens is its pooled features, as in a run where an evaluator
    declared ``needs_tokens``; the other names carry none (like the levels of a run).
    """
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 2.0
    sets = {}
    for name in names:
        with_tokens = tokens > 0 and name == "encoder"

        def split(count: int) -> tuple[Tensor, Tensor, Tensor | None]:
            labels = torch.arange(count) % num_classes
            if not with_tokens:
                features = centres[labels] + torch.randn(count, dim, generator=generator)
                return features.float(), labels.long(), None
            patches = (centres[labels][:, None, :] + torch.randn(count, tokens, dim, generator=generator)).half()
            return patches.float().mean(1), labels.long(), patches

        train, train_labels, train_tokens = split(num_train)
        test, test_labels, test_tokens = split(num_test)
        sets[name] = FeatureSet(train=train, train_labels=train_labels, test=test, test_labels=test_labels, num_classes=num_classes,
                                train_tokens=train_tokens, test_tokens=test_tokens)  # fmt: skip
    return sets


def stand_in_model(
    features: Mapping[str, FeatureSet], *, encoder: nn.Module | None = None, image_size: int = IMAGE_SIZE,
    state_dir: Path | None = None, seed: int = 0,
) -> EvalModel:
    """An :class:`~hjepa_kit.contracts.EvalModel` as ``hjepa evaluate`` hands it to an evaluator with ``needs_model``.

    Random uint8 images of ``image_size`` pixels, as many as ``features``' train and test rows and
    with their labels, a copy of ``encoder`` (default: :func:`probe_encoder`) with gradients on, the
    default augmentation and evaluation transform, the CPU, float32, and ``state_dir``.
    """
    some = next(iter(features.values()))
    generator = torch.Generator().manual_seed(seed)

    def images(labels: Tensor) -> ImageData:
        pixels = torch.randint(0, 256, (len(labels), 3, image_size, image_size), generator=generator, dtype=torch.uint8)
        return ImageData(images=pixels, labels=labels.clone(), classes=tuple(f"class{c}" for c in range(some.num_classes)))

    source = encoder if encoder is not None else probe_encoder(image_size)
    augmentation = AugmentationConfig()
    return EvalModel(
        encoder=copy.deepcopy(source).requires_grad_(True), train=images(some.train_labels), test=images(some.test_labels),
        image_size=image_size, augment=BatchAugment(augmentation, image_size),
        transform=functools.partial(eval_transform, image_size=image_size, mean=augmentation.mean, std=augmentation.std),
        state_dir=state_dir, fingerprint="stand-in",
    )  # fmt: skip
