"""A command's output: refused when it exists (unless ``force``), then written whole or not at all.

The writing is :mod:`hjepa_kit.helpers`' (a temporary name, fsync, rename): a run killed halfway,
a full disk or an error leaves no half-written folder or file under the name the user asked for.
This module adds the policy of ``hjepa export`` and ``embed``: an existing output is replaced only
with ``force``, and a folder only when it holds what the command writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import atomic
from ..errors import OutputError

__all__ = ["atomic_folder", "atomic_file", "check_new_folder", "check_new_file", "check_output_folder"]


def check_output_folder(out: Path, *, option: str = "--output-dir") -> None:
    """Refuse a folder that cannot be created or written into, before the long work; nothing is created.

    Raises:
        OutputError: naming ``out``: a file stands where a folder on its path should be, or the
            nearest existing folder cannot be written (by permissions; a read-only file system
            shows when the files are written).
    """
    existing = out
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {out}: cannot be created: {existing} is a file, not a folder; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {out}: cannot be written: {existing} is not writable (permission denied); "
                          "choose another folder")


def check_new_folder(
    out: Path, *, force: bool = False, replaceable: Callable[[Path], bool] | None = None, option: str = "--out"
) -> None:
    """Refuse an existing ``out`` unless ``force`` (and ``replaceable(out)``); see :func:`atomic_folder`.

    Raises:
        OutputError: naming ``out`` and what to do.
    """
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise OutputError(f"{option} {out}: already exists; choose another folder or pass --force to replace it")
    if not out.is_dir():
        raise OutputError(f"{option} {out}: exists and is not a folder; remove it or choose another name")
    if replaceable is not None and not replaceable(out):
        raise OutputError(
            f"{option} {out}: exists and does not hold an earlier export, so --force will not replace it; "
            "remove it yourself or choose another folder"
        )


@contextmanager
def atomic_folder(
    out: str | os.PathLike[str], *, force: bool = False, replaceable: Callable[[Path], bool] | None = None, option: str = "--out"
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds it becomes ``out``.

    Args:
        out: the folder to create.
        force: replace ``out`` when it exists.
        replaceable: with ``force``, an existing ``out`` is replaced only when this returns True
            for it (e.g. it is an earlier export), so ``force`` cannot wipe an unrelated folder.
        option: the option that named ``out``, for messages.

    Raises:
        OutputError: ``out`` exists (without ``force``, or not replaceable), or cannot be written.
    """
    out = Path(out)
    check_new_folder(out, force=force, replaceable=replaceable, option=option)
    with atomic.atomic_folder(out) as tmp:
        yield tmp


def check_new_file(out: Path, *, force: bool = False, option: str = "--out") -> None:
    """Refuse a folder, or an existing file unless ``force``; see :func:`atomic_file`.

    Raises:
        OutputError: naming ``out`` and what to do.
    """
    if out.is_dir():
        raise OutputError(f"{option} {out}: is a folder; name a file")
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputError(f"{option} {out}: already exists; choose another name or pass --force to replace it")


@contextmanager
def atomic_file(out: str | os.PathLike[str], *, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary file name beside ``out``; when the block succeeds it is renamed to ``out``.

    The temporary file is created (empty) before the block runs, so an unwritable folder fails
    before any long work.

    Raises:
        OutputError: ``out`` exists (without ``force``), is a folder, or cannot be written.
    """
    out = Path(out)
    check_new_file(out, force=force, option=option)
    with atomic.atomic_file(out) as tmp:
        yield tmp
