"""A checkpoint file: its format tag, the check that a path holds one, and safe loading.

Training writes checkpoints (:mod:`hjepa_kit.training.checkpoint`); evaluation, export and embed
read them. Both sides meet here, below them, so that neither imports the other for it.
Loading uses ``torch.load(weights_only=True)``: a file crafted to run code fails to load instead.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["FORMAT", "load_checkpoint", "check_checkpoint_file"]

#: Written into every checkpoint; loading refuses files without it.
FORMAT = "hjepa-kit/1"


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`~hjepa_kit.training.checkpoint.save_checkpoint`, safely.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, refuses to load with
            ``weights_only=True`` (it may carry code), or was not written by hjepa-kit.
    """
    path = check_checkpoint_file(path)
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


def check_checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when it is a file that may be a checkpoint (a zip or a pickle, as ``torch.save`` writes).

    Raises:
        CheckpointError: it is missing, a folder (the message lists the checkpoints in it), or
            another kind of file (a YAML configuration, an image ...).
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pth") if not p.name.startswith("."))
        held = f"; it holds {', '.join(found[:4])}{' ...' if len(found) > 4 else ''}" if found else "; it holds no .pth file"
        raise CheckpointError(f"{path}: is a folder, not a checkpoint: name a checkpoint file{held}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if head not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise CheckpointError(f"{path}: not a checkpoint: torch.save did not write this file (hjepa train writes "
                              "its checkpoints as <output_dir>/checkpoints/<name>/*.pth)")
    return path
