"""Files written whole or not at all: :func:`write_atomic`, :func:`atomic_file`, :func:`atomic_folder`.

Each writes beside its destination, fsyncs and renames, so a run killed at any moment leaves the
previous file intact and no temporary behind. A full disk or quota (``ENOSPC``, ``EDQUOT``) raises
:class:`~hjepa_kit.errors.DiskFull`, naming the folder, the bytes needed and the bytes free. The
checkpoints, the evaluation report, ``hjepa export``, ``hjepa embed`` and ``hjepa tune`` all write
with these; plugins reach them through :mod:`hjepa_kit.helpers`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import DiskFull, OutputError, UserError

__all__ = ["write_atomic", "atomic_file", "atomic_folder", "fsync_path", "format_bytes", "RUN_AGAIN"]


#: What a failed write tells the user to do by default (a checkpoint says how to resume instead).
RUN_AGAIN = "Free space there, then run the command again."

_DISK_FULL = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def format_bytes(count: float) -> str:
    """``count`` bytes for a person: ``512 bytes``, ``4.2 kB``, ``92.4 MB``, ``1.50 GB`` (powers of 1000)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}" if unit == "GB" else f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def fsync_path(path: str | os.PathLike[str]) -> None:
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


def _fsync_strict(path: Path) -> None:
    """fsync a written file, raising: a network or quota file system may report a full disk only here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _usual_mode(path: Path, folder: bool) -> None:
    """Give a temporary file or folder (created 0600 / 0700) the mode a plain ``open`` / ``mkdir`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError of a failed write: ``exc`` itself, or the one behind a RuntimeError (torch.save wraps its writer's)."""
    if isinstance(exc, OSError):
        return exc
    if not isinstance(exc, RuntimeError):
        return None
    inner = exc.__cause__ or exc.__context__
    return inner if isinstance(inner, OSError) else None


def _size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder; 0 when it is gone."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _write_failed(exc: OSError, target: Path, *, written: int, needed: int | None, error: Callable[[str], UserError],
                  then: str) -> UserError:
    """The error of a write to ``target`` that failed with ``exc`` after ``written`` bytes (the temporary is gone)."""
    reason = exc.strerror or str(exc)
    if exc.errno not in _DISK_FULL:
        return error(f"{target}: writing failed: {reason}")
    folder = target.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    need = max(needed or 0, written)
    if needed:
        wants = f"{target.name} needs about {format_bytes(need)}"
    elif written:
        wants = f"{target.name} needs more than the {format_bytes(written)} written before the disk filled"
    else:
        wants = f"{target.name} found no room"
    return DiskFull(
        f"{target}: writing failed: {reason}: {wants}, and {folder} has {format_bytes(free)} free. {then}",
        folder=folder, needed=need, free=free,
    )


def _new_temporary(target: Path, *, folder: bool, what: str | None, error: Callable[[str], UserError]) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        doing = f"cannot write {what} there" if what else f"cannot create the folder for {target.name}"
        reason = "a file stands on that path, not a folder" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else exc.strerror or exc
        raise error(f"{parent}: {doing}: {reason}") from None
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(name)
        _usual_mode(tmp, folder=folder)
    except OSError as exc:
        raise error(f"{parent}: cannot write {what or target.name} there: {exc.strerror or exc}") from None
    return tmp


@contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, needed: int | None = None, what: str | None = None,
    error: Callable[[str], UserError] = OutputError, then: str = RUN_AGAIN,
) -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; when the block succeeds it is fsynced and renamed to ``path``.

    For writers that take a file name or open their own handle (``np.save``, safetensors). The
    temporary file exists (empty) before the block runs, so an unwritable folder fails before any
    long work. An existing ``path`` is replaced; until the rename it is untouched.

    Args:
        path: the file to write.
        needed: the bytes the file will take, when known: a full disk's message states it.
        what: the file's kind in messages (``checkpoints``); default: its name.
        error: the :class:`~hjepa_kit.errors.UserError` class raised when writing fails.
        then: what a full disk's message tells the user to do.

    Raises:
        DiskFull: the disk or quota is full (the temporary is removed, ``path`` is as it was).
        UserError: (``error``) the folder cannot be created or written.
    """
    target = Path(path)
    tmp = _new_temporary(target, folder=False, what=what, error=error)
    try:
        yield tmp
        _fsync_strict(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException as exc:
        written = _size_of(tmp)
        tmp.unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is not None:
            raise _write_failed(cause, target, written=written, needed=needed, error=error, then=then) from None
        raise


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str | Callable[[IO[bytes]], object], *, needed: int | None = None,
    what: str | None = None, error: Callable[[str], UserError] = OutputError, then: str = RUN_AGAIN,
) -> Path:
    """Write ``data`` to ``path`` whole or not at all (temporary file beside it, fsync, rename).

    Args:
        path: the file to write; an existing one is replaced.
        data: bytes, text (written as UTF-8), or a function writing to the open binary handle
            (``lambda f: torch.save(state, f)``).
        needed: the bytes the file will take, when known (bytes and text: their length).
        what, error, then: as for :func:`atomic_file`.

    Returns:
        ``path``.

    Raises:
        DiskFull: the disk or quota is full; ``path`` is as it was and no temporary is left.
        UserError: (``error``) the folder cannot be created or written.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, bytes):
        needed = len(data)
    target = Path(path)
    with atomic_file(target, needed=needed, what=what, error=error, then=then) as tmp:
        with open(tmp, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
    return target


@contextmanager
def atomic_folder(
    path: str | os.PathLike[str], *, error: Callable[[str], UserError] = OutputError, then: str = RUN_AGAIN,
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    Every file written into it is fsynced; an existing ``path`` is replaced (moved aside, then
    removed) only after the block succeeded.

    Raises:
        DiskFull: the disk or quota is full (the temporary folder is removed).
        UserError: (``error``) the folder cannot be created or written.
    """
    target = Path(path)
    parent = target.parent
    tmp = _new_temporary(target, folder=True, what=None, error=error)
    try:
        yield tmp
        for item in tmp.iterdir():
            if item.is_file():
                _usual_mode(item, folder=False)  # some writers (safetensors) create their files 0600
                _fsync_strict(item)
        if target.exists():
            old = parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_path(parent)
    except BaseException as exc:
        written = _size_of(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _os_error(exc)
        if cause is not None:
            raise _write_failed(cause, target, written=written, needed=None, error=error, then=then) from None
        raise
