"""Predictor ``hierarchical``: an N-level (default 2) hierarchical I-JEPA predictor.

One narrow transformer predicts, for every target patch, what the EMA target encoder says about
that patch at every level of a spatial hierarchy:

- **level 0** (fine): the target encoder's token of the patch, layer-normalised without affine
  parameters (as I-JEPA normalises its targets);
- **level l >= 1** (coarse): the mean of those normalised tokens over the square *cell* of
  ``pool[l]`` x ``pool[l]`` patches (``2**l`` by default) that contains the patch.

Why "the cell that contains the patch": every level then has the same ``(B, M, Nt, D)`` shape,
one prediction per mask token per level, so a single forward pass and a single set of mask tokens
serve all levels (each level only adds a ``Linear`` head), and lengths are equal within a batch
whatever shape the target blocks have. A cell partly covered by a block is still predicted from
each covered patch; cells are weighted by how many of their patches a block covers.

Grids that a cell side does not divide (a 7 x 7 grid with 2 x 2 cells) end in *partial cells*:
the last row/column of cells is narrower and averages only the patches it holds (``avg_pool2d``
with ``ceil_mode=True`` and no padding). A cell side larger than the grid is clipped to the grid,
so the cell is the whole image.

**The cross-view level** (``cross_view_weight > 0``) sits above the spatial levels: its cell is the
whole image. An MLP maps each view's mean context token to a prediction of the mean normalised
target token of the *other* augmented views of the same image (``data.views >= 2``; with one view,
of its own full image): an invariance term with a target encoder and a predictor, as in BYOL, made
a JEPA level: the pooled embedding, otherwise never compared with anything of its own image, is
asked to agree across crops. Its evaluation feature ``level<L>`` is the mean normalised
target token. With ``cross_view_target="views"`` there is no MLP and no target encoder in the level:
its prediction is the gap between each view's mean context token and the other views', its target
zero, so the gradient reaches every view: VICReg's invariance term (Bardes et al. 2022), as
LeJEPA (Balestriero & LeCun 2025) also writes it; the loss's regulariser on the tokens keeps the
features from collapsing.

``cross_view_target="both"`` gives two cross-view levels, the ``ema`` level then the ``views`` level.

Each level may read a different block of the target encoder (``level_blocks``); by default every
level reads the encoder's final output, and :attr:`HierarchicalPredictor.target_blocks` is ``()``.
With ``target_average=k`` the levels that read the final output are trained on the mean of the
last ``k`` blocks' outputs, each layer-normalised, then normalised again (data2vec's targets:
Baevski et al., "data2vec", ICML 2022, https://arxiv.org/abs/2202.03555); evaluation still reads
the final output.

All ``M`` target blocks are predicted in one pass. ``layout="joint"`` (the default) appends all
``M * Nt`` mask tokens after the ``Nc`` context tokens of a sample, so the context is processed
once; ``layout="per_block"`` is I-JEPA's arrangement, ``B * M`` sequences of context plus one
block. Measured with ``torch.utils.flop_counter`` (forward + backward, B = 8, D = 192, width 96,
depth 2, M = 4): on an 8 x 8 grid (Nc = 30, Nt = 10) joint needs 0.93 GFLOP against 1.91 for
per_block (0.49x); on 14 x 14 (Nc = 90, Nt = 30) 3.33 against 6.45 (0.52x). Joint attends over a
longer sequence but never repeats the context ``M`` times; its attention is also cheaper while
``M * Nt**2 < Nc**2``, which holds for I-JEPA's mask scales, and its linear layers always are. Mask tokens of different
blocks can see each other in joint layout; they carry only positions, so no target leaks.

References:
    Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
    Architecture" (I-JEPA), CVPR 2023, https://arxiv.org/abs/2301.08243
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EncoderOutput, Masks
from hjepa_kit.errors import ConfigError
from hjepa_kit.plugins.levels import HierarchicalParams, cell_of_patch, generalised_mean, pool_cells
from hjepa_kit.plugins.vit import sincos_pos_embed_2d

__all__ = [
    "HierarchicalParams",
    "HierarchicalPredictor",
    "build_hierarchical",
    "pool_cells",
]

_WHERE = "model.predictor.params"


def _gather(tokens: Tensor, index: Tensor) -> Tensor:
    """``(B, K, D)`` tokens at ``(B, T)`` indices -> ``(B, T, D)``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _standardise(pooled: Tensor, eps: float = 1e-5) -> Tensor:
    """Each dimension of ``(N, D)`` pooled targets centred and scaled to unit variance over the batch.

    The pooled normalised tokens of different images share a large common part; predicting it
    alone would satisfy the level. Standardised over the batch, only what differs between images
    is left to predict, at the unit scale of level 0's targets. A batch of one keeps its features.
    """
    if pooled.shape[0] < 2:
        return pooled
    pooled = pooled.float()
    return (pooled - pooled.mean(dim=0)) / torch.sqrt(pooled.var(dim=0) + eps)


