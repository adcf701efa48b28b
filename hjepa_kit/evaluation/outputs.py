"""Write a command's output whole or not at all: into a temporary name, then renamed into place.

A run killed halfway, a full disk or an error leaves no half-written folder or file under the
name the user asked for; an existing output is replaced only with ``force``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

__all__ = ["atomic_folder", "atomic_file", "check_new_folder", "check_new_file", "fsync_path"]


def _writable_parent(out: Path) -> Path:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the folder for {out.name}: {exc.strerror or exc}") from None
    return parent


def _usual_mode(path: Path, folder: bool) -> None:
    """Give a temporary file or folder (created 0600 / 0700) the mode a plain ``open`` / ``mkdir`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def fsync_path(path: Path) -> None:
    """Flush a file's or folder's data (a folder: its entries, e.g. a rename) to disk; best effort, never raises."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    parent = _writable_parent(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        _usual_mode(tmp, folder=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write {out.name} there: {exc.strerror or exc}") from None
    try:
        yield tmp
        for item in tmp.iterdir():
            if item.is_file():
                _usual_mode(item, folder=False)  # some writers (safetensors) create their files 0600
            fsync_path(item)
        if out.exists():
            old = parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_path(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: writing failed: {exc.strerror or exc}") from None
        raise


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
    parent = _writable_parent(out)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        _usual_mode(Path(name), folder=False)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write {out.name} there: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, out)
        fsync_path(parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: writing failed: {exc.strerror or exc}") from None
        raise
