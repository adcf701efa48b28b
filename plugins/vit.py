"""Encoders ``vit_tiny``, ``vit_small``, ``vit_base``: timm Vision Transformers that encode chosen patches.

The blocks, patch embedding and final norm are timm's (``timm.models.vision_transformer``), built
without class token, head or pooling, and never with pretrained weights. Around them this module
adds what a JEPA encoder needs:

* fixed 2D sine-cosine position embeddings (as I-JEPA), added before patches are dropped, so a
  kept patch carries its own position whichever other patches are dropped;
* ``indices``: only the listed patches enter the first block (gathered, not zeroed), so the cost of
  the blocks scales with the number of kept patches; the patch embedding still runs on the whole
  image, a small fixed cost;
* ``return_blocks``: raw (pre-norm) outputs of chosen blocks, for hierarchical targets;
* without gradients on the CPU (the target encoder's forward, evaluation), a large batch is
  encoded in slices of about ``inference_chunk_tokens`` tokens, which keeps the activations in
  the CPU's cache: faster than one large batch, with the same result (docs/performance.md).

Weights use timm's ViT initialisation (truncated normal, std 0.02) with ``fix_init``, which divides
each block's output projections by ``sqrt(2 * layer)`` as I-JEPA does.

``export_timm()`` (``hjepa export``) hands the encoder over as a plain timm ``VisionTransformer``
(same parameter names, the sine-cosine table as its ``pos_embed``) whose pooled output is the
``encoder`` representation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Literal

import attrs
import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EncoderOutput, TimmExport
from hjepa_kit.errors import ConfigError, PluginError
from hjepa_kit.hookspecs import Register
from hjepa_kit.params import param

__all__ = ["VitParams", "VitEncoder", "VARIANTS", "TIMM_ARCHITECTURES", "build_vit", "sincos_pos_embed_2d"]

#: name -> (embed_dim, depth, num_heads, summary)
VARIANTS: dict[str, tuple[int, int, int, str]] = {
    "vit_tiny": (192, 12, 3, "ViT-Tiny (192 wide, 12 deep, 3 heads), timm"),
    "vit_small": (384, 12, 6, "ViT-Small (384 wide, 12 deep, 6 heads), timm"),
    "vit_base": (768, 12, 12, "ViT-Base (768 wide, 12 deep, 12 heads), timm"),
}

#: variant -> the timm architecture of the same width, depth and heads (``hjepa export``); the image
#: and patch size of the name are overridden by ``img_size`` / ``patch_size``.
TIMM_ARCHITECTURES: dict[str, str] = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}


@attrs.frozen(kw_only=True)
class VitParams:
    """Parameters of the ViT encoders (the width, depth and heads are fixed by the variant)."""

    patch_size: int = param(
        16, help="Side of a square patch in pixels; must divide the image size (224/16 as I-JEPA, 32/4 for the fast run).", ge=1
    )
    drop_path_rate: float = param(0.0, help="Stochastic depth rate of the last block (rising linearly from 0).", ge=0, lt=1)
    inference_chunk_tokens: int = param(
        4096,
        help=(
            "Without gradients on the CPU (the target encoder, evaluation), encode at most about this many "
            "tokens at once, splitting the batch by images: the activations then stay in the CPU's cache, "
            "which is faster than one large batch (see the performance page). 0 never splits."
        ),
        ge=0,
    )
    fused_attention: bool | Literal["auto"] = param(
        "auto",
        help=(
            "Use PyTorch's fused scaled-dot-product attention: 'auto' turns it on except on the CPU, where "
            "its backward pass under bf16 is several times slower than the plain attention math; true / false force it."
        ),
        choices=("auto", True, False),
    )


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int]) -> Tensor:
    """Fixed 2D sine-cosine position embeddings ``(1, H * W, D)``, row-major.

    The first half of the channels encodes the row, the second half the column, each as sines and
    cosines of the position at ``D / 4`` geometric frequencies from 1 to 1/10000: the quarters are
    ``[sin(row), cos(row), sin(col), cos(col)]``. Built with timm's
    ``build_sincos2d_pos_embed``, whose quarters come as ``[sin(row), sin(col), cos(row), cos(col)]``
    and are reordered here: trained weights depend on this layout. timm computes the angles in
    float32, so entries may differ from a float64 evaluation by a few float32 ulps. The one table
    of the encoders and of the ``hierarchical`` predictor (which takes ``[0]``).

    Raises:
        ValueError: ``embed_dim`` is not divisible by 4.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2D sine-cosine embeddings, got {embed_dim}")
    rows, cols = int(grid_size[0]), int(grid_size[1])
    table = build_sincos2d_pos_embed(
        [rows, cols], dim=embed_dim, temperature=10000.0, reverse_coord=False, interleave_sin_cos=False
    )  # (N, D), computed in float32
    sin_rows, sin_cols, cos_rows, cos_cols = table.chunk(4, dim=1)
    return torch.cat([sin_rows, cos_rows, sin_cols, cos_cols], dim=1).unsqueeze(0)