def _per_image_norm(cells: Tensor, scale: bool, eps: float = 1e-5) -> Tensor:
    """Each channel of ``(B, C, D)`` cell targets centred over an image's ``C`` cells (and scaled to unit std).

    What every cell of an image shares, such as its pixel-noise level or its background, is a
    constant over the cells: centred away, it is no longer a target the context predicts for free.
    ``scale``: divide by the channel's std over the cells too (data2vec's instance norm; Baevski
    et al., "data2vec", ICML 2022, https://arxiv.org/abs/2202.03555).
    """
    cells = cells.float()
    centred = cells - cells.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / torch.sqrt(cells.var(dim=1, unbiased=False, keepdim=True) + eps)


class HierarchicalPredictor(nn.Module):
    """Predicts every hierarchy level's targets for every target patch from the context tokens.

    Context tokens ``(B, Nc, D)`` are projected to ``width`` and given the sin-cos embedding of
    their grid positions; one learned mask token plus the position embedding of each target patch
    is appended for all ``M * Nt`` target patches; ``depth`` transformer blocks run; a final norm
    and one ``Linear(width, D)`` head per level map each mask token to that level's prediction.

    Attributes:
        num_levels: number of hierarchy levels ``L``.
        level_weights: loss weight per level.
        target_blocks: target-encoder blocks :meth:`make_targets` and :meth:`level_features` read
            (non-negative indices); ``()`` when every level uses the final output.
        averaged_blocks: the blocks averaged with the final output into the targets (``target_average``).
        cross_view_forms: the forms (``ema``, ``views``) of the cross-view levels, in level order.
        pool_sides: cell side in patches per level.
        level_sources: per level, the block its targets come from, ``None`` for the final output.
        fused_attn: whether the transformer blocks use fused attention.

    Example:
        ```python
        ctx = BuildContext(image_size=32, grid_size=(8, 8), embed_dim=192, depth=12)
        predictor = build_hierarchical(HierarchicalParams(), ctx)
        targets = predictor.make_targets(target_encoder(images, return_blocks=predictor.target_blocks), masks)
        predictions = predictor(context_encoder(images, masks.context).tokens, masks)
        # two levels, each (B, M, Nt, 192), like targets
        ```

    Raises:
        ValueError: when the inputs' shapes do not match the grid, the width or each other.
        KeyError: when the target encoder's output lacks a block a level needs.
    """

    def __init__(
        self,
        params: HierarchicalParams,
        *,
        embed_dim: int,
        grid_size: tuple[int, int],
        encoder_depth: int | None = None,
        fused_attn: bool = False,
        views: int = 1,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.encoder_depth = encoder_depth
        self.views = int(views)
        # One cross-view level per form, above the spatial levels ("both": the ema level, then the views level).
        forms = ("ema", "views") if params.cross_view_target == "both" else (params.cross_view_target,)
        self.cross_view_forms: tuple[str, ...] = forms if params.cross_view_weight > 0 else ()
        extra = tuple(params.cross_view_weight for _ in self.cross_view_forms)
        self.num_levels = params.num_levels + len(extra)
        self.level_weights = params.resolved_level_weights + extra
        # the cross-view level's cell is the whole grid
        self.pool_sides = params.resolved_pool + tuple(max(self.grid_size) for _ in extra)
        self.layout = params.layout
        self.renorm_coarse = params.renorm_coarse
        self.feature_pool = params.feature_pool
        self.target_norm = params.target_norm
        self.gem_power = float(params.gem_power)
        self.fused_attn = fused_attn

        blocks = (params.level_blocks or (None,) * params.num_levels) + (None,) * len(extra)
        # Normalise negative block indices so the encoder is asked for, and keys, one index per block.
        self.level_sources: tuple[int | None, ...] = tuple(
            None if b is None else (b % encoder_depth if encoder_depth else b) for b in blocks
        )
        # data2vec-style targets: the final output averaged with the blocks before it.
        self.target_average = int(params.target_average)
        if self.target_average > 1 and (not encoder_depth or self.target_average > encoder_depth):
            raise ValueError(f"target_average={self.target_average} averages the encoder's last blocks, but its depth is {encoder_depth}")
        # the blocks averaged with the final output (which is block depth - 1, normalised)
        self.averaged_blocks: tuple[int, ...] = tuple(range(encoder_depth - self.target_average, encoder_depth - 1)) if encoder_depth else ()
        self.target_blocks: tuple[int, ...] = tuple(sorted({b for b in self.level_sources if b is not None} | set(self.averaged_blocks)))

        width = params.width
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(width, params.num_heads, mlp_ratio=params.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(params.depth)
        )
        for block in self.blocks:
            block.attn.fused_attn = fused_attn
        self.norm = norm_layer(width)
        self.heads = nn.ModuleList(nn.Linear(width, embed_dim) for _ in range(params.num_levels))
        hidden = params.cross_view_hidden * embed_dim
        self.cross_view_head = (
            nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
            if "ema" in self.cross_view_forms
            else None
        )

        # Fixed tables, rebuilt from the grid: not persistent, so checkpoints hold only weights.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, self.grid_size)[0], persistent=False)
        cells = torch.stack([cell_of_patch(self.grid_size, side) for side in self.pool_sides])
        self.register_buffer("cell_of_patch", cells, persistent=False)  # (L, N)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Shrink each residual branch's output by its depth so the residual stream's variance does
        # not grow with the number of blocks (as I-JEPA and BEiT do).
        with torch.no_grad():
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    # --- prediction -----------------------------------------------------------------------------

    def forward(self, context: Tensor, masks: Masks) -> list[Tensor]:
        """Predict every level's targets.

        Args:
            context: ``(B, Nc, D)`` context-encoder tokens of the patches ``masks.context``.
            masks: context indices ``(B, Nc)`` and target indices ``(B, M, Nt)``.

        Returns:
            ``num_levels`` tensors, each ``(B, M, Nt, D)``, shaped like :meth:`make_targets`; the
            cross-view level's is ``(B, M, 1, D)``, one prediction per image repeated per block.
        """
        self._check_masks(masks)
        if context.ndim != 3 or context.shape[-1] != self.embed_dim or context.shape[:2] != masks.context.shape:
            raise ValueError(
                f"context has shape {tuple(context.shape)} but masks.context has shape {tuple(masks.context.shape)} "
                f"and the encoder width is {self.embed_dim}: expected (B, Nc, D) = "
                f"{(*masks.context.shape, self.embed_dim)}"
            )
        B, Nc = masks.context.shape
        _, M, Nt = masks.targets.shape
        x = self.embed(context) + self.pos_embed[masks.context]  # (B, Nc, W)
        queries = self.mask_token + self.pos_embed[masks.targets]  # (B, M, Nt, W)
        W = queries.shape[-1]
        if self.layout == "joint":
            x = torch.cat([x, queries.flatten(1, 2).to(x.dtype)], dim=1)  # (B, Nc + M*Nt, W)
        else:
            x = x.unsqueeze(1).expand(B, M, Nc, W)
            x = torch.cat([x, queries.to(x.dtype)], dim=2).flatten(0, 1)  # (B*M, Nc + Nt, W)
        for block in self.blocks:
            x = block(x)
        # Only the mask tokens are predictions; slicing before the norm skips the context tokens.
        out = self.norm(x[:, Nc:].reshape(B, M, Nt, W))
        predictions = [head(out) for head in self.heads]
        if self.cross_view_head is not None:
            # one prediction per image, repeated per target block to keep the (B, M, T, D) contract
            predictions.append(self.cross_view_head(context.mean(dim=1)).view(B, 1, 1, -1).expand(B, M, 1, -1))
        if "views" in self.cross_view_forms:
            # "views": the gap between this view's pooled context and the other views', against a zero
            # target, so the gradient reaches both views (a batch without whole views has no gap).
            pooled = context.mean(dim=1)
            predictions.append((pooled - self._other_views(pooled)).view(B, 1, 1, -1).expand(B, M, 1, -1))
        return predictions

    # --- targets --------------------------------------------------------------------------------

    @torch.no_grad()
    def make_targets(self, target: EncoderOutput, masks: Masks) -> list[Tensor]:
        """Every level's targets from the target encoder's output; parameter-free, no gradient.

        Args:
            target: the target encoder's output over all patches (``tokens`` ``(B, N, D)`` in grid
                order, plus ``blocks`` for :attr:`target_blocks`).
            masks: target indices ``(B, M, Nt)``.

        Returns:
            ``num_levels`` tensors, each ``(B, M, Nt, D)``: level 0 the normalised token of each
            target patch, level ``l`` the mean normalised token of the cell holding it; the
            cross-view level's ``(B, M, 1, D)``, the mean normalised token of the other views.
        """
        self._check_masks(masks)
        B, M, Nt = masks.targets.shape
        flat = masks.targets.flatten(1)  # (B, M*Nt)
        normed: dict[int | str | None, Tensor] = {}
        targets = []
        for level in range(self.num_levels):
            cells = self._level_map(target, level, normed, averaged=True)  # (B, C_l, D)
            if cells.shape[0] != B:
                raise ValueError(
                    f"target tokens have batch size {cells.shape[0]} but masks.targets has shape {tuple(masks.targets.shape)}"
                )
            form = self._cross_view_form(level)
            if form is not None:
                if form == "views":  # the views' gap is driven to zero
                    targets.append(cells.new_zeros(B, M, 1, cells.shape[-1]))
                    continue
                pooled = _standardise(self._other_views(cells[:, 0]))
                targets.append(pooled.view(B, 1, 1, -1).expand(B, M, 1, -1))
                continue
            if self.target_norm != "token" and cells.shape[1] > 1:
                cells = _per_image_norm(cells, scale=self.target_norm == "instance").to(cells.dtype)
            index = flat if self.pool_sides[level] == 1 else self.cell_of_patch[level][flat]
            targets.append(_gather(cells, index).reshape(B, M, Nt, -1))
        return targets

    def _cross_view_form(self, level: int) -> str | None:
        """The cross-view form (``ema`` or ``views``) of ``level``, or ``None`` for a spatial level."""
        first = self.num_levels - len(self.cross_view_forms)
        return self.cross_view_forms[level - first] if level >= first else None

    def _other_views(self, pooled: Tensor) -> Tensor:
        """``(V * B, D)`` per-view features -> for each row, the mean of the same image's other views.

        Rows ``v * B + i`` are view ``v`` of image ``i``. A batch that does not hold ``V`` whole
        views (one image, as the memory estimate passes) keeps each row's own feature.
        """
        views = self.views
        if views < 2 or pooled.shape[0] % views:
            return pooled
        grouped = pooled.view(views, pooled.shape[0] // views, -1)
        others = (grouped.sum(dim=0, keepdim=True) - grouped) / (views - 1)
        return others.reshape_as(pooled)

    @torch.no_grad()
    def level_features(self, target: EncoderOutput) -> dict[str, Tensor]:
        """Pooled per-level features for evaluation.

        Level ``l``'s feature pools its own target map, the ``(B, C_l, D)`` cell features of
        ``2**l``-sided cells. With ``feature_pool="max"`` it is the per-channel maximum over cells:
        the strongest response of any region of that size. Level 0 is then max-pooled patch tokens
        and the coarsest level tends to the global mean, so the levels differ even when they read
        the same block; a plain mean would make them coincide (pooling is linear), which would
        make "hierarchy differentiation" trivially zero. ``feature_pool="gem"`` (generalised mean,
        Radenovic, Tolias, Chum, TPAMI 2018, https://arxiv.org/abs/1711.02512) lies between: the
        ``gem_power``-th root of the mean of the positive parts raised to ``gem_power``.

        Args:
            target: the target encoder's output over all patches, as for :meth:`make_targets`.

        Returns:
            ``{"level0": (B, D), "level1": (B, D), ...}`` float32.
        """
        normed: dict[int | str | None, Tensor] = {}
        features = {}
        for level in range(self.num_levels):
            cells = self._level_map(target, level, normed)
            features[f"level{level}"] = self._pool_cells(cells).float()
        return features

    def _pool_cells(self, cells: Tensor) -> Tensor:
        """``(B, C, D)`` cell features -> ``(B, D)`` by ``feature_pool``: max, mean or the generalised mean.

        One cell (a level whose cell is the whole grid, as the cross-view levels') is its own feature
        under every pooling: GeM does not clip it to its positive part.
        """
        if self.feature_pool == "max" or cells.shape[1] == 1:
            return cells.amax(dim=1)
        if self.feature_pool == "mean":
            return cells.mean(dim=1)
        return generalised_mean(cells, self.gem_power, dim=1)

    def _level_map(self, target: EncoderOutput, level: int, normed: dict[int | str | None, Tensor], averaged: bool = False) -> Tensor:
        """``(B, C_l, D)`` target features of level ``level``'s cells (``normed`` caches per source).

        ``averaged``: a level that reads the final output reads the mean of the last ``target_average``
        blocks instead (the training targets; evaluation reads the final output).
        """
        source: int | str | None = self.level_sources[level]
        if averaged and source is None and self.averaged_blocks:
            source = "averaged"
            if source not in normed:
                outputs = [self._source_tokens(target, block) for block in self.averaged_blocks] + [target.tokens]
                mean = torch.stack([F.layer_norm(t, (t.shape[-1],)) for t in outputs]).mean(dim=0)
                normed[source] = F.layer_norm(mean, (mean.shape[-1],))
        if source not in normed:
            tokens = self._source_tokens(target, source)
            # I-JEPA's target normalisation: per-token layer norm without learned parameters.
            normed[source] = F.layer_norm(tokens, (tokens.shape[-1],))
        cells = pool_cells(normed[source], self.grid_size, self.pool_sides[level])
        if self._cross_view_form(level) is not None:
            return cells  # its targets are normalised after the views are exchanged
        if self.renorm_coarse and self.pool_sides[level] > 1:
            cells = F.layer_norm(cells, (cells.shape[-1],))
        return cells

    def _source_tokens(self, target: EncoderOutput, source: int | None) -> Tensor:
        if source is None:
            tokens = target.tokens
            name = "target.tokens"
        else:
            tokens = target.blocks.get(source)
            if tokens is None and self.encoder_depth:
                tokens = target.blocks.get(source - self.encoder_depth)  # keyed by its negative alias
            if tokens is None:
                raise KeyError(
                    f"the target encoder's output has blocks {sorted(target.blocks)} but the hierarchical "
                    f"predictor needs block {source}: pass predictor.target_blocks {self.target_blocks} as return_blocks"
                )
            name = f"target.blocks[{source}]"
        if tokens.ndim != 3 or tokens.shape[1] != self.num_patches or tokens.shape[2] != self.embed_dim:
            raise ValueError(
                f"{name} has shape {tuple(tokens.shape)}; expected (B, {self.num_patches}, {self.embed_dim}): "
                f"all patches of the {self.grid_size[0]}x{self.grid_size[1]} grid, in grid order"
            )
        return tokens

    def _check_masks(self, masks: Masks) -> None:
        if masks.context.ndim != 2 or masks.targets.ndim != 3 or masks.context.shape[0] != masks.targets.shape[0]:
            raise ValueError(
                f"masks.context has shape {tuple(masks.context.shape)} and masks.targets "
                f"{tuple(masks.targets.shape)}; expected (B, Nc) and (B, M, Nt)"
            )


def build_hierarchical(params: HierarchicalParams, ctx: BuildContext) -> HierarchicalPredictor:
    """Build the predictor from its parameters and the encoder's sizes in ``ctx``.

    Raises:
        ConfigError: when the encoder's sizes are unknown or ``level_blocks`` names a block the
            encoder does not have.
    """
    missing = [name for name in ("embed_dim", "grid_size") if getattr(ctx, name) is None]
    if missing:
        raise ConfigError(
            f"the hierarchical predictor needs {', '.join(missing)} from the encoder, which is not known yet: "
            "build the encoder first"
        )
    problems = []
    for level, block in enumerate(params.level_blocks):
        if block is None:
            continue
        if ctx.depth is None:
            problems.append(f"{_WHERE}.level_blocks[{level}]: block {block} given but the encoder's depth is unknown")
        elif not -ctx.depth <= block < ctx.depth:
            problems.append(
                f"{_WHERE}.level_blocks[{level}]: block {block} does not exist in an encoder of depth {ctx.depth} "
                f"(allowed {-ctx.depth}..{ctx.depth - 1}, or null for the final output)"
            )
    if params.target_average > 1 and (ctx.depth is None or params.target_average > ctx.depth):
        depth = "unknown" if ctx.depth is None else ctx.depth
        problems.append(f"{_WHERE}.target_average: {params.target_average} blocks averaged, but the encoder's depth is {depth}")
    if problems:
        raise ConfigError(problems)
    fused = torch.device(ctx.device).type == "cuda" if params.fused_attn == "auto" else bool(params.fused_attn)
    return HierarchicalPredictor(
        params, embed_dim=ctx.embed_dim, grid_size=ctx.grid_size, encoder_depth=ctx.depth, fused_attn=fused,
        views=ctx.views,
    )


@hookimpl
def hjepa_register_predictors(register) -> None:  # noqa: ANN001 - the core's Register callback
    register(
        "hierarchical",
        build_hierarchical,
        params=HierarchicalParams,
        summary="N-level hierarchical I-JEPA predictor: patch tokens and pooled 2**l cells.",
    )
