"""One run at a time in a run folder: an exclusive lock that rank 0 holds for the whole of ``Trainer.fit``.

Two ``hjepa train`` with the same output folder and name (or a ``--resume auto`` while the first
still runs) would write the same ``latest.pth``, ``metrics.jsonl`` and TensorBoard files. The
first takes ``fcntl.flock`` on ``<log folder>/.hjepa-run.lock`` and writes its pid and host into
it; the second finds the lock taken and stops with the holder's pid and host. A run that ends
removes the file.

The lock belongs to the process, not to the file: the operating system releases it when the
holder exits in any way (SIGKILL, a crash), so the file a killed run leaves is simply taken over by
the next one. On a system without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
from pathlib import Path

from ..errors import UserError

__all__ = ["LOCK_NAME", "RunLock", "RunFolderBusy"]

log = logging.getLogger("hjepa_kit")

#: The lock file's name in the run's log folder.
LOCK_NAME = ".hjepa-run.lock"


class RunFolderBusy(UserError):
    """Another process holds the run folder's lock.

    Attributes:
        folder: the run's log folder.
        holder: what the lock file says of its holder (``pid 123 on host node1 since ...``).
    """

    def __init__(self, message: str, *, folder: Path, holder: str) -> None:
        super().__init__(message)
        self.folder = folder
        self.holder = holder


def _describe(text: str) -> str:
    """``pid P on host H (since T)`` from the lock file's ``pid=P host=H since=T`` line."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if "pid" not in fields:
        return "a process that has not written its pid yet"
    since = f" (since {fields['since']})" if "since" in fields else ""
    return f"pid {fields['pid']} on host {fields.get('host', '?')}{since}"


class RunLock:
    """The exclusive lock of one run folder; a context manager, or :meth:`acquire` / :meth:`release`.

    Args:
        folder: the run's log folder (created if missing).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        #: The holder a lock left behind by a process that died without releasing it (``pid P on host H ...``), or None.
        self.taken_over: str | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or refuse: another live process holds it.

        Raises:
            RunFolderBusy: another process holds it; the message names the folder, the holder's pid
                and host, and what to do.
            UserError: the lock file cannot be created (the folder is not writable).
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return self
        if self._fd is not None:
            return self
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(
                    f"{self.folder}: the output folder cannot be written ({exc.strerror or exc}); choose another with --output-dir"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if not isinstance(exc, BlockingIOError):  # a file system without locks (some NFS setups)
                    os.close(fd)
                    log.warning("%s: cannot lock the run folder (%s); nothing stops a second run from writing into it",
                                self.folder, exc.strerror or exc)
                    return self
                holder = _describe(_read(fd))
                os.close(fd)
                raise RunFolderBusy(
                    f"{self.folder}: another run is using this run folder: {holder} holds its lock ({self.path.name}). "
                    "Wait for it to end or stop it, or give this run another --name or --output-dir to keep both; "
                    "`--resume auto` continues that run once it has stopped (a killed run's lock is taken over)",
                    folder=self.folder, holder=holder,
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # locked a file the last holder removed while releasing it: lock the new one
        left = _read(fd).strip()
        self.taken_over = _describe(left) if left else None
        since = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} since={since}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up and remove the file (a file left behind is a killed run's)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink()  # while still locked: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not one removed since it was opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
