"""Rebuild a trained model from a checkpoint file alone, for export and embedding.

The checkpoint holds the run's resolved configuration and the size it was built for, so the same
components are found by name in the registry and built again; no dataset is needed unless the
caller builds one (``hjepa embed --dataset``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ..build import build_dataset, build_model
from ..checkpoint_file import load_checkpoint
from ..config import RunConfig, load_config
from ..contracts import BuildContext, Dataset
from ..errors import CheckpointError, UserError
from .representation import choose_representation
from ..model import HJEPA
from ..registry import Component, Registry

__all__ = ["Pretrained", "load_pretrained"]

log = logging.getLogger("hjepa_kit")


@attrs.define
class Pretrained:
    """A trained model rebuilt from its checkpoint.

    Attributes:
        path: the checkpoint file.
        state: the loaded checkpoint (``config``, ``build``, ``model``, ``step`` ...).
        config: the run's configuration (with the caller's overrides applied).
        registry: the plugin registry the components were found in.
        resolved: key path -> ``(component, params)`` of every component of the configuration.
        ctx: the build context, filled by the build (image size, grid, embed dim, levels, device).
        model: the :class:`~hjepa_kit.model.HJEPA` module in eval mode, with the checkpoint's weights.
    """

    path: Path
    state: dict[str, Any]
    config: RunConfig
    registry: Registry
    resolved: Mapping[str, tuple[Component, Any]]
    ctx: BuildContext
    model: HJEPA

    @property
    def encoder_name(self) -> str:
        """The registered name of the encoder (``vit_tiny`` ...)."""
        return self.config.model.encoder.name

    @property
    def representations(self) -> tuple[str, ...]:
        """The representations :meth:`HJEPA.features` returns: ``encoder``, ``level0``, ``level1`` ..."""
        return ("encoder", *(f"level{i}" for i in range(int(self.model.predictor.num_levels))))

    @property
    def evaluated_representation(self) -> str:
        """The run's ``evaluation.representation``: the one training and ``hjepa evaluate`` graded."""
        return str(self.config.evaluation.representation)

    def choose_representation(self, name: str | None, option: str = "--representation") -> str:
        """The representation ``hjepa export`` and ``hjepa embed`` compute: ``name``, or by default the graded one.

        ``None`` (the default of both) means the run's evaluated representation
        (:attr:`evaluated_representation`): users get the features that training's online
        evaluation and ``hjepa evaluate`` scored. The choice is logged.

        Raises:
            UserError: ``name`` is not one of the model's representations, or (``None``) the run's
                evaluated one is not (a configuration naming a representation the model lacks).
        """
        evaluated = self.evaluated_representation
        chosen = choose_representation(self.representations, name, default=evaluated, option=option)
        how = "the run's evaluated representation (evaluation.representation)" if name is None else (
            f"chosen with {option} (the run evaluated {evaluated})")
        log.info("representation %s: %s", chosen, how)
        return chosen

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean the images are normalised with (as in training and evaluation)."""
        return tuple(float(v) for v in self.config.data.augmentation.mean)  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel std the images are normalised with."""
        return tuple(float(v) for v in self.config.data.augmentation.std)  # type: ignore[return-value]

    def build_dataset(self) -> Dataset:
        """Build the configuration's dataset component at the model's image size."""
        return build_dataset(self.resolved, self.ctx)


def load_pretrained(
    checkpoint: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    dataset: str | None = None,
    data_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    plugins: Iterable[Any] = (),
) -> Pretrained:
    """Load ``checkpoint`` and rebuild its model with the checkpoint's weights, in eval mode.

    Args:
        checkpoint: a checkpoint written by ``hjepa train``.
        device: where the model goes.
        dataset: select this dataset component (with its default parameters); the run's own
            dataset keeps the run's parameters.
        data_path: the dataset folder (sets ``data.dataset.params.root``).
        overrides: ``KEY=VALUE`` overrides applied to the checkpoint's configuration.
        plugins: extra plugins whose components the configuration may name.

    Raises:
        CheckpointError: the file is missing, not ours, its configuration does not load, or its
            weights do not fit the model its configuration builds.
        UserError: a component it names is not installed.
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    extra = []
    if dataset and dataset != _dataset_name(state):
        extra.append(f"data.dataset={json.dumps({'name': dataset, 'params': {}})}")
    if data_path is not None:
        extra.append(f"data.dataset.params.root={json.dumps(str(data_path))}")
    extra += list(overrides)
    if not isinstance(state.get("config"), Mapping) or not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{path}: the checkpoint lacks its configuration or model weights; it was not written by hjepa train")
    try:
        config = load_config(state["config"], extra)
    except UserError as exc:
        if extra:
            raise  # the caller's dataset or overrides are the likelier culprit; the message names them
        raise CheckpointError(f"{path}: its configuration does not load: {exc}") from None
    registry = Registry(plugins)
    resolved = registry.resolve(config, f"{path} (configuration)")
    build = state.get("build") or {}
    image_size = int(build.get("image_size") or config.data.image_size or 0)
    ctx = BuildContext(image_size=image_size, in_chans=int(build.get("in_chans", 3)), device=torch.device(device))
    if not image_size:
        build_dataset(resolved, ctx)  # an old checkpoint: the dataset's native size
    built = build_model(resolved, ctx)
    try:
        built.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the weights do not match the model its configuration builds: {str(exc).strip().splitlines()[0]}"
        ) from None
    built.model.eval()
    return Pretrained(path=path, state=state, config=config, registry=registry, resolved=resolved, ctx=built.ctx, model=built.model)


def _dataset_name(state: Mapping[str, Any]) -> str | None:
    try:
        return str(state["config"]["data"]["dataset"]["name"])
    except (KeyError, TypeError):
        return None
