"""The levels of the ``hierarchical`` predictor: their parameters and the cells they pool.

Level ``l`` of the hierarchy is the mean of the layer-normalised target tokens over square cells
of ``pool[l]`` x ``pool[l]`` patches (``2**l`` by default; level 0 is the patch itself).
:class:`HierarchicalParams` defines the levels (how many, their loss weights, cell sides and
target-encoder blocks) and the predictor around them; :func:`pool_cells` averages tokens over the
cells of a level, :func:`cell_of_patch` says which cell holds each patch and
:func:`generalised_mean` is the ``gem`` feature pooling. Grids that a cell side
does not divide end in partial cells that average only the patches they hold; a cell side larger
than the grid is clipped to it. Used by :mod:`hjepa_kit.plugins.hierarchical`, which re-exports
these names.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from hjepa_kit.params import param

__all__ = ["HierarchicalParams", "pool_cells", "cell_of_patch", "generalised_mean"]


@attrs.frozen(kw_only=True)
class HierarchicalParams:
    """Parameters of the ``hierarchical`` predictor."""

    num_levels: int = param(2, help="Number of hierarchy levels (level 0 is patch level).", ge=1)
    level_weights: tuple[float, ...] | None = param(
        None,
        help="Loss weight of each level, one per level; unset means 0.5**level (1.0, 0.5 for two levels).",
        ge=0.0,
    )
    level_blocks: tuple[int | None, ...] = param(
        (),
        help="Target-encoder block each level's targets come from (null = final output); empty = final output for all.",
    )
    target_average: int = param(
        1,
        help="Targets of the levels that read the final output are the mean of the target encoder's last k blocks, "
        "each layer-normalised (data2vec's targets; 1: the final output alone, as I-JEPA). Evaluation still reads "
        "the final output. docs/quality.md measures 6 of ViT-Tiny's 12.",
        ge=1,
    )
    target_norm: Literal["token", "centre", "instance"] = param(
        "token",
        help="Normalisation of the spatial levels' training targets: token = each token layer-normalised (I-JEPA); "
        "centre = then each channel minus its mean over the image's cells, so what every cell of an image shares "
        "(its noise level, its background) is no longer predicted; instance = centred and divided by the channel's "
        "std over the cells (data2vec's instance norm, Baevski et al. 2022). Evaluation features are unchanged. "
        "Measured (docs/quality.md): neither gains on the three sets nor stops the shapes' fall.",
        choices=("token", "centre", "instance"),
    )
    pool: tuple[int, ...] | None = param(
        None, help="Cell side in patches of each level; unset means 2**level (1, 2, 4, ...).", ge=1
    )
    width: int = param(96, help="Embedding width of the predictor (narrow, as in I-JEPA; half of ViT-Tiny's 192).", ge=4)
    depth: int = param(2, help="Transformer blocks of the predictor.", ge=1)
    num_heads: int = param(3, help="Attention heads of the predictor (width must be divisible by it).", ge=1)
    mlp_ratio: float = param(4.0, help="Hidden width of the MLPs as a multiple of width.", gt=0.0)
    layout: Literal["joint", "per_block"] = param(
        "joint",
        help="joint: all target blocks' mask tokens in one sequence after the context (cheaper); "
        "per_block: one sequence per target block, as I-JEPA.",
        choices=("joint", "per_block"),
    )
    fused_attn: bool | Literal["auto"] = param(
        "auto",
        help="Fused scaled-dot-product attention: auto = on for CUDA, off elsewhere (its backward is slow on CPU); "
        "true / false force it.",
        choices=("auto", True, False),
    )
    renorm_coarse: bool = param(
        False, help="Layer-normalise the pooled coarse targets again, so every level's targets have unit scale."
    )
    cross_view_weight: float = param(
        0.0,
        help="Loss weight of the cross-view level, one level above the others (0 = off): an MLP on each view's "
        "pooled context tokens predicts the other views' pooled normalised target tokens (with data.views: 1, "
        "its own full image's). Evaluated as level<num_levels>.",
        ge=0.0,
    )
    cross_view_hidden: int = param(4, help="Hidden width of the cross-view level's MLP as a multiple of the encoder width.", ge=1)
    cross_view_target: Literal["ema", "views", "both"] = param(
        "ema",
        help="What the cross-view level compares: ema = an MLP on each view's pooled context predicts the other views' "
        "pooled target-encoder tokens (standardised over the batch); views = each view's pooled context is pulled to "
        "the other views' pooled context, gradients through both (VICReg's and LeJEPA's invariance term). The tokens' regulariser keeps the "
        "features spread; regularising the mean-pooled context too (loss.params.regularise: both) unlearned on the "
        "small digit sets, the max-pooled context (pooled_by: max, the shipped recipe) held the shapes longer "
        "(docs/quality.md). both = two cross-view levels, the ema level then the views level, each "
        "of weight cross_view_weight (measured: the synthetic shapes fall later than with views alone, "
        "and the nearest digits lose 3 points).",
        choices=("ema", "views", "both"),
    )
    feature_pool: Literal["max", "mean", "gem"] = param(
        "max",
        help="How level_features pools each level's cell map for evaluation: max over cells (differs per level), mean, "
        "or gem, the generalised mean (mean over cells of max(x, 0)^p)^(1/p) with p = gem_power (Radenovic et al. "
        "2018). benchmarks/poolings.py measures them (docs/quality.md): gem holds the bilinear digits over long "
        "schedules and leads on the nearest ones; only max holds the synthetic shapes.",
        choices=("max", "mean", "gem"),
    )
    gem_power: float = param(3.0, help="The exponent p of feature_pool: gem (1: the mean of the positive parts; large: the max).", ge=1.0)

    def __attrs_post_init__(self) -> None:
        n = self.num_levels
        if self.level_weights is not None:
            if len(self.level_weights) != n:
                raise ValueError(
                    f"level_weights has {len(self.level_weights)} entries {self.level_weights} but num_levels is {n}: "
                    "give one weight per level, or leave level_weights unset for 0.5**level"
                )
            if not any(w > 0 for w in self.level_weights):
                raise ValueError(f"level_weights {self.level_weights} are all 0: at least one level must count")
        if self.level_blocks and len(self.level_blocks) != n:
            raise ValueError(
                f"level_blocks has {len(self.level_blocks)} entries {self.level_blocks} but num_levels is {n}: "
                "give one block (or null for the final output) per level, or leave it empty"
            )
        if self.pool is not None and len(self.pool) != n:
            raise ValueError(
                f"pool has {len(self.pool)} entries {self.pool} but num_levels is {n}: "
                "give one cell side per level, or leave pool unset for 2**level"
            )
        if self.gem_power != 3.0 and self.feature_pool != "gem":
            raise ValueError(
                f"gem_power {self.gem_power} is set but feature_pool is {self.feature_pool!r}: gem_power is the "
                "exponent of feature_pool: gem only; set feature_pool: gem, or leave gem_power out"
            )
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.width % 4:
            # The 2D sin-cos position embedding gives a quarter of the width to each of
            # sin(row), cos(row), sin(col), cos(col).
            raise ValueError(f"width {self.width} must be a multiple of 4 (2D sin-cos position embedding)")

    @property
    def resolved_level_weights(self) -> tuple[float, ...]:
        """``level_weights``, or ``0.5**l`` per level when unset."""
        if self.level_weights is not None:
            return tuple(float(w) for w in self.level_weights)
        return tuple(0.5**level for level in range(self.num_levels))

    @property
    def resolved_pool(self) -> tuple[int, ...]:
        """``pool``, or ``2**l`` per level when unset."""
        return self.pool if self.pool is not None else tuple(2**level for level in range(self.num_levels))


def _cell_kernel(grid_size: tuple[int, int], side: int) -> tuple[int, int]:
    # A cell larger than the grid is clipped to it: the cell is then the whole image.
    return min(side, grid_size[0]), min(side, grid_size[1])


def pool_cells(tokens: Tensor, grid_size: tuple[int, int], side: int) -> Tensor:
    """Average tokens over square cells of ``side`` x ``side`` patches.

    Cells at the bottom/right edge of a grid that ``side`` does not divide are partial and average
    only the patches they hold. A side larger than the grid is clipped to the grid.

    Args:
        tokens: ``(B, N, D)`` tokens of all patches, row-major over ``grid_size``.
        grid_size: ``(rows, cols)`` with ``rows * cols == N``.
        side: cell side in patches (1 returns ``tokens`` unchanged).

    Returns:
        ``(B, C, D)`` cell features, row-major over the ``ceil(rows/side) x ceil(cols/side)`` cells.
    """
    if side == 1:
        return tokens
    B, N, D = tokens.shape
    rows, cols = grid_size
    kernel = _cell_kernel(grid_size, side)
    grid = tokens.transpose(1, 2).reshape(B, D, rows, cols)
    # ceil_mode without padding divides each partial window by the patches it really covers.
    cells = F.avg_pool2d(grid, kernel, stride=kernel, ceil_mode=True)
    return cells.flatten(2).transpose(1, 2)


def cell_of_patch(grid_size: tuple[int, int], side: int) -> Tensor:
    """``(N,)`` index of the cell (row-major over cells) holding each patch."""
    rows, cols = grid_size
    kh, kw = _cell_kernel(grid_size, side)
    cell_cols = math.ceil(cols / kw)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return ((r // kh) * cell_cols + (c // kw)).reshape(-1)


def generalised_mean(x: Tensor, power: float, dim: int) -> Tensor:
    """GeM: ``(mean over dim of max(x, 0)^power)^(1/power)``, in float32.

    Between the mean of the positive parts (``power`` 1) and their maximum (``power`` -> inf);
    Radenovic, Tolias, Chum, TPAMI 2018, https://arxiv.org/abs/1711.02512. Computed relative to
    the maximum along ``dim`` (the same value), so a large power never overflows; all-negative
    inputs give 0.
    """
    positive = x.float().clamp(min=0.0)
    top = positive.amax(dim=dim, keepdim=True).clamp(min=1e-12)
    return top.squeeze(dim) * (positive / top).pow(power).mean(dim=dim).pow(1.0 / power)
