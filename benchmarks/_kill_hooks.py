"""What ``kills.py`` installs in the process it kills: a hook on file writes that SIGKILLs at a chosen moment.

The hook lives here, in the benchmark, never in hjepa-kit: it wraps ``open`` (``builtins.open`` and
``io.open``) and ``os.replace`` of the killed process only, for files under one folder. A write
is named by the file's name with the random part of a temporary's name taken out
(``.latest.pth.k2j3x.tmp`` -> ``.latest.pth.*.tmp``), and by its occurrence (the 2nd write of that
name). The points of a write where it kills:

- ``mid``: after a given number of bytes have reached the file (they are flushed first, so the
  file holds exactly those bytes);
- ``before_rename``: the file is written and fsynced, its ``os.replace`` onto the final name is
  about to run;
- ``after_rename``: the ``os.replace`` returned, the folder is not yet fsynced.

With ``kill=None`` the hook only records the writes (name, occurrence, bytes written, renames), so
that a run never killed lists the moments a killed one may be stopped at.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

__all__ = ["install", "normalise", "KillingWrites"]

_TEMPORARY = re.compile(r"^(\..+)\.[^.]+\.(tmp|old)$")


def normalise(path: str | os.PathLike[str], root: Path) -> str:
    """``path`` relative to ``root``, with the random part of every temporary name replaced by ``*``."""
    parts = []
    for part in Path(os.path.abspath(path)).relative_to(root).parts:
        found = _TEMPORARY.match(part)
        part = f"{found.group(1)}.*.{found.group(2)}" if found else part
        parts.append(re.sub(r"^events\.out\.tfevents\..*", "events.out.tfevents.*", part))  # time, host and pid in the name
    return "/".join(parts)


class _CountingFile:
    """A file opened for writing: counts the bytes written, and kills the process at ``limit`` bytes."""

    def __init__(self, handle: Any, owner: "KillingWrites", event: dict[str, Any], limit: int | None) -> None:
        self._handle, self._owner, self._event, self._limit = handle, owner, event, limit

    def write(self, data: Any) -> int:
        size = len(data)
        if self._limit is not None and self._event["bytes"] + size >= self._limit:
            part = self._limit - self._event["bytes"]
            self._handle.write(data[:part])
            self._handle.flush()
            self._owner.die()
        self._event["bytes"] += size
        return self._handle.write(data)

    def fileno(self) -> int:
        # Writers that find a descriptor write to it directly (PIL); without one they call write().
        raise io.UnsupportedOperation("fileno")

    def close(self) -> None:
        if self._limit is not None:  # fewer bytes than the limit: the kill comes before the file is closed
            self._handle.flush()
            self._owner.die()
        self._handle.close()

    def __enter__(self) -> "_CountingFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class KillingWrites:
    """Records the writes under ``root``; with ``kill`` (``{"name", "occurrence", "point", "bytes"}``) SIGKILLs at that moment."""

    def __init__(self, root: str | os.PathLike[str], kill: dict[str, Any] | None = None, record: str | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.kill = kill
        self.record = record
        self.events: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}
        self._real_open = builtins.open  # the record is written with it, unhooked

    def die(self) -> None:
        self.save()
        os.kill(os.getpid(), signal.SIGKILL)

    def save(self) -> None:
        if self.record:
            with self._real_open(self.record, "w", encoding="utf-8") as handle:
                json.dump(self.events, handle)

    def _mine(self, path: Any) -> str | None:
        try:
            return normalise(os.fsdecode(path), self.root) if isinstance(path, (str, bytes, os.PathLike)) else None
        except (ValueError, TypeError):
            return None

    def _occurrence(self, name: str) -> int:
        self._seen[name] = self._seen.get(name, 0) + 1
        return self._seen[name]

    def _targets(self, name: str, occurrence: int, point: str) -> bool:
        kill = self.kill
        return kill is not None and kill["point"] == point and kill["name"] == name and kill["occurrence"] == occurrence

    def open(self, real: Any, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real(file, mode, *args, **kwargs)
        name = self._mine(file) if any(c in mode for c in "wax+") else None
        if name is None:
            return handle
        event = {"kind": "write", "name": name, "occurrence": self._occurrence(name), "bytes": 0}
        self.events.append(event)
        limit = int(self.kill["bytes"]) if self._targets(name, event["occurrence"], "mid") else None
        return _CountingFile(handle, self, event, limit)

    def replace(self, real: Any, src: Any, dst: Any, **kwargs: Any) -> None:
        name = self._mine(dst)
        if name is None:
            return real(src, dst, **kwargs)
        occurrence = self._occurrence(f"rename:{name}")
        self.events.append({"kind": "rename", "name": name, "source": self._mine(src), "occurrence": occurrence})
        if self._targets(name, occurrence, "before_rename"):
            self.die()
        real(src, dst, **kwargs)
        if self._targets(name, occurrence, "after_rename"):
            self.die()


def install(hook: KillingWrites) -> None:
    """Wrap ``open``, ``io.open`` and ``os.replace`` of this process (the killed one) with ``hook``."""
    real_open, real_replace = builtins.open, os.replace

    def hooked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return hook.open(real_open, file, mode, *args, **kwargs)

    def hooked_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        hook.replace(real_replace, src, dst, **kwargs)

    builtins.open = io.open = hooked_open
    os.replace = hooked_replace
