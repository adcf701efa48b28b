"""Test helpers for plugin authors: contract checks and plugins registered for one test.

Use them from your plugin's tests::

    # conftest.py
    pytest_plugins = ["hjepa_kit.testing"]      # makes the hjepa_plugins fixture available

    # test_my_plugin.py
    import my_plugin
    from hjepa_kit.testing import check_component, registry_with

    def test_my_encoder_meets_the_contract():
        check_component("encoder", "my_encoder", registry=registry_with(my_plugin))

    def test_the_command_line_lists_it(hjepa_plugins, capsys):
        hjepa_plugins.add(my_plugin)             # as if installed, for this test only
        from hjepa_kit.cli import main
        assert main(["plugins", "--kind", "encoder"]) == 0
        assert "my_encoder" in capsys.readouterr().out

:func:`check_component` builds a registered component with its default parameters (or the ones
given) on a tiny :class:`~hjepa_kit.contracts.BuildContext` and checks, on small random inputs,
what the core relies on for its kind (see :mod:`hjepa_kit.contracts`). A failure is an
``AssertionError`` naming the component, the plugin that registered it and what is wrong.

This module is part of the core: it imports no built-in plugin. Components that need an encoder's
sizes (maskers, predictors, losses) are checked against a small stand-in encoder defined here,
unless you name a registered one with ``encoder=``.
"""

from __future__ import annotations

import copy
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest
import torch
from torch import Tensor, nn

from . import hookspecs
from .contracts import KINDS, BuildContext, EncoderOutput, EvalResult, FeatureSet, ImageData, LossOutput, Masks
from .registry import ENTRY_POINT_GROUP, Component, Registry, hook_problems

__all__ = [
    "check_component",
    "components",
    "registry_with",
    "tiny_context",
    "probe_encoder",
    "probe_masks",
    "random_feature_sets",
    "PluginSandbox",
    "hjepa_plugins",
]

#: Side of the images components are checked on (32 pixels: a 2x2 grid for 16-pixel patches,
#: 8x8 for 4-pixel ones).
IMAGE_SIZE = 32

#: Lifecycle hooks a callback may implement (registration hooks are for plugins, not callbacks).
LIFECYCLE_HOOKS = (
    "hjepa_fit_start",
    "hjepa_step_end",
    "hjepa_epoch_end",
    "hjepa_checkpoint_saved",
    "hjepa_evaluation_end",
    "hjepa_fit_end",
)


# --- registries -------------------------------------------------------------------------------


def registry_with(*plugins: Any, entry_points: bool = True, strict: bool = True) -> Registry:
    """A fresh registry holding the installed plugins and ``plugins``.

    A plugin that the installed entry points already registered (your own package after
    ``pip install -e .``) is not added a second time, so the same test works before and after
    installing.

    Args:
        plugins: plugin modules or objects with ``@hookimpl`` functions.
        entry_points: also load the installed plugins of the ``hjepa_kit`` entry-point group
            (the built-ins among them).
        strict: a third-party plugin that fails to import, or a component registered without a
            summary or a parameter's help text, is an error, not a warning.

    Returns:
        A :class:`~hjepa_kit.registry.Registry`; pass it to :func:`check_component` or to
        ``Trainer(config, registry=...)``.
    """
    registry = Registry(entry_points=entry_points, strict=strict)
    for plugin in plugins:
        if not registry.pm.is_registered(plugin):
            registry.add_plugin(plugin)
    return registry


def components(registry: Registry | None = None, *, plugin: str | None = None, distribution: str | None = None) -> list[tuple[str, str]]:
    """``(kind, name)`` of every registered component, for ``pytest.mark.parametrize``.

    Args:
        registry: the registry to list (default: a fresh one with the installed plugins).
        plugin: keep only components registered by the plugin of this name (an entry-point name,
            or a module's ``__name__`` for plugins added in-process).
        distribution: keep only components shipped by this distribution (``hjepa-kit`` for the
            built-ins).
    """
    registry = registry if registry is not None else Registry()
    found = []
    for kind in KINDS:
        for name in registry.names(kind):
            component = registry.components[kind][name]
            if plugin is not None and component.plugin != plugin:
                continue
            if distribution is not None and _canonical(component.distribution) != _canonical(distribution):
                continue
            found.append((kind, name))
    return found


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


