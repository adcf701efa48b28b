"""The contract check: :func:`check_component` builds a registered component and checks its kind's contract.

The checks of each kind are in :mod:`~hjepa_kit.testing.model_checks` (encoder, masker, predictor,
loss) and :mod:`~hjepa_kit.testing.run_checks` (evaluator, dataset, callback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..contracts import KINDS, BuildContext
from ..registry import Component, Registry
from .failure import _Check
from .model_checks import MODEL_CHECKS
from .run_checks import RUN_CHECKS
from .standins import IMAGE_SIZE, tiny_context

#: Kind -> its check.
_CHECKS = {**MODEL_CHECKS, **RUN_CHECKS}


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
      returns a non-empty mapping of names to numbers, or an :class:`~hjepa_kit.contracts.EvalResult`
      whose grades and headline name figures it returns. An evaluator that declares ``needs_tokens = True``
      gets ``(N, 8, 16)`` float16 patch tokens on ``encoder`` (none on the levels), as in a run.
      One that declares ``needs_model = True`` is also given ``model=``, an
      :class:`~hjepa_kit.contracts.EvalModel` (:func:`~hjepa_kit.testing.standins.stand_in_model`):
      a copy of the stand-in encoder (or of ``encoder=``), random uint8 images with the features'
      labels, the default augmentation and a temporary ``state_dir``.
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
            loss, and that an evaluator declaring ``needs_model`` trains, instead of the stand-in
            :func:`probe_encoder`.
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
    if kind in ("masker", "predictor", "loss", "evaluator") and encoder is not None:
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
    from ..params import structure

    if params is not None and attrs.has(type(params)):
        return params
    problems: list[str] = []
    value = structure(component.params, dict(params or {}), "params", problems)
    if problems:
        raise AssertionError(f"{check.label}: its parameters do not structure: " + "; ".join(problems))
    return value
