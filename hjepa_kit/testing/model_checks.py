"""The contract checks of a model's parts: encoders, maskers, predictors and losses.

Each check takes the built component, the build context and the options of
:func:`~hjepa_kit.testing.check_component`, fails with an ``AssertionError`` that names the
component and its plugin (:mod:`hjepa_kit.testing.failure`), and returns the component.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..contracts import BuildContext, EncoderOutput, LossOutput, Masks, call_loss
from .failure import _Check, _shape
from .standins import _ProbeEncoder, probe_masks


def _check_encoder(check: _Check, encoder: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    check.that(isinstance(encoder, nn.Module), f"the factory returned {type(encoder).__name__}, not an nn.Module")
    for attribute in ("embed_dim", "patch_size", "depth"):
        value = getattr(encoder, attribute, None)
        check.that(isinstance(value, int) and value >= 1, f"{attribute} must be a positive int, got {value!r}")
    grid = getattr(encoder, "grid_size", None)
    check.that(
        isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(g, int) and g >= 1 for g in grid),
        f"grid_size must be (rows, cols) of positive ints, got {grid!r}",
    )
    batch, num_patches, width = 2, grid[0] * grid[1], encoder.embed_dim
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, ctx.in_chans, ctx.image_size, ctx.image_size, generator=generator)
    out = check.call("encoding all patches", encoder, images)
    check.that(isinstance(out, EncoderOutput), f"it returned {type(out).__name__}, not an EncoderOutput")
    check.that(
        tuple(out.tokens.shape) == (batch, num_patches, width),
        f"encoding all patches gave tokens of shape {_shape(out.tokens)}, expected (B, N, D) = {(batch, num_patches, width)}",
    )
    keep = max(1, num_patches // 2)
    indices = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)[:, :keep]
    out = check.call("encoding indexed patches", encoder, images, indices=indices, return_blocks=(0, -1))
    check.that(
        tuple(out.tokens.shape) == (batch, keep, width),
        f"encoding {keep} indexed patches gave tokens of shape {_shape(out.tokens)}, expected (B, K, D) = {(batch, keep, width)}",
    )
    for key in (0, -1):
        check.that(key in out.blocks, f"return_blocks=(0, -1) returned blocks {sorted(out.blocks)}, missing {key}")
        check.that(
            tuple(out.blocks[key].shape) == (batch, keep, width),
            f"block {key} has shape {_shape(out.blocks[key])}, expected (B, K, D) = {(batch, keep, width)}",
        )
    check.that(bool(torch.isfinite(out.tokens).all()), "the tokens contain NaN or Inf")
    encoder.zero_grad(set_to_none=True)
    check.call("back-propagating through the tokens", out.tokens.float().square().mean().backward)
    trained = [n for n, p in encoder.named_parameters() if p.grad is not None]
    check.that(bool(trained), "no parameter received a gradient: the context encoder must be trainable")
    encoder.zero_grad(set_to_none=True)
    check.call("copy.deepcopy (the core copies the encoder for the EMA target)", copy.deepcopy, encoder)
    return encoder


def _check_masker(check: _Check, masker: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    check.that(callable(masker), f"the factory returned {type(masker).__name__}, which is not callable")
    num_patches = ctx.num_patches
    for batch in (1, 3):
        torch.manual_seed(1)
        masks = check.call(f"drawing masks for {batch} samples", masker, batch, torch.Generator().manual_seed(7))
        check.that(isinstance(masks, Masks), f"it returned {type(masks).__name__}, not Masks")
        context, targets = masks.context, masks.targets
        check.that(
            isinstance(context, Tensor) and context.dtype == torch.int64 and context.ndim == 2 and context.shape[0] == batch,
            f"context must be int64 (B, Nc) with B = {batch}, got {getattr(context, 'dtype', None)} {_shape(context)}",
        )
        check.that(
            isinstance(targets, Tensor) and targets.dtype == torch.int64 and targets.ndim == 3 and targets.shape[0] == batch,
            f"targets must be int64 (B, M, Nt) with B = {batch}, got {getattr(targets, 'dtype', None)} {_shape(targets)}",
        )
        check.that(context.shape[1] >= 1 and targets.shape[1] >= 1 and targets.shape[2] >= 1,
                   f"empty masks: context {_shape(context)}, targets {_shape(targets)}")
        for label, index in (("context", context), ("targets", targets)):
            low, high = int(index.min()), int(index.max())
            check.that(0 <= low and high < num_patches,
                       f"{label} indices span {low}..{high}, outside the grid's 0..{num_patches - 1} ({ctx.grid_size[0]}x{ctx.grid_size[1]})")
        for sample in range(batch):
            seen = context[sample]
            check.that(seen.unique().numel() == seen.numel(), f"sample {sample}'s context repeats a patch: {seen.tolist()}")
            overlap = sorted(set(seen.tolist()) & set(targets[sample].flatten().tolist()))
            check.that(not overlap, f"context and targets overlap in sample {sample} (patches {overlap})")
        torch.manual_seed(2)  # a masker that uses the global RNG draws differently now
        again = check.call("drawing masks again", masker, batch, torch.Generator().manual_seed(7))
        check.that(
            torch.equal(again.context, context) and torch.equal(again.targets, targets),
            "two draws with equally seeded generators differ: draw only from the torch.Generator passed in",
        )
    return masker


def _check_predictor(check: _Check, predictor: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    check.that(isinstance(predictor, nn.Module), f"the factory returned {type(predictor).__name__}, not an nn.Module")
    levels = getattr(predictor, "num_levels", None)
    weights = getattr(predictor, "level_weights", None)
    blocks = getattr(predictor, "target_blocks", None)
    check.that(isinstance(levels, int) and levels >= 1, f"num_levels must be a positive int, got {levels!r}")
    check.that(
        isinstance(weights, (tuple, list)) and len(weights) == levels,
        f"level_weights must have one weight per level (num_levels = {levels}), got {weights!r}",
    )
    check.that(
        isinstance(blocks, (tuple, list)) and all(isinstance(b, int) for b in blocks),
        f"target_blocks must be a tuple of block indices, got {blocks!r}",
    )
    depth = ctx.depth or 1
    check.that(all(-depth <= b < depth for b in blocks), f"target_blocks {tuple(blocks)} name blocks outside the encoder's depth {depth}")
    for method in ("make_targets", "level_features"):
        check.that(callable(getattr(predictor, method, None)), f"it has no method {method}")
    batch = 2 * max(ctx.views, 1)  # with data.views, a batch holds every view of each image
    grid = ctx.grid_size
    embed_dim = ctx.embed_dim
    encoder = options["encoder"]
    if encoder is None:
        encoder = _ProbeEncoder(image_size=ctx.image_size, patch_size=ctx.patch_size, embed_dim=embed_dim, depth=depth)
    masks = probe_masks(batch, grid)
    images = torch.randn(batch, 3, ctx.image_size, ctx.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = encoder(images, return_blocks=tuple(blocks))
    targets = check.call("make_targets", predictor.make_targets, target, masks)
    check.that(isinstance(targets, (list, tuple)) and len(targets) == levels,
               f"make_targets returned {len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__} items, expected num_levels = {levels}")
    context = encoder(images, indices=masks.context).tokens.detach().requires_grad_(True)
    predictions = check.call("forward (predicting from the context)", predictor, context, masks)
    check.that(isinstance(predictions, (list, tuple)) and len(predictions) == levels,
               f"forward returned {len(predictions) if isinstance(predictions, (list, tuple)) else type(predictions).__name__} items, expected num_levels = {levels}")
    num_targets = masks.targets.shape[1]
    for level, (p, t) in enumerate(zip(predictions, targets)):
        check.that(isinstance(t, Tensor) and t.ndim == 4 and t.shape[:2] == (batch, num_targets),
                   f"level {level} targets have shape {_shape(t)}, expected (B, M, T, D) with B = {batch}, M = {num_targets}")
        check.that(isinstance(p, Tensor) and p.shape == t.shape,
                   f"level {level} predictions have shape {_shape(p)} but its targets {_shape(t)}")
        check.that(not t.requires_grad, f"level {level} targets require grad: make_targets must not track gradients")
    loss = sum(p.float().square().mean() for p in predictions)
    check.call("back-propagating through the predictions", loss.backward)
    check.that(context.grad is not None, "no gradient reached the context tokens: the predictions must depend on them")
    with torch.no_grad():
        features = check.call("level_features", predictor.level_features, target)
    check.that(isinstance(features, Mapping), f"level_features returned {type(features).__name__}, not a mapping")
    for key, value in features.items():
        check.that(isinstance(value, Tensor) and value.ndim == 2 and value.shape[0] == batch,
                   f"level_features[{key!r}] has shape {_shape(value)}, expected (B, D_l) with B = {batch}")
    return predictor


def _check_loss(check: _Check, loss_fn: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    check.that(callable(loss_fn), f"the factory returned {type(loss_fn).__name__}, which is not callable")
    generator = torch.Generator().manual_seed(0)
    batch, num_targets, target_len, context_len = 4, 2, 4, 12
    levels = ctx.num_levels or 1
    dim = ctx.embed_dim or 16
    predictions = [torch.randn(batch, num_targets, target_len, dim, generator=generator).requires_grad_(True) for _ in range(levels)]
    targets = [torch.randn(batch, num_targets, target_len, dim, generator=generator) for _ in range(levels)]
    context = torch.randn(batch, context_len, dim, generator=generator).requires_grad_(True)
    # Grid positions of the context tokens, for a loss that reads them (uses_context_indices).
    patches = ctx.num_patches if ctx.grid_size is not None else context_len + num_targets * target_len
    masks = Masks(context=torch.randint(0, patches, (batch, context_len), generator=generator),
                  targets=torch.zeros(batch, num_targets, target_len, dtype=torch.long))
    out = check.call("computing the loss", call_loss, loss_fn, predictions, targets, context, masks)
    check.that(isinstance(out, LossOutput), f"it returned {type(out).__name__}, not a LossOutput")
    check.that(isinstance(out.total, Tensor) and out.total.ndim == 0, f"total must be a scalar tensor, got {_shape(out.total)}")
    check.that(bool(torch.isfinite(out.total.detach())), f"total is not finite: {float(out.total.detach())}")
    check.that(isinstance(out.terms, Mapping), f"terms must be a mapping of names to scalars, got {type(out.terms).__name__}")
    for key, value in out.terms.items():
        check.that(isinstance(key, str) and isinstance(value, Tensor) and value.numel() == 1,
                   f"term {key!r} must be a named scalar tensor, got {_shape(value)}")
    check.call("back-propagating the total", out.total.backward)
    check.that(all(p.grad is not None for p in predictions), "the total does not depend on every level's predictions")
    return loss_fn


#: Kind -> its check.
MODEL_CHECKS = {
    "encoder": _check_encoder,
    "masker": _check_masker,
    "predictor": _check_predictor,
    "loss": _check_loss,
}
