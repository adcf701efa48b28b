"""Atomic checkpoint writing and safe loading.

A checkpoint is written to a temporary file in the destination folder, flushed and fsynced, then
renamed over the destination, so a run killed at any moment leaves the previous file intact.
Loading uses ``torch.load(weights_only=True)``: a file crafted to run code fails to load instead.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..evaluation.outputs import fsync_path

__all__ = [
    "FORMAT", "save_checkpoint", "load_checkpoint", "load_training_state", "find_latest", "resume_target",
    "remove_stale_temporaries",
]

log = logging.getLogger("hjepa_kit")

#: Written into every checkpoint; loading refuses files without it.
FORMAT = "hjepa-kit/1"


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        CheckpointError: when the folder cannot be written (naming it).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"{path.parent}: cannot write checkpoints there: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state, format=FORMAT), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"{path}: writing the checkpoint failed: {exc.strerror or exc}") from None
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, refuses to load with
            ``weights_only=True`` (it may carry code), or was not written by hjepa-kit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects that are not plain tensors and containers "
            f"(loading it could run code). Only checkpoints written by hjepa-kit are accepted. ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file): {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an hjepa-kit checkpoint (expected format {FORMAT!r}, found {found!r})")
    return state


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
