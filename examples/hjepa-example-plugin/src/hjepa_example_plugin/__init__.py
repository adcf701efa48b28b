"""An example hjepa-kit plugin: encoder ``tiny_convnet`` and masker ``random_patches``."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EncoderOutput, Masks
from hjepa_kit.errors import ConfigError
from hjepa_kit.params import param

__all__ = ["ConvNetParams", "TinyConvNet", "RandomPatchParams", "RandomPatchMasker"]


@attrs.frozen(kw_only=True)
class ConvNetParams:
    """Parameters of ``tiny_convnet``."""

    width: int = param(64, help="Channels of every conv layer (the token width D).", ge=8)
    patch_size: int = param(4, help="Side of the square patch each output token covers.", ge=1)
    layers: int = param(3, help="Conv layers after the patchifying stem.", ge=1)


class TinyConvNet(nn.Module):
    """A patchifying stem and residual 3x3 convs; each output position is one patch token.

    A convnet cannot skip masked patches, so with ``indices`` it encodes every patch and keeps
    the listed ones: correct under the contract, without the ViT's compute saving.
    """

    def __init__(self, params: ConvNetParams, image_size: int, in_chans: int) -> None:
        super().__init__()
        if image_size % params.patch_size:
            raise ConfigError(
                f"model.encoder.params.patch_size: {params.patch_size} does not divide the image size {image_size}"
            )
        self.embed_dim = params.width
        self.patch_size = params.patch_size
        self.grid_size = (image_size // params.patch_size, image_size // params.patch_size)
        self.depth = params.layers
        self.stem = nn.Conv2d(in_chans, params.width, params.patch_size, stride=params.patch_size)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, params.width), nn.Conv2d(params.width, params.width, 3, padding=1), nn.GELU())
            for _ in range(params.layers)
        )
        self.norm = nn.LayerNorm(params.width)

    def forward(self, images: Tensor, indices: Tensor | None = None, return_blocks: Any = ()) -> EncoderOutput:
        x = self.stem(images)
        wanted: dict[int, list[int]] = {}
        for b in return_blocks:  # (0, -1) may name the same block: keep both keys
            wanted.setdefault(b % self.depth, []).append(b)
        blocks: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks):
            x = x + block(x)
            for key in wanted.get(i, ()):
                blocks[key] = x.flatten(2).transpose(1, 2)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, D)
        if indices is not None:
            gather = indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = tokens.gather(1, gather)
            blocks = {k: v.gather(1, gather) for k, v in blocks.items()}
        return EncoderOutput(tokens=tokens, blocks=blocks)


@attrs.frozen(kw_only=True)
class RandomPatchParams:
    """Parameters of ``random_patches``."""

    num_targets: int = param(2, help="Target groups per image.", ge=1)
    target_fraction: float = param(0.15, help="Fraction of the patches in each target group.", gt=0.0, lt=0.5)


class RandomPatchMasker:
    """Targets: ``num_targets`` groups of uniformly random patches; context: every other patch."""

    def __init__(self, params: RandomPatchParams, grid_size: tuple[int, int]) -> None:
        self.num_patches = grid_size[0] * grid_size[1]
        self.per_target = max(1, int(round(params.target_fraction * self.num_patches)))
        self.num_targets = params.num_targets
        if self.num_targets * self.per_target >= self.num_patches:
            raise ConfigError(
                f"model.masker.params: {self.num_targets} targets x {self.per_target} patches leave no context "
                f"on a {grid_size[0]}x{grid_size[1]} grid"
            )

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        order = torch.rand(batch_size, self.num_patches, generator=generator).argsort(dim=1)
        taken = self.num_targets * self.per_target
        targets = order[:, :taken].reshape(batch_size, self.num_targets, self.per_target)
        context = order[:, taken:].sort(dim=1).values
        return Masks(context=context, targets=targets)


def _build_convnet(params: ConvNetParams, ctx: BuildContext) -> TinyConvNet:
    return TinyConvNet(params, ctx.image_size, ctx.in_chans)


def _build_masker(params: RandomPatchParams, ctx: BuildContext) -> RandomPatchMasker:
    assert ctx.grid_size is not None
    return RandomPatchMasker(params, ctx.grid_size)


@hookimpl
def hjepa_register_encoders(register: Any) -> None:
    register("tiny_convnet", _build_convnet, params=ConvNetParams, summary="Small patchifying convnet (example plugin)")


@hookimpl
def hjepa_register_maskers(register: Any) -> None:
    register("random_patches", _build_masker, params=RandomPatchParams, summary="Uniformly random target patches (example plugin)")