# --- stand-ins for the components a check needs -----------------------------------------------


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
) -> dict[str, FeatureSet]:
    """Small labelled features with some class structure, one :class:`FeatureSet` per name."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 2.0
    sets = {}
    for name in names:
        def split(count: int) -> tuple[Tensor, Tensor]:
            labels = torch.arange(count) % num_classes
            features = centres[labels] + torch.randn(count, dim, generator=generator)
            return features.float(), labels.long()

        train, train_labels = split(num_train)
        test, test_labels = split(num_test)
        sets[name] = FeatureSet(train=train, train_labels=train_labels, test=test, test_labels=test_labels, num_classes=num_classes)
    return sets


# --- the contract check -----------------------------------------------------------------------


class _Check:
    """Failure messages that name the component and its plugin."""

    def __init__(self, kind: str, name: str, component: Component) -> None:
        self.kind = kind
        self.label = f"{kind} '{name}' from plugin {component.origin}"

    def fail(self, problem: str) -> None:
        raise AssertionError(f"{self.label} does not meet the {self.kind} contract: {problem}")

    def that(self, condition: bool, problem: str) -> None:
        if not condition:
            self.fail(problem)

    def call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{self.label}: {what} raised {type(exc).__name__}: {exc}") from exc


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_component(
    kind: str,
    name: str,
    *,
    registry: Registry | None = None,
    params: Mapping[str, Any] | Any = None,
    ctx: BuildContext | None = None,
    encoder: str | None = None,
    load_splits: Sequence[str] | None = None,
) -> Any:
    """Build component ``name`` of ``kind`` and assert that it meets its kind's contract.

    What is checked, per kind:

    - **encoder**: an ``nn.Module`` with ``embed_dim``, ``patch_size``, ``grid_size`` and
      ``depth``; all patches encode to ``(B, N, D)``; given ``(B, K)`` indices only those patches
      come out, ``(B, K, D)``; ``return_blocks`` returns ``(B, K, D)`` outputs keyed as asked
      (``0`` and ``-1``); gradients reach its parameters; ``copy.deepcopy`` works (the core copies
      it for the EMA target encoder).
    - **masker**: returns :class:`~hjepa_kit.contracts.Masks` with int64 context ``(B, Nc)`` and
      targets ``(B, M, Nt)``, indices on the grid, no context patch among the same sample's
      targets, no repeated context patch; the same seed gives the same masks whatever the global
      RNG state (it draws from the ``torch.Generator`` only).
    - **predictor**: an ``nn.Module`` with ``num_levels == len(level_weights)`` and
      ``target_blocks``; ``make_targets`` and ``forward`` return one tensor per level, of equal
      shapes ``(B, M, T_l, D)``; ``level_features`` returns ``(B, D_l)`` per level; gradients flow.
    - **loss**: returns :class:`~hjepa_kit.contracts.LossOutput` whose ``total`` is a finite
      scalar, whose ``terms`` are named scalars, and whose backward reaches the predictions.
    - **evaluator**: on small random labelled features (``encoder``, ``level0``, ``level1``)
      returns a non-empty mapping of names to numbers, or an :class:`~hjepa_kit.contracts.EvalResult`.
    - **dataset**: ``splits``, ``image_size``, ``num_classes``; each split in ``load_splits``
      loads as ``(N, C, H, W)`` uint8 with ``(N,)`` int64 labels in range; where offered,
      ``estimate_bytes`` gives a byte count and ``open_stream`` the same images one by one.
    - **callback**: implements at least one lifecycle hook, only known hooks with the spec's
      argument names, and survives a simulated run (fit start, a step, a checkpoint, an
      evaluation, an epoch, fit end) in a temporary folder.

    Args:
        kind: one of :data:`hjepa_kit.contracts.KINDS`.
        name: the registered name.
        registry: where to find it (default: a fresh registry with the installed plugins; see
            :func:`registry_with` for plugins not installed).
        params: the component's parameters, a mapping or an instance of its parameter class
            (default: all defaults).
        ctx: the build context (default: :func:`tiny_context`, 32-pixel images; for an encoder
            only the image size and channels are used).
        encoder: a registered encoder whose sizes fill the context of a masker, predictor or
            loss, instead of the stand-in :func:`probe_encoder`.
        load_splits: dataset splits to load (default: all of them; ``()`` loads none).

    Returns:
        The built component, for further checks of your own.

    Raises:
        AssertionError: naming the component, its plugin and what failed.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
    registry = registry if registry is not None else Registry()
    if name not in registry.components[kind]:
        available = ", ".join(registry.names(kind)) or "none"
        raise AssertionError(f"no {kind} named {name!r} is registered; registered {kind}s: {available}")
    component = registry.components[kind][name]
    check = _Check(kind, name, component)
    structured = _structure(component, params, check)
    built_encoder = None
    if kind in ("masker", "predictor", "loss") and encoder is not None:
        built_encoder = check_component("encoder", encoder, registry=registry)
    if ctx is None:
        if built_encoder is not None:
            ctx = tiny_context(encoder=built_encoder)
        elif kind == "encoder":
            ctx = BuildContext(image_size=IMAGE_SIZE)
        else:
            ctx = tiny_context()
    built = check.call("building it", component.factory, structured, ctx)
    options = {"encoder": built_encoder, "load_splits": load_splits}
    return _CHECKS[kind](check, built, ctx, options)


