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
from pathlib import Path
from typing import Any

import attrs
import torch

from .. import __version__
from ..config import dump_config
from ..helpers import write_atomic
from ..runtime import restore_rng_state, rng_state
from .checkpoint import load_training_state
from .distributed import rescale_position

__all__ = ["TrainResult", "training_state", "restore_training_state", "write_resolved_config", "resolved_config_text"]

log = logging.getLogger("hjepa_kit")


@attrs.frozen
class TrainResult:
    """What :func:`hjepa_kit.train` returns.

    Attributes:
        status: ``completed``, ``interrupted`` (SIGINT/SIGTERM) or ``stopped`` (``max_steps``).
        log_dir: folder of training.log, metrics.jsonl, config.yaml and TensorBoard events.
        checkpoint_dir: folder of the checkpoints.
        checkpoints: reason (``latest``, ``best``, ``final``, ``epoch_5`` ...) -> path.
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


def training_state(trainer: Any) -> dict[str, Any]:
    """Everything a resumed run needs, plus what evaluation needs to rebuild the model."""
    ctx = trainer.ctx
    return {
        "hjepa_kit_version": __version__,
        "config": trainer.resolved_config(),
        "build": {"image_size": ctx.image_size, "in_chans": ctx.in_chans, "num_classes": ctx.num_classes},
        "model": trainer.model.state_dict(),
        "loss": _module_state(trainer.loss_fn),
        "optimizer": trainer.optimizer.state_dict(),
        "step": trainer.step,
        "epoch": trainer.epoch,
        "batch_in_epoch": trainer.batch_in_epoch,
        "world_size": trainer.dist.world_size,
        "rng": rng_state(),
        "best": dict(trainer.best),
        "early_stopping": trainer.early_stopping.state_dict() if trainer.early_stopping else {},
        "metrics": dict(trainer.last_metrics),
    }


def restore_training_state(trainer: Any, state: dict[str, Any], path: Path, *, accumulation: int = 1) -> None:
    """Put ``trainer`` where the run of ``state`` (read from ``path``) stopped: weights, optimizer, position, RNG."""
    load_training_state(state, trainer.model, trainer.optimizer, path)
    if state.get("loss") and isinstance(trainer.loss_fn, torch.nn.Module):
        trainer.loss_fn.load_state_dict(state["loss"], strict=False)  # a loss with state (SIGReg's counter)
    trainer.epoch = int(state["epoch"])
    trainer.step, trainer.batch_in_epoch = rescale_position(
        int(state["step"]), int(state.get("batch_in_epoch", 0)), int(state.get("world_size", 1)), trainer.dist.world_size,
        accumulation,
    )
    trainer.best = dict(state.get("best", {}))
    trainer.last_metrics = dict(state.get("metrics", {}))
    restore_rng_state(state["rng"])
    trainer.healthy_checkpoint = path
    if trainer.early_stopping is not None:
        trainer.early_stopping.load_state_dict(state.get("early_stopping") or {})
    log.info("resumed from %s at epoch %d, step %d", path, trainer.epoch, trainer.step)


def resolved_config_text(trainer: Any) -> str:
    """The run's configuration as YAML, with every component's parameters filled in."""
    params = {path: p for path, (_, p) in trainer.resolved.items()}
    return dump_config(trainer.config, params)


def write_resolved_config(trainer: Any) -> Path:
    """Write ``<log_dir>/config.yaml``: the run's configuration with every component's parameters filled in (atomic)."""
    text = resolved_config_text(trainer)
    target = trainer.log_dir / "config.yaml"
    return write_atomic(target, f"# resolved configuration of run '{trainer.config.name}' (hjepa-kit {__version__})\n" + text)
