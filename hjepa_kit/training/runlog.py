"""The run's log: output folders, training.log and console handlers, the per-interval figures, durations.

Every module logs to the ``hjepa_kit`` logger; a run attaches a file handler (``training.log``)
and, unless quiet, a console handler while it trains. :class:`LogWindow` counts the images,
optimizer steps and time of one logging interval, for the images/s and the ETA of its line; it
holds no loss (the step sums the loss terms on the device and the trainer reads them per line).
The module imports no torch: the progress bar callback uses :func:`format_duration`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .runlock import RunLock

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..contracts import BuildContext

__all__ = [
    "LogWindow", "format_duration", "prepare_output_folder", "open_run_log", "close_run_log", "log_interval", "open_metrics_log",
]

log = logging.getLogger("hjepa_kit")


def prepare_output_folder(folder: Path) -> None:
    """Create ``folder`` and check that it can be written.

    Raises:
        UserError: it cannot be (the message proposes ``--output-dir``).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        try:
            kept = folder.is_dir() and any(p.suffix == ".pth" for p in folder.iterdir())
        except OSError:
            kept = False
        resume = " (to continue from a checkpoint kept here: --output-dir NEW --resume CHECKPOINT)" if kept else ""
        raise UserError(
            f"{folder}: the output folder cannot be written ({exc.strerror or exc}); choose another with --output-dir{resume}"
        ) from None


def open_run_log(log_dir: Path, console: bool) -> list[logging.Handler]:
    """Attach ``<log_dir>/training.log`` (and, with ``console``, stderr) to the package's logger.

    On a terminal the console leaves out the interval lines: the progress bar shows those figures,
    and the console keeps the epoch summaries and warnings. The console also leaves out the
    :class:`~hjepa_kit.errors.UserError` that ends a run: it is raised to the caller, who reports
    it (``hjepa train`` prints it once); ``training.log`` keeps it.

    Returns:
        The handlers attached, for :func:`close_run_log`.
    """
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    _end_line(log_dir / "training.log")  # a killed run's last line may be cut short: this run's first starts a line
    file_handler = logging.FileHandler(log_dir / "training.log", encoding="utf-8")
    file_handler.setFormatter(fmt)
    handlers: list[logging.Handler] = [file_handler]
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        if sys.stderr.isatty():
            stream.addFilter(lambda record: not getattr(record, "interval", False))
        stream.addFilter(_not_a_user_error)
        handlers.append(stream)
    for handler in handlers:
        log.addHandler(handler)
    return handlers


