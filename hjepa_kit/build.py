"""Build a run's components in order, handing sizes on through the build context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from .config import RunConfig
from .contracts import BuildContext, Dataset
from .errors import PluginError
from .model import HJEPA
from .registry import Component, Registry

__all__ = ["Built", "build_dataset", "build_model", "check_contract"]

Resolved = Mapping[str, tuple[Component, Any]]


@attrs.define
class Built:
    """The components of a run and the context they were built with."""

    ctx: BuildContext
    model: HJEPA
    masker: Any
    loss: Any


def check_contract(kind: str, name: str, component: Component, obj: Any, attributes: tuple[str, ...]) -> None:
    """Raise a PluginError naming the component when ``obj`` lacks a contract attribute."""
    missing = [a for a in attributes if not hasattr(obj, a)]
    if missing:
        raise PluginError(
            f"{kind} '{name}' from plugin {component.origin} does not meet the {kind} contract: "
            f"missing {', '.join(missing)} (see hjepa_kit.contracts)"
        )


def build_dataset(resolved: Resolved, ctx: BuildContext) -> Dataset:
    """Build the dataset; fills ``ctx.image_size`` (when unset) and ``ctx.num_classes``."""
    component, params = resolved["data.dataset"]
    dataset = component.build(params, ctx)
    check_contract("dataset", component.name, component, dataset, ("splits", "image_size", "num_classes", "load"))
    if not ctx.image_size:
        ctx.image_size = int(dataset.image_size)
    ctx.num_classes = dataset.num_classes
    return dataset


def build_model(resolved: Resolved, ctx: BuildContext) -> Built:
    """Build encoder, masker, predictor and loss in order; ``ctx`` must know the image size."""
    component, params = resolved["model.encoder"]
    encoder = component.build(params, ctx)
    check_contract("encoder", component.name, component, encoder, ("embed_dim", "patch_size", "grid_size", "depth"))
    ctx.embed_dim = int(encoder.embed_dim)
    ctx.patch_size = int(encoder.patch_size)
    ctx.grid_size = (int(encoder.grid_size[0]), int(encoder.grid_size[1]))
    ctx.depth = int(encoder.depth)

    component, params = resolved["model.masker"]
    masker = component.build(params, ctx)

    component, params = resolved["model.predictor"]
    predictor = component.build(params, ctx)
    check_contract("predictor", component.name, component, predictor,
                   ("num_levels", "level_weights", "target_blocks", "make_targets", "level_features"))
    ctx.num_levels = int(predictor.num_levels)
    ctx.level_weights = tuple(float(w) for w in predictor.level_weights)

    component, params = resolved["loss"]
    loss = component.build(params, ctx)
    model = HJEPA(encoder, predictor).to(ctx.device)
    if isinstance(loss, torch.nn.Module):
        loss = loss.to(ctx.device)
    return Built(ctx=ctx, model=model, masker=masker, loss=loss)


def make_context(config: RunConfig, device: torch.device, image_size: int | None = None) -> BuildContext:
    """The initial build context of a run."""
    return BuildContext(image_size=image_size or config.data.image_size or 0, device=device)


def build_named(registry: Registry, resolved: Resolved, path: str, ctx: BuildContext) -> Any:
    """Build the component at key path ``path`` (an evaluator or callback)."""
    component, params = resolved[path]
    return component.build(params, ctx)