class VitEncoder(nn.Module):
    """A ViT over a fixed patch grid that can encode only some patches (the :class:`Encoder` contract).

    Attributes:
        embed_dim: token width ``D``.
        patch_size: side of a square patch in pixels.
        grid_size: ``(rows, cols)`` of the patch grid.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        patch_embed: timm ``PatchEmbed`` (a strided convolution), image -> ``(B, N, D)``.
        blocks: the timm transformer blocks.
        norm: final LayerNorm.
        pos_embed: ``(1, N, D)`` fixed sine-cosine buffer (not saved in checkpoints; rebuilt).
        inference_chunk_tokens: without gradients on the CPU, tokens encoded at once (0: all).
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        drop_path_rate: float = 0.0,
        fused_attention: bool = False,
        inference_chunk_tokens: int = 0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        vit = VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="",
            class_token=False,
            pos_embed="none",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            fix_init=True,
        )
        # Keep timm's parts under timm's names (patch_embed.*, blocks.N.*, norm.*), drop its head.
        self.patch_embed = vit.patch_embed
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.grid_size: tuple[int, int] = (image_size // patch_size, image_size // patch_size)
        self.depth = depth
        self.num_heads = num_heads
        self.in_chans = in_chans
        self.image_size = image_size
        self.inference_chunk_tokens = inference_chunk_tokens
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid_size), persistent=False)
        self.set_fused_attention(fused_attention)

    @property
    def num_patches(self) -> int:
        """Number ``N`` of patches of the grid."""
        return self.grid_size[0] * self.grid_size[1]

    def export_timm(self) -> TimmExport:
        """This encoder as a plain timm ``VisionTransformer`` whose output is the ``encoder`` representation.

        Parameter names are already timm's (``patch_embed.*``, ``blocks.N.*``, ``norm.*``); the
        fixed sine-cosine table becomes timm's (learnable) ``pos_embed``. ``class_token=False``
        with ``global_pool="avg"`` averages the patch tokens, and ``fc_norm=False`` keeps the final
        norm on each token before the average, as :meth:`HJEPA.features` does (timm's default for
        ``avg`` would norm after averaging).

        Raises:
            PluginError: the width, depth and heads are not those of a variant with a timm twin.
        """
        variant = next((name for name, (dim, depth, heads, _) in VARIANTS.items()
                        if (dim, depth, heads) == (self.embed_dim, self.depth, self.num_heads)), None)
        if variant not in TIMM_ARCHITECTURES:
            raise PluginError(
                f"a ViT of width {self.embed_dim}, depth {self.depth} and {self.num_heads} heads has no timm architecture "
                f"here; known: {', '.join(TIMM_ARCHITECTURES)}"
            )
        state = {name: tensor.detach().clone() for name, tensor in self.state_dict().items()}
        state["pos_embed"] = self.pos_embed.detach().float().clone()
        model_args = {
            "img_size": self.image_size, "patch_size": self.patch_size, "in_chans": self.in_chans,
            "class_token": False, "global_pool": "avg", "fc_norm": False, "num_classes": 0,
        }
        return TimmExport(architecture=TIMM_ARCHITECTURES[variant], model_args=model_args, state_dict=state)

    def set_fused_attention(self, enabled: bool) -> None:
        """Switch every block between fused SDPA attention and the plain attention math."""
        for block in self.blocks:
            block.attn.fused_attn = enabled

    def forward(self, images: Tensor, indices: Tensor | None = None, return_blocks: Sequence[int] = ()) -> EncoderOutput:
        """Encode ``(B, C, H, W)`` images.

        Args:
            images: float images of the configured size.
            indices: ``(B, K)`` int64 row-major patch indices to keep, in the order the tokens should
                come out; the other patches never enter a block. ``None`` keeps all ``N`` in grid order.
            return_blocks: block indices (``-depth .. depth-1``) whose raw outputs to return.

        Returns:
            :class:`EncoderOutput`: ``tokens`` ``(B, K, D)`` after the final norm, and ``blocks``
            mapping each requested index, as given, to that block's ``(B, K, D)`` output (before the
            final norm).
        """
        self._check_images(images)
        wanted = self._block_positions(return_blocks)
        if indices is not None:
            self._check_indices(indices, images.shape[0])
        per_chunk = self._images_per_chunk(images, self.num_patches if indices is None else indices.shape[1])
        if per_chunk >= images.shape[0]:
            return self._encode(images, indices, wanted)
        # Rows are independent (attention is within an image), so chunks give the same result.
        parts = [
            self._encode(images[start : start + per_chunk], None if indices is None else indices[start : start + per_chunk], wanted)
            for start in range(0, images.shape[0], per_chunk)
        ]
        return _encoder_output(
            torch.cat([part.tokens for part in parts]),
            {key: torch.cat([part.blocks[key] for part in parts]) for key in parts[0].blocks},
        )

    def _images_per_chunk(self, images: Tensor, tokens_per_image: int) -> int:
        """Images encoded at once: all of them, except without gradients on the CPU.

        Under no_grad nothing is kept for a backward pass, so a large batch can be encoded a
        slice at a time; slices of a few thousand tokens keep every block's activations
        (``(tokens, 4 D)`` after the MLP's first layer) in the CPU's cache, where the element-wise
        work (norms, GELU, residual adds, softmax) runs several times faster than from memory.
        A GPU wants the whole batch, and so does a trace for export (ONNX): traced slices would
        fix the batch size of the exported graph.
        """
        batch = images.shape[0]
        if not self.inference_chunk_tokens or torch.is_grad_enabled() or images.device.type != "cpu" or _tracing():
            return batch
        return max(1, self.inference_chunk_tokens // max(tokens_per_image, 1))

    def _encode(self, images: Tensor, indices: Tensor | None, wanted: dict[int, list[int]]) -> EncoderOutput:
        x = self.patch_embed(images)  # (B, N, D)
        x = x + self.pos_embed.to(x.dtype)
        if indices is not None:
            x = torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, K, D)
        blocks: dict[int, Tensor] = {}
        for position, block in enumerate(self.blocks):
            x = block(x)
            for key in wanted.get(position, ()):
                blocks[key] = x
        return _encoder_output(self.norm(x), blocks)

    def _check_images(self, images: Tensor) -> None:
        expected = (self.in_chans, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")

    def _check_indices(self, indices: Tensor, batch_size: int) -> None:
        # Values are not range-checked here: that would synchronise with the GPU every step;
        # gather itself rejects an index outside the grid.
        if indices.dim() != 2 or indices.shape[0] != batch_size or indices.dtype != torch.int64:
            raise ValueError(
                f"indices must be int64 (B, K) with B = {batch_size}, got {indices.dtype} {tuple(indices.shape)}"
            )

    def _block_positions(self, return_blocks: Sequence[int]) -> dict[int, list[int]]:
        """Map block position ``0 .. depth-1`` -> the requested keys that name it."""
        wanted: dict[int, list[int]] = {}
        for key in return_blocks:
            if not -self.depth <= key < self.depth:
                raise ValueError(f"return_blocks: block {key} does not exist; valid are {-self.depth} .. {self.depth - 1}")
            wanted.setdefault(key % self.depth, []).append(key)
        return wanted


@torch.compiler.disable
def _encoder_output(tokens: Tensor, blocks: dict[int, Tensor]) -> EncoderOutput:
    """Wrap the tensors in the contract's frozen attrs class outside any compiled graph.

    TorchDynamo cannot trace the ``object.__setattr__`` of a frozen attrs ``__init__`` (it raises,
    PyTorch 2.15); built here, ``torch.compile`` / ``Module.compile()`` of the encoder compiles the
    tensor work and returns the tensors to this eager call.
    """
    return EncoderOutput(tokens=tokens, blocks=blocks)


def _tracing() -> bool:
    """Whether the forward is being traced for export (ONNX, torch.export), where the batch is symbolic."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or (exporting is not None and exporting()))


def _fused(choice: bool | str, device: torch.device) -> bool:
    if choice == "auto":
        return torch.device(device).type != "cpu"
    return bool(choice)


def build_vit(variant: str, params: VitParams, ctx: BuildContext) -> VitEncoder:
    """Build a ViT ``variant`` (a key of :data:`VARIANTS`) for ``ctx.image_size`` and ``ctx.in_chans``.

    Raises:
        ConfigError: the image size is not a multiple of the patch size.
    """
    embed_dim, depth, num_heads, _ = VARIANTS[variant]
    if ctx.image_size % params.patch_size:
        divisors = [d for d in range(2, ctx.image_size) if ctx.image_size % d == 0]
        raise ConfigError(
            f"{variant}: patch_size {params.patch_size} does not divide image_size {ctx.image_size} into whole "
            f"patches; choose a patch_size that divides it ({', '.join(map(str, divisors)) or 'none'}) "
            "or change the image size"
        )
    return VitEncoder(
        image_size=ctx.image_size,
        patch_size=params.patch_size,
        in_chans=ctx.in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=params.drop_path_rate,
        fused_attention=_fused(params.fused_attention, ctx.device),
        inference_chunk_tokens=params.inference_chunk_tokens,
    )


def _factory(variant: str) -> Callable[[VitParams, BuildContext], VitEncoder]:
    def factory(params: VitParams, ctx: BuildContext) -> VitEncoder:
        return build_vit(variant, params, ctx)

    factory.__name__ = f"build_{variant}"
    factory.__doc__ = f"Build {VARIANTS[variant][3]}."
    return factory


@hookimpl
def hjepa_register_encoders(register: Register) -> None:
    for variant, (_, _, _, summary) in VARIANTS.items():
        register(variant, _factory(variant), params=VitParams, summary=summary)
