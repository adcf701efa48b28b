"""Built-in callbacks: TensorBoard scalars and a terminal progress bar with ETA.

A callback is an object whose methods implement lifecycle hooks (``hjepa_step_end`` ...); the run
registers it with the plugin manager while it trains.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from hjepa_kit import hookimpl
from hjepa_kit.params import param
from hjepa_kit.training.runlog import format_duration


@attrs.frozen(kw_only=True)
class TensorBoardParams:
    """Parameters of the ``tensorboard`` callback."""

    every_steps: int = param(10, help="Write step scalars every N optimizer steps.", ge=1)
    flush_secs: int = param(30, help="Seconds between flushes of the event file.", ge=1)


class TensorBoardCallback:
    """Writes losses per level, LR, momentum, feature std / effective rank and online figures.

    Event files go to the run's log folder (``tensorboard --logdir results/logs/<run>``).
    """

    def __init__(self, params: TensorBoardParams) -> None:
        self.params = params
        self.writer: Any = None

    @hookimpl
    def hjepa_fit_start(self, trainer: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(trainer.log_dir), flush_secs=self.params.flush_secs, purge_step=trainer.step + 1)

    @hookimpl
    def hjepa_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        forced = any(k.startswith("features/") for k in metrics)
        if step % self.params.every_steps and not forced:
            return
        for key, value in metrics.items():
            if key == "eta_s":
                continue
            self.writer.add_scalar(_tag(key), value, step)

    @hookimpl
    def hjepa_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key.startswith(("online/", "health/")):
                self.writer.add_scalar(key, value, trainer.step)
        self.writer.add_scalar("epoch/loss", metrics.get("loss", float("nan")), epoch)
        self.writer.flush()

    @hookimpl
    def hjepa_fit_end(self, trainer: Any, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("run/status", status, trainer.step)
            self.writer.close()
            self.writer = None


def _tag(key: str) -> str:
    if key.startswith(("loss", "features/", "online/")):
        return key if "/" in key else "loss/total"
    return f"train/{key}"


@attrs.frozen(kw_only=True)
class ProgressBarParams:
    """Parameters of the ``progress_bar`` callback."""

    enabled: Literal["auto", "on", "off"] = param("auto", help="auto: only when stderr is a terminal.")
    refresh_secs: float = param(0.5, help="Seconds between redraws.", gt=0.0)


class ProgressBar:
    """A one-line progress bar on stderr: epoch, step, loss, images/s and ETA."""

    def __init__(self, params: ProgressBarParams, stream: Any = None) -> None:
        self.params = params
        self.stream = stream or sys.stderr
        self.active = params.enabled == "on" or (params.enabled == "auto" and self.stream.isatty())
        self._last = 0.0
        self._drawn = False

    @hookimpl
    def hjepa_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        now = time.monotonic()
        if not self.active or (now - self._last < self.params.refresh_secs and step != trainer.total_steps):
            return
        self._last = now
        total = max(trainer.total_steps, 1)
        width = max(10, min(30, shutil.get_terminal_size((100, 20)).columns - 80))
        filled = int(width * step / total)
        bar = "#" * filled + "-" * (width - filled)
        eta = format_duration(metrics.get("eta_s", 0.0))
        text = (
            f"\r[{bar}] {100 * step / total:5.1f}% epoch {trainer.epoch + 1}/{trainer.config.training.epochs} "
            f"step {step}/{total} loss {metrics.get('loss', float('nan')):.4f} "
            f"{metrics.get('images_per_s', 0.0):.1f} img/s ETA {eta}"
        )
        self.stream.write(text + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    @hookimpl
    def hjepa_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        self._newline()

    @hookimpl
    def hjepa_fit_end(self, trainer: Any, status: str) -> None:
        self._newline()

    def _newline(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _build_tensorboard(params: TensorBoardParams, ctx: Any) -> TensorBoardCallback:
    return TensorBoardCallback(params)


def _build_progress_bar(params: ProgressBarParams, ctx: Any) -> ProgressBar:
    return ProgressBar(params)


@hookimpl
def hjepa_register_callbacks(register: Any) -> None:
    register("tensorboard", _build_tensorboard, params=TensorBoardParams, summary="TensorBoard scalars: losses per level, LR, momentum, feature health")
    register("progress_bar", _build_progress_bar, params=ProgressBarParams, summary="Progress bar with images/s and ETA on a terminal")
