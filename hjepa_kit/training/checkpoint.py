"""Atomic checkpoint writing, resuming from a checkpoint, and the room checkpoints take.

A checkpoint is written to a temporary file in the destination folder, flushed and fsynced, then
renamed over the destination (:func:`hjepa_kit.helpers.write_atomic`), so a run killed at any
moment, or a full disk, leaves the previous file intact. Reading one (the format tag, the file
check, ``weights_only`` loading) is :mod:`hjepa_kit.checkpoint_file`, shared with evaluation.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_file import FORMAT, check_checkpoint_file, load_checkpoint
from ..errors import CheckpointError
from ..atomic import format_bytes, write_atomic

__all__ = [
    "FORMAT", "save_checkpoint", "load_checkpoint", "check_checkpoint_file", "load_training_state", "find_latest",
    "resume_target", "remove_stale_temporaries", "state_nbytes", "checkpoint_space", "RESUME_WHEN_FREED",
]

log = logging.getLogger("hjepa_kit")

#: What a checkpoint write that found the disk full tells the user to do.
RESUME_WHEN_FREED = ("Free space there (or move the run with --output-dir), then run the same `hjepa train` with "
                     "--resume auto: it continues from the newest checkpoint left intact.")


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(state_nbytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(value) for value in state)
    return 0


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`hjepa_kit.helpers.write_atomic`: temporary file, fsync, rename).

    Raises:
        CheckpointError: when the folder cannot be written (naming it).
        DiskFull: the disk or quota is full: the previous file is intact, no temporary is left, and
            the message says how much was needed, how much is free and how to resume.
    """
    state = dict(state, format=FORMAT)
    return write_atomic(path, lambda handle: torch.save(state, handle), needed=state_nbytes(state), what="checkpoints",
                        error=CheckpointError, then=RESUME_WHEN_FREED)


def load_training_state(state: Mapping[str, Any], model: torch.nn.Module, optimizer: Any, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint's model and optimizer states (``path`` names the file in errors).

    Raises:
        CheckpointError: the states do not fit this model (another encoder, predictor or image size).
    """
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: the checkpoint does not match this configuration's model "
            f"(was it written with another encoder, predictor or image size?): {first}"
        ) from None


def find_latest(folder: str | os.PathLike[str]) -> Path | None:
    """The most recently written checkpoint in ``folder`` (``--resume auto``), or ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = [p for p in folder.glob("*.pth") if not p.name.startswith(".")]
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def resume_target(resume: str | os.PathLike[str] | None, folder: str | os.PathLike[str]) -> str | os.PathLike[str] | None:
    """The checkpoint ``--resume`` names; ``auto``: the newest in ``folder``, None (logged) where there is none."""
    if resume is None or str(resume) != "auto":
        return resume
    found = find_latest(folder)
    if found is None:
        log.info("--resume auto: no checkpoint in %s, starting fresh", folder)
    return found


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed write left behind (``.NAME.pth.XXXX.tmp``)."""
    folder = Path(folder)
    removed = []
    for tmp in folder.glob(".*.pth.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def checkpoint_space(
    folder: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
    start_epoch: int = 0, every_epochs: int, save_final: bool = True,
) -> str | None:
    """Warn (and return the warning) when ``folder`` cannot hold the checkpoints the schedule keeps.

    One checkpoint is about the bytes of the model and the optimizer state (AdamW keeps two
    moments per trained parameter, counted before its first step too). The run keeps
    ``latest.pth``, ``best_model.pth``, ``final.pth`` (``save_final``) and one numbered file every
    ``every_epochs`` epochs from ``start_epoch`` to ``epochs``; a write needs room for one more
    while the temporary file and the file it replaces both exist. The files a resumed run
    rewrites count as free. Returns None when there is room.
    """
    folder = Path(folder)
    one = state_nbytes(model.state_dict())
    if optimizer.state:
        one += state_nbytes(optimizer.state_dict())
    else:
        one += 2 * sum(state_nbytes(p) for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
    periodic = max(epochs // every_epochs - start_epoch // every_epochs, 0)
    rewritten = ["latest.pth", "best_model.pth"] + (["final.pth"] if save_final else [])
    count = len(rewritten) + periodic
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    reusable = sum(p.stat().st_size for p in (folder / name for name in rewritten) if p.is_file())
    needed = (count + 1) * one - reusable
    if needed <= free:
        return None
    message = (
        f"{folder}: {format_bytes(free)} free, but the run keeps {count} checkpoints of about {format_bytes(one)} "
        f"({', '.join(rewritten)} and {periodic} numbered every {every_epochs} epochs) and needs room for one more while "
        f"writing: about {format_bytes(needed)} in all. Free space, raise checkpoint.every_epochs, or choose another "
        "--output-dir; a write that finds the disk full stops the run, keeping the previous checkpoint"
    )
    log.warning("%s", message)
    return message