def _structure(component: Component, params: Any, check: _Check) -> Any:
    from .params import structure

    if params is not None and attrs.has(type(params)):
        return params
    problems: list[str] = []
    value = structure(component.params, dict(params or {}), "params", problems)
    if problems:
        raise AssertionError(f"{check.label}: its parameters do not structure: " + "; ".join(problems))
    return value


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
    batch = 2
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
    out = check.call("computing the loss", loss_fn, predictions, targets, context)
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


def _check_evaluator(check: _Check, evaluator: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    check.that(callable(evaluator), f"the factory returned {type(evaluator).__name__}, which is not callable")
    features = random_feature_sets()
    result = check.call("evaluating small random features", evaluator, features, "encoder")
    metrics = result.metrics if isinstance(result, EvalResult) else result
    check.that(isinstance(metrics, Mapping), f"it returned {type(result).__name__}, not a mapping of figures or an EvalResult")
    check.that(len(metrics) > 0, "it returned no figures")
    for key, value in metrics.items():
        check.that(isinstance(key, str), f"figure name {key!r} is not a string")
        try:
            float(value)
        except (TypeError, ValueError):
            check.fail(f"figure {key!r} is {value!r}, not a number")
    if isinstance(result, EvalResult):
        check.that(isinstance(result.artifacts, Mapping), f"artifacts must be a mapping, got {type(result.artifacts).__name__}")
    return evaluator


def _check_dataset(check: _Check, dataset: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    splits = getattr(dataset, "splits", None)
    check.that(isinstance(splits, (tuple, list)) and len(splits) > 0 and all(isinstance(s, str) for s in splits),
               f"splits must be a non-empty tuple of names, got {splits!r}")
    size = getattr(dataset, "image_size", None)
    check.that(isinstance(size, int) and size >= 1, f"image_size must be a positive int, got {size!r}")
    classes = getattr(dataset, "num_classes", "missing")
    check.that(classes is None or (isinstance(classes, int) and classes >= 1), f"num_classes must be None or a positive int, got {classes!r}")
    check.that(callable(getattr(dataset, "load", None)), "it has no load(split) method")
    load_splits = options["load_splits"]
    for split in splits if load_splits is None else load_splits:
        check.that(split in splits, f"split {split!r} was asked for but the dataset offers {tuple(splits)}")
        data = check.call(f"loading split {split!r}", dataset.load, split)
        check.that(isinstance(data, ImageData), f"load({split!r}) returned {type(data).__name__}, not ImageData")
        images = data.images
        check.that(isinstance(images, Tensor) and images.dtype == torch.uint8 and images.ndim == 4,
                   f"split {split!r}: images must be uint8 (N, C, H, W), got {getattr(images, 'dtype', None)} {_shape(images)}")
        check.that(images.shape[0] >= 1, f"split {split!r} is empty")
        if data.labels is not None:
            labels = data.labels
            check.that(labels.dtype == torch.int64 and tuple(labels.shape) == (images.shape[0],),
                       f"split {split!r}: labels must be int64 (N,) = ({images.shape[0]},), got {labels.dtype} {_shape(labels)}")
            if classes is not None and labels.numel():
                low, high = int(labels.min()), int(labels.max())
                check.that(0 <= low and high < classes, f"split {split!r}: labels span {low}..{high}, outside 0..{classes - 1}")
        _check_dataset_extras(check, dataset, split, data)
    return dataset


def _check_dataset_extras(check: _Check, dataset: Any, split: str, data: ImageData) -> None:
    """The optional ``estimate_bytes`` and ``open_stream`` (see ``SizedDataset``, ``StreamingDataset``)."""
    if callable(getattr(dataset, "estimate_bytes", None)):
        size = check.call(f"estimate_bytes({split!r})", dataset.estimate_bytes, split)
        check.that(size is None or (isinstance(size, int) and size >= 0),
                   f"estimate_bytes({split!r}) must be a byte count or None, got {size!r}")
    if callable(getattr(dataset, "open_stream", None)):
        stream = check.call(f"open_stream({split!r})", dataset.open_stream, split)
        check.that(len(stream) == len(data), f"open_stream({split!r}) has {len(stream)} items but load({split!r}) {len(data)} images")
        image, label = check.call(f"open_stream({split!r})[0]", stream.__getitem__, 0)
        check.that(isinstance(image, Tensor) and image.dtype == torch.uint8 and tuple(image.shape) == tuple(data.images.shape[1:]),
                   f"open_stream({split!r})[0] image must be uint8 {tuple(data.images.shape[1:])} like load's, got "
                   f"{getattr(image, 'dtype', None)} {_shape(image)}")
        check.that(isinstance(label, int), f"open_stream({split!r})[0] label must be an int (-1 when unlabelled), got {label!r}")


def _check_callback(check: _Check, callback: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    problems = hook_problems(manager, callback)
    if problems:
        check.fail("its hook implementations do not match the hook specs: " + "; ".join(problems))
    try:
        manager.register(callback, name=check.label)
        manager.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        check.fail(f"its hook implementations do not match the hook specs: {exc}")
    implemented = [h for h in LIFECYCLE_HOOKS if any(i.plugin is callback for i in getattr(manager.hook, h).get_hookimpls())]
    check.that(bool(implemented), f"it implements no lifecycle hook (@hookimpl methods named {', '.join(LIFECYCLE_HOOKS)})")
    with tempfile.TemporaryDirectory(prefix="hjepa-callback-check-") as folder:
        trainer = _stand_in_trainer(Path(folder))
        hook = manager.hook
        check.call("hjepa_fit_start", hook.hjepa_fit_start, trainer=trainer)
        metrics = {"loss": 0.5, "loss/level0": 0.4, "loss/level1": 0.2, "lr": 1e-3, "wd": 0.04, "momentum": 0.996,
                   "grad_norm": 1.0, "images_per_s": 100.0, "eta_s": 10.0, "features/std": 0.5, "features/effective_rank": 10.0}
        trainer.step = 1
        check.call("hjepa_step_end", hook.hjepa_step_end, trainer=trainer, step=1, metrics=metrics)
        check.call("hjepa_evaluation_end", hook.hjepa_evaluation_end, trainer=trainer, results={"online/knn/top1@20": 0.3})
        check.call("hjepa_checkpoint_saved", hook.hjepa_checkpoint_saved, trainer=trainer, path=str(Path(folder) / "latest.pth"), reason="latest")
        trainer.epoch = 1
        check.call("hjepa_epoch_end", hook.hjepa_epoch_end, trainer=trainer, epoch=1, metrics={"loss": 0.5, "online/knn/top1@20": 0.3})
        check.call("hjepa_fit_end", hook.hjepa_fit_end, trainer=trainer, status="completed")
        manager.unregister(callback)
    return callback


def _stand_in_trainer(folder: Path) -> Any:
    """What callbacks may read from the trainer, without a model to train."""
    from .config import RunConfig

    config = RunConfig(name="callback-check", output_dir=str(folder))
    for sub in (config.log_dir, config.checkpoint_dir):
        sub.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(
        config=config,
        log_dir=config.log_dir,
        checkpoint_dir=config.checkpoint_dir,
        model=None,
        step=0,
        epoch=0,
        steps_per_epoch=1,
        total_steps=1,
        device=torch.device("cpu"),
        last_metrics={},
    )


_CHECKS = {
    "encoder": _check_encoder,
    "masker": _check_masker,
    "predictor": _check_predictor,
    "loss": _check_loss,
    "evaluator": _check_evaluator,
    "dataset": _check_dataset,
    "callback": _check_callback,
}


# --- plugins registered for one test ----------------------------------------------------------


@attrs.define
class _Distribution:
    name: str
    version: str


@attrs.define
class _EntryPoint:
    """Looks like an ``importlib.metadata.EntryPoint`` of the ``hjepa_kit`` group."""

    name: str
    value: str
    plugin: Any
    dist: _Distribution
    group: str = ENTRY_POINT_GROUP

    def load(self) -> Any:
        return self.plugin


class PluginSandbox:
    """Plugins that every :class:`~hjepa_kit.registry.Registry` sees during one test.

    Each added plugin is served as an extra entry point of the ``hjepa_kit`` group, so the real
    program finds it exactly as it would find an installed one: ``hjepa plugins`` (through
    ``hjepa_kit.cli.main``), ``hjepa_kit.train``, ``hjepa_kit.evaluate``. Get one from the
    :func:`hjepa_plugins` fixture; everything is undone when the test ends.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib.metadata as md

        self._added: list[_EntryPoint] = []
        original = md.entry_points

        def entry_points(**params: Any) -> Any:
            found = original(**params)
            if params.get("group") != ENTRY_POINT_GROUP or not self._added:
                return found
            ours = {ep.value for ep in self._added}
            return [ep for ep in found if ep.value not in ours] + list(self._added)

        monkeypatch.setattr(md, "entry_points", entry_points)

    def add(self, plugin: Any, name: str | None = None, *, distribution: str = "test-plugin", version: str = "0.0.0") -> str:
        """Serve ``plugin`` (a module or object with ``@hookimpl`` functions) as an installed plugin.

        An installed entry point that loads the same module is replaced by this one, so a test of
        your own package does not see it twice.

        Args:
            plugin: the plugin.
            name: its entry-point name (default: the module's or object's name).
            distribution: the distribution name listings show.
            version: the version listings show.

        Returns:
            The entry-point name.
        """
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else f"{type(plugin).__module__}:{type(plugin).__qualname__}@{id(plugin):x}"
        name = name or (plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__name__)
        if any(ep.name == name for ep in self._added):
            raise ValueError(f"a plugin named {name!r} was already added in this test")
        self._added.append(_EntryPoint(name=name, value=module, plugin=plugin, dist=_Distribution(distribution, version)))
        return name

    @property
    def plugins(self) -> list[Any]:
        """The plugins added so far."""
        return [ep.plugin for ep in self._added]

    def registry(self, *, strict: bool = True) -> Registry:
        """A fresh registry with the installed plugins and those added."""
        return Registry(strict=strict)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.plugins)


@pytest.fixture
def hjepa_plugins(monkeypatch: pytest.MonkeyPatch) -> PluginSandbox:
    """Register plugins for one test, as if they were installed.

    Add the plugin under test with ``hjepa_plugins.add(my_plugin)``; every registry created
    afterwards in the test (by the CLI, ``train``, ``evaluate`` or ``hjepa_plugins.registry()``)
    loads it with the installed ones. Enable the fixture with ``pytest_plugins =
    ["hjepa_kit.testing"]`` in your ``conftest.py``.
    """
    return PluginSandbox(monkeypatch)
