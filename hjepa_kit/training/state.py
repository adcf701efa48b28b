"""What a run keeps: what its checkpoints hold, how a resumed run takes it back, its resolved
configuration, and the :class:`TrainResult` it ends with.

A checkpoint is a plain dictionary (``torch.save``; loaded with ``weights_only=True``): the resolved
configuration (with the run's extensions, ``training.extensions``, which a resumed run follows:
:mod:`~hjepa_kit.training.extension`) and build context (enough to rebuild the model for evaluation), the model and
optimizer state, the position in the run, the RNG state, the best figure so far, the early-stopping
state and the last metrics. Its keys are a file format: checkpoints written by older versions keep
loading (``tests/test_legacy_checkpoint.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from .. import __version__
from ..config import RunConfig, dump_config
from ..contracts import BuildContext
from ..atomic import write_atomic
from ..runtime import restore_rng_state, rng_state
from .checkpoint import load_training_state
from .distributed import rescale_position

__all__ = ["TrainResult", "Restored", "training_state", "restore_training_state", "write_resolved_config", "resolved_config_text"]

log = logging.getLogger("hjepa_kit")


@attrs.frozen
class TrainResult:
    """What :func:`hjepa_kit.train` returns.

    Attributes:
        status: ``completed``, ``interrupted`` (SIGINT/SIGTERM) or ``stopped`` (``training.max_steps``,
            early stopping or ``Trainer.request_stop``); a collapse that stops the run raises
            :class:`~hjepa_kit.errors.CollapseDetected` instead.
        log_dir: folder of training.log, metrics.jsonl, config.yaml and TensorBoard events.
        checkpoint_dir: folder of the checkpoints.
        checkpoints: file stem (``latest``, ``best_model``, ``final``, ``checkpoint_epoch_5``,
            ``interrupted`` ...) -> path of the checkpoints this run wrote.
        metrics: the last epoch's metrics (loss, online evaluation figures).
        steps: optimizer steps done.
        epochs: epochs done.
    """

    status: str
    log_dir: Path
    checkpoint_dir: Path
    checkpoints: dict[str, Path]
    metrics: dict[str, float]
    steps: int
    epochs: int


def _module_state(module: Any) -> dict[str, Any]:
    """A component's own state when it is a module with one (``{}`` otherwise)."""
    return dict(module.state_dict()) if isinstance(module, torch.nn.Module) else {}


@attrs.frozen(kw_only=True)
class Restored:
    """What :func:`restore_training_state` takes back from a checkpoint besides the weights.

    Attributes:
        epoch: epochs done.
        step: optimizer steps done (rescaled to this run's processes).
        batch_in_epoch: micro-batches done in the current epoch (rescaled likewise).
        best: the best figure so far (``{}`` when none).
        metrics: the last epoch's metrics.
        early_stopping: the early-stopping state (``{}`` when the run had none).
    """

    epoch: int
    step: int
    batch_in_epoch: int
    best: dict[str, Any]
    metrics: dict[str, float]
    early_stopping: dict[str, Any]


def training_state(
    *, config: dict[str, Any], ctx: BuildContext, model: torch.nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer,
    epoch: int, step: int, batch_in_epoch: int, world_size: int, best: Mapping[str, Any],
    early_stopping: Mapping[str, Any], metrics: Mapping[str, float],
) -> dict[str, Any]:
    """Everything a resumed run needs, plus what evaluation needs to rebuild the model.

    Args:
        config: the resolved configuration as plain data (:func:`resolved_config_text`, parsed).
        ctx: the build context (its image size, channels and classes rebuild the model).
        model, loss_fn, optimizer: the run's modules; the loss's state is kept when it has one.
        epoch, step, batch_in_epoch: the position: epochs done, optimizer steps done, micro-batches
            done in the current epoch.
        world_size: the run's processes (a resumed run with another count rescales the position).
        best, early_stopping, metrics: the best figure so far, the early-stopping state and the
            last epoch's metrics.
    """
    return {
        "hjepa_kit_version": __version__,
        "config": config,
        "build": {"image_size": ctx.image_size, "in_chans": ctx.in_chans, "num_classes": ctx.num_classes},
        "model": model.state_dict(),
        "loss": _module_state(loss_fn),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "world_size": world_size,
        "rng": rng_state(),
        "best": dict(best),
        "early_stopping": dict(early_stopping),
        "metrics": dict(metrics),
    }


def restore_training_state(
    state: dict[str, Any], path: Path, *, model: torch.nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer,
    world_size: int, accumulation: int = 1,
) -> Restored:
    """Load the weights, optimizer state and RNG of ``state`` (read from ``path``) in place; return the rest.

    The position is rescaled from the checkpoint's processes to ``world_size`` at ``accumulation``
    micro-batches per optimizer step.
    """
    load_training_state(state, model, optimizer, path)
    if state.get("loss") and isinstance(loss_fn, torch.nn.Module):
        loss_fn.load_state_dict(state["loss"], strict=False)  # a loss with state (SIGReg's counter)
    epoch = int(state["epoch"])
    step, batch_in_epoch = rescale_position(
        int(state["step"]), int(state.get("batch_in_epoch", 0)), int(state.get("world_size", 1)), world_size, accumulation,
    )
    restore_rng_state(state["rng"])
    log.info("resumed from %s at epoch %d, step %d", path, epoch, step)
    return Restored(
        epoch=epoch, step=step, batch_in_epoch=batch_in_epoch, best=dict(state.get("best", {})),
        metrics=dict(state.get("metrics", {})), early_stopping=dict(state.get("early_stopping") or {}),
    )


def resolved_config_text(config: RunConfig, resolved: Mapping[str, tuple[Any, Any]]) -> str:
    """The run's configuration as YAML, with every component's parameters filled in.

    ``resolved`` is what :meth:`~hjepa_kit.registry.Registry.resolve` returned for ``config``.
    """
    params = {path: p for path, (_, p) in resolved.items()}
    return dump_config(config, params)


def write_resolved_config(log_dir: Path, config: RunConfig, resolved: Mapping[str, tuple[Any, Any]]) -> Path:
    """Write ``<log_dir>/config.yaml``: the run's configuration with every component's parameters filled in (atomic)."""
    text = resolved_config_text(config, resolved)
    return write_atomic(log_dir / "config.yaml", f"# resolved configuration of run '{config.name}' (hjepa-kit {__version__})\n" + text)
