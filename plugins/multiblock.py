"""Masker ``multiblock``: I-JEPA multi-block masking, vectorised over the batch.

Per batch, one target block size ``(h, w)`` and one context block size are drawn (so every sample's
targets have the same length ``Nt = h * w``, as in I-JEPA). Per sample, ``M`` target blocks and one
context block are placed on the patch grid; the context is the context block minus every target
patch, reduced to the batch's shortest context by a random subset (or, with ``fixed_shapes``, to
one length fixed by the configuration: see the last section). Everything is drawn from the
``torch.Generator`` passed in, with a bounded number of tensor operations per batch (no per-sample
Python loop, no unbounded retry loop), so its cost stays a small, fixed part of a step
(docs/performance.md, "GPU configuration").

It differs from the reference I-JEPA code (``src/masks/multiblock.py``) where that code is wrong:

* Every block position is reachable: a block's top row is drawn from ``0 .. H - h`` inclusive, so
  the last row and column of the grid are masked too.
* Contexts are cut to the batch's shortest length by a random subset, not by keeping the first
  indices in row-major order (which would drop the bottom of the grid first).
* There is no endless loop: a context placement is tried ``_CONTEXT_TRIES`` times, then a
  deterministic fallback (below) keeps both invariants: a context never overlaps a target, and it
  has at least ``min_context`` patches.
* Target blocks are placed so that every patch is a target about equally often (``placement:
  balanced``); the reference draws corners uniformly, which makes centre patches targets many
  times more often than corner ones (about 7x on 8x8, 20x on 14x14, counting any target). The
  price of ``balanced`` is fewer distinct positions per block size (blocks sit on a tiling of the
  grid with one random seam); ``placement: uniform`` gives every position, centre-heavy.

Fallbacks (each counted per sample in :attr:`MultiBlockMasker.fallbacks`):

1. The targets leave fewer than ``min_context`` patches uncovered (only on tiny grids or with a
   large ``min_context``): the last target blocks are moved onto the first one, one at a time,
   until enough patches are free. Target blocks may overlap each other anyway (as in I-JEPA), so
   this breaks no invariant, and it ends: one block is capped at ``N - min_context`` patches.
2. None of ``_CONTEXT_TRIES`` context block placements keeps ``min_context`` patches outside the
   targets: the context is every patch that is not a target.

Fixed shapes (``fixed_shapes: true``)
-------------------------------------

By default the shapes of the masks change from batch to batch: the target length ``Nt = h * w``
follows the block size drawn for the batch, and the context length follows the batch's shortest
context (8x8 grid, batches of 64: 13 context lengths and 3 target lengths over 500 batches;
14x14: 35 and 7). Every new shape costs a recompilation under ``torch.compile`` and a new CUDA
graph. With ``fixed_shapes`` both lengths are a function of the parameters and the grid only,
fixed when the masker is built, so ``context`` is always ``(B, K)`` and ``targets`` ``(B, M, Nt)``:

* Target blocks keep one area ``Nt`` but may take every shape ``h x w = Nt`` that fits the grid
  and whose ``h / w`` lies in ``target_aspect``; one of them is drawn per batch, as the block size
  is by default. ``Nt`` is the whole number of patches in ``target_scale * N`` that has the most
  such shapes (aspect variety at no cost in shapes), the nearest to the range's middle on a tie:
  3x4 or 4x3 (12 patches, 19% of the grid) on 8x8 and 5x6 or 6x5 (30, 15%) on 14x14 with the
  defaults. Where no whole area has a shape in the aspect range, the one block of the middle
  scale and the middle aspect (geometric) is used.
* The context length ``K`` is the 5th percentile of the context sizes the masker gives single
  samples with those blocks (every sample's count before any cut), estimated once, when the
  masker is built, from 4,096 samples (stratified over the per-batch draws) placed with a private
  generator of a fixed seed: the same parameters and grid always give the same ``K`` (16 on 8x8,
  65 on 14x14 with the defaults), never below ``min_context``. Each sample's context is a random subset of ``K`` of its context
  patches, so no part of the grid is favoured. By default a batch is cut to its shortest context
  instead, whose length changes from batch to batch: 17 patches on average on 8x8 and 52 on
  14x14 at batch 64 (measured).
* Where a sample has fewer than ``K`` context patches, the fallbacks above run with ``K`` in place
  of ``min_context`` and are counted the same way: a context block placement is valid only with
  ``K`` patches outside the targets (about one first try in twenty is redrawn); when none of the
  tries is valid (1.9% of samples on 8x8, 0.5% on 14x14, measured), the context is a random ``K``
  of every non-target patch, some of them outside the context block; and target blocks are
  stacked where they leave fewer than ``K`` patches free. ``K`` is at most ``N - Nt``, so stacking
  always frees enough. A context therefore never overlaps a target and has exactly ``K`` patches.

The batch size is the one dimension left to the caller (the trainer's loader gives full batches
only, so it does not change during a run either).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, Masks
from hjepa_kit.errors import ConfigError
from hjepa_kit.hookspecs import Register
from hjepa_kit.params import param

__all__ = ["MultiBlockParams", "MultiBlockMasker", "build_multiblock"]

#: Context block placements drawn per sample before falling back to "every non-target patch".
_CONTEXT_TRIES = 8

#: ``fixed_shapes``: the context length is this quantile of single samples' context sizes ...
_FIXED_CONTEXT_QUANTILE = 0.05
#: ... estimated from about this many samples, spread evenly over the target shapes and
#: ``_ESTIMATE_STRATA`` context block draws (stratified, not random: the per-batch draws vary
#: little in few batches) ...
_ESTIMATE_SAMPLES = 4096
_ESTIMATE_STRATA = 16
#: ... and placed with a private generator of this seed: the length depends on the parameters only.
_ESTIMATE_SEED = 0


@attrs.frozen(kw_only=True)
class MultiBlockParams:
    """Parameters of the ``multiblock`` masker (counts, scales and aspects default to I-JEPA's)."""

    num_targets: int = param(4, help="Number M of target blocks per image.", ge=1)
    target_scale: tuple[float, float] = param(
        (0.15, 0.2), help="Range of a target block's area, as a fraction of the patch grid; drawn once per batch.", gt=0, le=1
    )
    target_aspect: tuple[float, float] = param(
        (0.75, 1.5), help="Range of a target block's height / width ratio; drawn once per batch.", gt=0
    )
    context_scale: tuple[float, float] = param(
        (0.85, 1.0), help="Range of the context block's area, as a fraction of the patch grid, before targets are removed.", gt=0, le=1
    )
    context_aspect: tuple[float, float] = param(
        (1.0, 1.0), help="Range of the context block's height / width ratio.", gt=0
    )
    min_context: int = param(
        4,
        help=(
            "Fewest context patches a sample may have; must be below the number of patches. 4 suits grids "
            "from 4x4 to 14x14 (I-JEPA's 224/16 run uses 10, which rarely binds there)."
        ),
        ge=1,
    )
    placement: str = param(
        "balanced",
        help=(
            "How blocks are placed: 'balanced' makes every patch about equally often a target (a block of a "
            "random tiling of the grid); 'uniform' draws every top-left corner equally often, so centre "
            "patches are targets far more often than edge ones."
        ),
        choices=("balanced", "uniform"),
    )
    fixed_shapes: bool = param(
        False,
        help=(
            "Give every batch the same mask shapes, for torch.compile and CUDA graphs: target blocks of one "
            "area (any of its shapes within target_aspect, drawn per batch) and contexts of one length K, "
            "both fixed by the parameters and the grid (K: the 5th percentile of per-sample context sizes); "
            "false: one block size per batch and contexts cut to the batch's shortest, so shapes vary."
        ),
    )

    def __attrs_post_init__(self) -> None:
        for name in ("target_scale", "target_aspect", "context_scale", "context_aspect"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: the range must be (low, high) with low <= high, got ({low}, {high})")


class MultiBlockMasker:
    """Draws I-JEPA multi-block masks over a ``(rows, cols)`` patch grid.

    Attributes:
        params: the parameters.
        grid_size: ``(H, W)`` rows and columns of the patch grid; indices are ``r * W + c``.
        fallbacks: how many samples needed each fallback since construction (``"context"``: the
            context became every non-target patch; ``"targets"``: target blocks were stacked).
        target_shapes: with ``fixed_shapes``, the ``(h, w)`` target block shapes, all of one area,
            one of which is drawn per batch; None otherwise.
        context_length: with ``fixed_shapes``, the context length ``K`` of every sample; None otherwise.
    """

    def __init__(self, params: MultiBlockParams, grid_size: tuple[int, int]) -> None:
        rows, cols = grid_size
        num_patches = rows * cols
        if params.min_context >= num_patches:
            raise ConfigError(
                f"multiblock: min_context {params.min_context} leaves no patch for the targets on a "
                f"{rows}x{cols} patch grid ({num_patches} patches); use a value below {num_patches}"
            )
        self.params = params
        self.grid_size = (rows, cols)
        self.fallbacks = {"context": 0, "targets": 0}
        self.target_shapes: tuple[tuple[int, int], ...] | None = None
        self.context_length: int | None = None
        self.static_shapes = params.fixed_shapes  # read by the trainer: compile for these shapes alone
        if params.fixed_shapes:
            self.target_shapes = self._fixed_target_shapes()
            self.context_length = self._fixed_context_length()

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        """Masks for ``batch_size`` samples.

        Returns:
            :class:`Masks` with ``context`` ``(B, Nc)`` (sorted, row-major) and ``targets``
            ``(B, M, Nt)`` (each block's patches in row-major order), both int64 on the CPU.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        p = self.params
        rows, cols = self.grid_size
        num_patches = rows * cols
        if self.target_shapes is None:
            # One size per batch for each kind of block, so that every sample's targets have equal length.
            target_h, target_w = self._block_size(p.target_scale, p.target_aspect, num_patches - p.min_context, generator)
            min_free = p.min_context
        else:
            shape_index = int(torch.randint(0, len(self.target_shapes), (1,), generator=generator))
            target_h, target_w = self.target_shapes[shape_index]
            min_free = self.context_length
        context_size = self._block_size(p.context_scale, p.context_aspect, num_patches, generator)
        context, target_top, target_left = self._draw(batch_size, (target_h, target_w), context_size, min_free, generator)

        # A random subset of each sample's context, so truncation favours no part of the grid: every
        # sample is cut to the fixed length, or by default to the batch's shortest context.
        context_len = self.context_length if self.context_length is not None else int(context.sum(1).min())
        keys = torch.rand(batch_size, num_patches, generator=generator).masked_fill_(~context, 2.0)
        context_indices = keys.argsort(1)[:, :context_len].sort(1).values

        block_rows = target_top[..., None] + torch.arange(target_h)  # (B, M, h)
        block_cols = target_left[..., None] + torch.arange(target_w)  # (B, M, w)
        target_indices = (block_rows[..., :, None] * cols + block_cols[..., None, :]).flatten(2)
        return Masks(context=context_indices, targets=target_indices)

    def _draw(self, batch_size: int, target_size: tuple[int, int], context_size: tuple[int, int], min_free: int,
              generator: torch.Generator, *, count: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Place the ``(h, w)`` target blocks and context block of ``batch_size`` samples.

        ``min_free`` is the fewest context patches a sample may have (``min_context``, or ``K`` with
        fixed shapes); the fallbacks are counted in :attr:`fallbacks` when ``count``.

        Returns:
            The ``(B, N)`` boolean context masks (never on a target, at least ``min_free`` patches
            each) and the ``(B, M)`` top rows and left columns of the target blocks.
        """
        p = self.params
        rows, cols = self.grid_size
        target_h, target_w = target_size
        context_h, context_w = context_size

        shape = (batch_size, p.num_targets)
        target_top = self._place(rows, target_h, shape, generator)
        target_left = self._place(cols, target_w, shape, generator)
        free = ~_block_masks(target_top, target_left, target_h, target_w, self.grid_size).any(1)  # (B, N)
        free = self._stack_targets_where_needed(free, target_top, target_left, target_h, target_w, min_free, count)

        tries = (batch_size, _CONTEXT_TRIES)
        context_top = self._place(rows, context_h, tries, generator)
        context_left = self._place(cols, context_w, tries, generator)
        candidates = _block_masks(context_top, context_left, context_h, context_w, self.grid_size) & free[:, None]
        valid = candidates.sum(-1) >= min_free  # (B, tries)
        # The first valid try of independent draws is a draw conditioned on being valid.
        first = valid.to(torch.uint8).argmax(1)
        context = candidates[torch.arange(batch_size), first]
        found = valid.any(1)
        context = torch.where(found[:, None], context, free)
        if count:
            self.fallbacks["context"] += int((~found).sum())
        return context, target_top, target_left

    def _fixed_target_shapes(self) -> tuple[tuple[int, int], ...]:
        """``fixed_shapes``: the target block shapes, all of one area (see the module docstring)."""
        p = self.params
        rows, cols = self.grid_size
        num_patches = rows * cols
        max_area = num_patches - p.min_context
        low, high = p.target_scale[0] * num_patches, p.target_scale[1] * num_patches
        middle = (low + high) / 2
        best: tuple[tuple[int, float, int], tuple[tuple[int, int], ...]] | None = None
        for area in range(max(math.ceil(low - 1e-9), 1), min(math.floor(high + 1e-9), max_area) + 1):
            shapes = tuple(
                (h, area // h)
                for h in range(1, rows + 1)
                if area % h == 0 and area // h <= cols
                and p.target_aspect[0] - 1e-9 <= h / (area // h) <= p.target_aspect[1] + 1e-9
            )
            key = (-len(shapes), abs(area - middle), area)
            if shapes and (best is None or key < best[0]):
                best = (key, shapes)
        if best is not None:
            return best[1]
        ratio = math.sqrt(p.target_aspect[0] * p.target_aspect[1])
        return (self._size(middle, ratio, max_area),)

    def _fixed_context_length(self) -> int:
        """``fixed_shapes``: the context length ``K`` (see the module docstring)."""
        assert self.target_shapes is not None
        p = self.params
        rows, cols = self.grid_size
        target_area = self.target_shapes[0][0] * self.target_shapes[0][1]
        generator = torch.Generator().manual_seed(_ESTIMATE_SEED)
        batch_size = -(-_ESTIMATE_SAMPLES // (_ESTIMATE_STRATA * len(self.target_shapes)))
        sizes = []
        for target_size in self.target_shapes:
            for i in range(_ESTIMATE_STRATA):
                # Context block draws at evenly spaced quantiles of scale and aspect (a rank-1 lattice).
                u_scale, u_aspect = (i + 0.5) / _ESTIMATE_STRATA, ((7 * i) % _ESTIMATE_STRATA + 0.5) / _ESTIMATE_STRATA
                context_size = self._block_of(p.context_scale, p.context_aspect, u_scale, u_aspect, rows * cols)
                context, _, _ = self._draw(batch_size, target_size, context_size, p.min_context, generator, count=False)
                sizes.append(context.sum(1))
        ordered = torch.cat(sizes).sort().values
        length = int(ordered[int(_FIXED_CONTEXT_QUANTILE * len(ordered))])
        # At most N - Nt: stacking every target onto one block then always frees K patches.
        return min(max(length, p.min_context), rows * cols - target_area)

    def _block_size(
        self, scale: tuple[float, float], aspect: tuple[float, float], max_area: int, generator: torch.Generator
    ) -> tuple[int, int]:
        """Draw one block ``(h, w)`` with area ~ ``scale * N`` and ``h / w`` ~ ``aspect``, at most ``max_area``."""
        u_scale, u_aspect = torch.rand(2, generator=generator).tolist()
        return self._block_of(scale, aspect, u_scale, u_aspect, max_area)

    def _block_of(
        self, scale: tuple[float, float], aspect: tuple[float, float], u_scale: float, u_aspect: float, max_area: int
    ) -> tuple[int, int]:
        """The block ``(h, w)`` at quantiles ``u_scale``, ``u_aspect`` in [0, 1] of the scale and aspect ranges."""
        rows, cols = self.grid_size
        area = (scale[0] + u_scale * (scale[1] - scale[0])) * rows * cols
        ratio = aspect[0] + u_aspect * (aspect[1] - aspect[0])
        return self._size(area, ratio, max_area)

    def _size(self, area: float, ratio: float, max_area: int) -> tuple[int, int]:
        """The whole-patch block ``(h, w)`` nearest to ``area`` and ``h / w = ratio``, at most ``max_area``."""
        rows, cols = self.grid_size
        h = min(max(round(math.sqrt(area * ratio)), 1), rows)
        w = min(max(round(math.sqrt(area / ratio)), 1), cols)
        while h * w > max_area:  # only on tiny grids: keep room for min_context
            if h >= w:
                h -= 1
            else:
                w -= 1
        return h, w

    def _place(self, length: int, size: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """First row (or column) of blocks of ``size`` cells on an axis of ``length``: int64 ``shape``.

        ``balanced`` picks one block of a tiling of the axis by ``k = ceil(length / size)`` blocks
        whose ``k * size - length`` overlapping cells all sit at one random seam. Every cell is then
        covered with probability at least ``1 / k`` (the most possible: cells ``0, size, 2 * size ...``
        can never share a block) and at most ``1 / (k - 1)``. The cost: a block of one size has only
        ``2k - 1`` possible positions (``k`` when it divides the axis).
        """
        if self.params.placement == "uniform":
            return torch.randint(0, length - size + 1, shape, generator=generator)
        blocks = -(-length // size)
        if blocks == 1:
            return torch.zeros(shape, dtype=torch.int64)
        overlap = blocks * size - length
        block = torch.randint(0, blocks, shape, generator=generator)
        seam = torch.randint(1, blocks, shape, generator=generator)
        return block * size - overlap * (block >= seam).long()

    def _stack_targets_where_needed(
        self, free: Tensor, top: Tensor, left: Tensor, h: int, w: int, min_free: int, count: bool = True
    ) -> Tensor:
        """Fallback 1: move the last targets onto the first where fewer than ``min_free`` patches are free.

        Edits ``top`` and ``left`` ``(B, M)`` in place; returns the new ``(B, N)`` free mask.
        """
        num_targets = top.shape[1]
        stacked = torch.zeros(top.shape[0], dtype=torch.bool)
        for moved in range(num_targets - 1, 0, -1):
            short = free.sum(1) < min_free
            if not bool(short.any()):
                break
            stacked |= short
            top[short, moved] = top[short, 0]
            left[short, moved] = left[short, 0]
            free = ~_block_masks(top, left, h, w, self.grid_size).any(1)
        if count:
            self.fallbacks["targets"] += int(stacked.sum())
        return free


def _block_masks(top: Tensor, left: Tensor, h: int, w: int, grid_size: tuple[int, int]) -> Tensor:
    """Boolean ``(..., N)`` masks of ``h x w`` blocks whose top-left corners are ``top``, ``left`` ``(...)``."""
    rows, cols = grid_size
    r = torch.arange(rows)
    c = torch.arange(cols)
    in_rows = (r >= top[..., None]) & (r < top[..., None] + h)  # (..., H)
    in_cols = (c >= left[..., None]) & (c < left[..., None] + w)  # (..., W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).flatten(-2)


def build_multiblock(params: MultiBlockParams, ctx: BuildContext) -> MultiBlockMasker:
    """Factory of the ``multiblock`` masker; the grid comes from the encoder (``ctx.grid_size``)."""
    if ctx.grid_size is None:
        raise ConfigError("the multiblock masker needs the encoder's patch grid (ctx.grid_size); build the encoder first")
    return MultiBlockMasker(params, ctx.grid_size)


@hookimpl
def hjepa_register_maskers(register: Register) -> None:
    register(
        "multiblock",
        build_multiblock,
        params=MultiBlockParams,
        summary="I-JEPA multi-block masking: M target blocks, a context block without them",
    )
