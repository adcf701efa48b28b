"""Exceptions that describe a user's mistake.

Every error a user can cause (a bad config, an unknown plugin name, a damaged dataset folder, a
foreign checkpoint) is a :class:`UserError`: the command line prints its message without a
traceback and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: printed without traceback, exit status 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file or override is invalid.

    Attributes:
        problems: one line per problem, each naming the key path, the value and what is allowed.
        source: the file (or ``<mapping>``) the configuration came from.
    """

    def __init__(self, problems: list[str] | str, source: str = "<config>") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""  # overrides name themselves (--set 'KEY=VALUE': ...)
        if len(self.problems) == 1:
            message = f"{prefix}{self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{prefix}{len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class PluginError(UserError):
    """A plugin is broken or misused (import failure, unknown hook, duplicate name, factory error)."""


class DataError(UserError):
    """A dataset is missing, damaged or of the wrong shape."""


class CheckpointError(UserError):
    """A checkpoint cannot be read, is not ours, or does not match the configuration."""


class TrainingStopped(UserError):
    """Training stopped on purpose (non-finite loss, memory budget); the message says why and what to do."""


class CollapseDetected(TrainingStopped):
    """The representation collapsed and ``training.on_collapse`` is ``stop``; the message names the last healthy checkpoint."""


class OutputError(UserError):
    """An output path cannot be used: it exists (and no ``force``), or it cannot be written."""


class DiskFull(CheckpointError, OutputError):
    """A write failed on a full disk or quota (``ENOSPC``, ``EDQUOT``); the previous file is intact, no temporary is left.

    It is both a :class:`CheckpointError` and an :class:`OutputError`: code that catches the
    error of a failed checkpoint or output write catches a full disk too.

    Attributes:
        folder: the folder written to.
        needed: the bytes the write needed (at least).
        free: the bytes free there after the failed write was removed.
    """

    def __init__(self, message: str, *, folder: object = None, needed: int = 0, free: int = 0) -> None:
        super().__init__(message)
        self.folder = folder
        self.needed = needed
        self.free = free