def _not_a_user_error(record: logging.LogRecord) -> bool:
    """False for the record of a UserError ending the run (``log.error("%s", exc)``)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (record.levelno >= logging.ERROR and len(args) == 1 and isinstance(args[0], UserError))


def _end_line(path: Path) -> None:
    """Append a newline to ``path`` when it does not end with one (a file that does not exist is left alone)."""
    try:
        with open(path, "rb+") as handle:
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
    except FileNotFoundError:
        pass


def open_metrics_log(log_dir: Path, *, main: bool = True) -> Any:
    """Open ``<log_dir>/metrics.jsonl`` to append records (rank 0; other ranks get a handle that writes nowhere).

    Each record is one whole line, written and flushed at once, but a run killed during the write
    may leave part of one: that part is cut off first (the log says so), so the file holds whole
    JSON lines and the resumed run's first record starts a line of its own.
    """
    if not main:
        return open(os.devnull, "w", encoding="utf-8")
    path = log_dir / "metrics.jsonl"
    try:
        with open(path, "rb+") as handle:
            size = end = handle.seek(0, os.SEEK_END)
            keep = 0
            while end > 0:  # back to the last newline, a block at a time
                start = max(end - 65536, 0)
                handle.seek(start)
                newline = handle.read(end - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            if keep < size:
                handle.truncate(keep)
                log.warning("%s: removed the last %d bytes, a record cut short by a run that was killed", path, size - keep)
    except FileNotFoundError:
        pass
    return open(path, "a", encoding="utf-8")


def close_run_log(handlers: list[logging.Handler]) -> None:
    """Detach and close the handlers of :func:`open_run_log`; the list is emptied."""
    for handler in handlers:
        log.removeHandler(handler)
        handler.close()
    handlers.clear()


def open_run_outputs(
    log_dir: Path, checkpoint_dir: Path, console: bool, *, main: bool = True, lock: RunLock | None = None
) -> list[logging.Handler]:
    """Prepare the run's folders, take the run folder's ``lock`` and open its log (rank 0 only: the other ranks write nothing).

    Raises:
        RunFolderBusy: another run holds the lock; nothing of that run's files was touched.
    """
    log.setLevel(logging.INFO)
    log.propagate = False
    if not main:
        return []
    for folder in (log_dir, checkpoint_dir):
        prepare_output_folder(folder)
    if lock is not None:
        lock.acquire()  # before anything is removed or appended to
    try:
        from .checkpoint import remove_stale_temporaries

        remove_stale_temporaries(checkpoint_dir)
        handlers = open_run_log(log_dir, console)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if lock is not None and lock.taken_over:
        log.info("%s: took over the lock left by %s, which is no longer running", lock.path, lock.taken_over)
    return handlers


def log_run_start(
    cfg: RunConfig, *, model: Any, ctx: BuildContext, device: Any, bf16: bool, threads: int, compiled: bool, images: int,
    steps_per_epoch: int, log_dir: Path, checkpoint_dir: Path,
) -> None:
    """The two lines a run starts its log with: what trains where, and for how long.

    Args:
        cfg: the run's configuration.
        model: the :class:`~hjepa_kit.model.HJEPA` (its encoder's and predictor's sizes are logged).
        ctx: the build context (image size, patch grid).
        device: where the model runs.
        bf16: whether the step runs under bf16 autocast.
        threads: the CPU threads of the run.
        compiled: whether the model is compiled (its first steps then compile).
        images: training images one process sees per epoch.
        steps_per_epoch: optimizer steps per epoch.
        log_dir, checkpoint_dir: the run's folders.
    """
    params = sum(p.numel() for p in model.context_encoder.parameters())
    pred = sum(p.numel() for p in model.predictor.parameters())
    log.info(
        "run %s: %s on %s (%s, %d threads%s), %d images of %dpx, grid %s, encoder %.1fM params, predictor %.1fM",
        cfg.name, cfg.model.encoder.name, device, "bf16" if bf16 else "fp32", threads,
        ", compiled: the first steps compile" if compiled else "",
        images, ctx.image_size, "x".join(map(str, ctx.grid_size or ())), params / 1e6, pred / 1e6,
    )
    views = cfg.data.views
    per_step = cfg.data.batch_size * cfg.training.accumulation_steps
    batch = f"batch {cfg.data.batch_size} x accumulation {cfg.training.accumulation_steps} = {per_step}"
    if views > 1:  # every image of the batch is seen `views` times: the encoder sees views x per_step images
        batch += f" images x {views} views = {per_step * views} through the encoder"
    log.info("%d epochs x %d steps (%s); logs: %s; checkpoints: %s", cfg.training.epochs, steps_per_epoch, batch,
             log_dir, checkpoint_dir)


def log_interval(metrics: Mapping[str, float], *, epoch: int, epochs: int, step: int, total_steps: int, rss_mb: float) -> None:
    """Log the line of one interval: position, loss per level, schedules, speed, ETA, peak memory.

    ``epoch`` is 1-based; ``rss_mb`` is the peak resident memory. The record is marked ``interval``: on a terminal the console leaves it out.
    """
    levels = " ".join(f"{k.removeprefix('loss/')} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    log.info(
        "epoch %d/%d step %d/%d loss %.4f %s lr %.3g momentum %.5f %.1f img/s ETA %s rss %.0fMB",
        epoch, epochs, step, total_steps, metrics["loss"], levels,
        metrics["lr"], metrics["momentum"], metrics["images_per_s"], format_duration(metrics["eta_s"]), rss_mb,
        extra={"interval": True},
    )


class LogWindow:
    """One logging interval as the host sees it: images, optimizer steps and time (the loss terms stay on the device)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new interval."""
        self.started = time.perf_counter()
        self.images = 0
        self.steps = 0

    def add(self, images: int) -> None:
        """Count one micro-batch of ``images`` images."""
        self.images += images

    def step(self) -> None:
        """Count one optimizer step."""
        self.steps += 1

    def images_per_s(self) -> float:
        """Images per second since the interval started."""
        return self.images / max(time.perf_counter() - self.started, 1e-9)

    def seconds_per_step(self) -> float:
        """Seconds per optimizer step since the interval started."""
        return (time.perf_counter() - self.started) / max(self.steps, 1)


def format_duration(seconds: float) -> str:
    """``1h05m`` from an hour up, ``4m07s`` below (negative durations read as zero)."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
