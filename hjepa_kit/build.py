"""Build a run's components in order, handing sizes on through the build context.

A :class:`~hjepa_kit.errors.ConfigError` raised by a component's factory is about the run's
configuration: it is re-raised naming the configuration file and the component's key path
(``run.yaml: model.masker (random_patches): ...``), so a plugin need not know either.
:func:`check_build` builds everything that needs no data, for ``hjepa config validate``.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import pluggy
import torch

from . import hookspecs
from .config import RunConfig
from .contracts import BuildContext, Dataset
from .errors import ConfigError, DataError, PluginError
from .model import HJEPA
from .plugin_checks import hook_problems
from .registry import Component, Resolved

__all__ = ["Built", "build_dataset", "build_model", "build_component", "check_build", "check_contract"]

#: The top-level keys of a run configuration: a problem that starts with one names its key already.
_TOP_KEYS = frozenset(f.name for f in attrs.fields(RunConfig))
_KEY_PATH = re.compile(r"^([A-Za-z_]\w*)[\w.\[\]]*:")


@attrs.define
class Built:
    """What :func:`build_model` returns: the run's built model, masker and loss, and the context they were built with."""

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


def build_component(resolved: Resolved, path: str, ctx: BuildContext) -> Any:
    """Build the component selected at key path ``path`` (``model.masker``, ``callbacks[0]`` ...).

    Raises:
        ConfigError: the factory's own, naming the configuration file (``resolved.source``) and,
            unless the message names a key already, the key path and the component.
        PluginError: any other exception of the factory, naming the component and its plugin.
    """
    component, params = resolved[path]
    try:
        return component.build(params, ctx)
    except ConfigError as exc:
        raise _located(exc, path, component.name, getattr(resolved, "source", "<config>")) from exc


def _located(exc: ConfigError, path: str, name: str, source: str) -> ConfigError:
    problems = []
    for problem in exc.problems:
        match = _KEY_PATH.match(problem)
        if match and match.group(1) in _TOP_KEYS:
            problems.append(problem)
        else:
            problems.append(f"{path} ({name}): {problem.removeprefix(f'{name}: ')}")
    # "<config>" is ConfigError's default: the factory did not know the file. Keep any other source.
    return ConfigError(problems, source if exc.source == "<config>" else exc.source)


def build_dataset(resolved: Resolved, ctx: BuildContext) -> Dataset:
    """Build the dataset; fills ``ctx.image_size`` (when unset) and ``ctx.num_classes``."""
    component, _ = resolved["data.dataset"]
    dataset = build_component(resolved, "data.dataset", ctx)
    check_contract("dataset", component.name, component, dataset, ("splits", "image_size", "num_classes", "load"))
    if not ctx.image_size:
        ctx.image_size = int(dataset.image_size)
    ctx.num_classes = dataset.num_classes
    return dataset


def build_model(resolved: Resolved, ctx: BuildContext) -> Built:
    """Build encoder, masker, predictor and loss in order; ``ctx`` must know the image size."""
    component, _ = resolved["model.encoder"]
    encoder = build_component(resolved, "model.encoder", ctx)
    check_contract("encoder", component.name, component, encoder, ("embed_dim", "patch_size", "grid_size", "depth"))
    ctx.embed_dim = int(encoder.embed_dim)
    ctx.patch_size = int(encoder.patch_size)
    ctx.grid_size = (int(encoder.grid_size[0]), int(encoder.grid_size[1]))
    ctx.depth = int(encoder.depth)

    masker = build_component(resolved, "model.masker", ctx)

    component, _ = resolved["model.predictor"]
    predictor = build_component(resolved, "model.predictor", ctx)
    check_contract("predictor", component.name, component, predictor,
                   ("num_levels", "level_weights", "target_blocks", "make_targets", "level_features"))
    ctx.num_levels = int(predictor.num_levels)
    ctx.level_weights = tuple(float(w) for w in predictor.level_weights)

    loss = build_component(resolved, "loss", ctx)
    model = HJEPA(encoder, predictor).to(ctx.device)
    if isinstance(loss, torch.nn.Module):
        loss = loss.to(ctx.device)
    return Built(ctx=ctx, model=model, masker=masker, loss=loss)


def make_context(config: RunConfig, device: torch.device, image_size: int | None = None) -> BuildContext:
    """The initial build context of a run."""
    return BuildContext(image_size=image_size or config.data.image_size or 0, device=device, views=config.data.views)


def check_build(resolved: Resolved, config: RunConfig) -> list[str]:
    """Build every selected component that needs no data, so that its build-time checks run.

    ``hjepa config validate`` calls this once the configuration and every component's parameters
    check out: encoder, masker, predictor and loss are built in order on the CPU (a masker's
    targets that cannot fit the encoder's patch grid fail here, as they would in ``hjepa train``),
    then the evaluators and callbacks (whose ``@hookimpl`` methods are checked against the hook
    specs, as registering them for a run does). No data is read. The dataset is opened (its
    factory called, no split loaded) only when ``data.image_size`` is unset, because the image
    size then comes from it, and never when its parameters ask for a download (``download:
    true``); if it is not opened, or cannot be (not downloaded yet), the model is left unchecked
    and a note says so.

    Returns:
        Notes on what could not be checked; empty when everything was built.

    Raises:
        ConfigError: a component's build-time check failed (naming the file and key path).
        PluginError: a factory failed otherwise, or a component misses its contract's attributes.
    """
    ctx = make_context(config, torch.device("cpu"))
    notes = []
    unchecked = "the model was not built: with data.image_size unset the image size comes from the dataset, which"
    advice = "set data.image_size to check the model without the data"
    if not ctx.image_size and getattr(resolved["data.dataset"][1], "download", False) is True:
        notes.append(f"{unchecked} is not opened because data.dataset.params.download is true; {advice}")
    elif not ctx.image_size:
        try:
            build_dataset(resolved, ctx)
        except DataError as exc:
            notes.append(f"{unchecked} cannot be opened here ({exc}); {advice}")
    if ctx.image_size:
        build_model(resolved, ctx)
    specs = pluggy.PluginManager(hookspecs.PROJECT)
    specs.add_hookspecs(hookspecs)
    for path, (component, _) in resolved.items():
        if not path.startswith(("evaluation.", "callbacks[")):
            continue
        built = build_component(resolved, path, ctx)
        problems = hook_problems(specs, built) if path.startswith("callbacks[") else []
        if problems:  # what registering the callback at the start of `hjepa train` would report
            raise PluginError(f"{path}: callback '{component.name}' from plugin {component.origin}: " + "; ".join(problems))
    return notes
