"""Built-in callbacks: TensorBoard scalars and a terminal progress bar (tqdm) with ETA.

A callback is an object whose methods implement lifecycle hooks (``hjepa_step_end`` ...); the run
registers it with the plugin manager while it trains.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from hjepa_kit import hookimpl
from hjepa_kit.params import param


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
        for tag, value in step_scalars(step, metrics, self.params.every_steps).items():
            self.writer.add_scalar(tag, value, step)

    @hookimpl
    def hjepa_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in epoch_scalars(metrics).items():
            self.writer.add_scalar(key, value, trainer.step)
        self.writer.add_scalar("epoch/loss", metrics.get("loss", float("nan")), epoch)
        self.writer.flush()

    @hookimpl
    def hjepa_fit_end(self, trainer: Any, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("run/status", status, trainer.step)
            self.writer.close()
            self.writer = None


def step_scalars(step: int, metrics: Mapping[str, float], every_steps: int) -> dict[str, float]:
    """The scalars the ``tensorboard`` callback writes for one step, by tag; empty on steps it skips.

    The experiment trackers (:mod:`hjepa_kit.plugins.trackers`) log the same scalars at the same steps.
    """
    # Loss terms and gradient norms come on the steps that log a line (the trainer reads them
    # from the device only then); feature statistics on their own schedule: both are written.
    forced = any(k.startswith(("features/", "loss", "grad_norm")) for k in metrics)
    if step % every_steps and not forced:
        return {}
    return {_tag(key): value for key, value in metrics.items() if key != "eta_s"}


def epoch_scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    """The epoch figures written at the epoch's last step: online evaluation and health (``epoch/loss`` aside)."""
    return {key: value for key, value in metrics.items() if key.startswith(("online/", "health/"))}


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
    """A tqdm bar on stderr over the run's optimizer steps: epoch, loss, images/s and ETA.

    One bar for the whole run, from ``trainer.step`` (a resumed run starts where it stopped) to
    ``trainer.total_steps``, closed when the run ends. With ``enabled: auto`` the bar is drawn only
    when the stream is a terminal: logs and CI get nothing. While the bar is shown, the run log's
    console lines are written above it instead of through it.
    """

    def __init__(self, params: ProgressBarParams, stream: Any = None) -> None:
        self.params = params
        self.stream = stream or sys.stderr
        self.active = params.enabled == "on" or (params.enabled == "auto" and _isatty(self.stream))
        self.bar: Any = None
        self.loss = float("nan")  # the last logged loss
        self._redirected: list[tuple[logging.StreamHandler, Any]] = []

    @hookimpl
    def hjepa_fit_start(self, trainer: Any) -> None:
        if self.active and self.bar is None:
            self._open(trainer)

    @hookimpl
    def hjepa_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        if self.bar is None:
            self._open(trainer)
        epochs = getattr(getattr(getattr(trainer, "config", None), "training", None), "epochs", None)
        if epochs is not None:
            self.bar.set_description_str(f"epoch {trainer.epoch + 1}/{epochs}", refresh=False)
        self.loss = metrics.get("loss", self.loss)  # present on the steps that log a line
        self.bar.set_postfix_str(f"loss {self.loss:.4f}, {metrics.get('images_per_s', 0.0):.1f} img/s", refresh=False)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)  # draws at most every refresh_secs

    @hookimpl
    def hjepa_fit_end(self, trainer: Any, status: str) -> None:
        self._restore_log()
        if self.bar is not None:
            self.bar.close()  # draws the final state and leaves it on its line
            self.bar = None

    def _open(self, trainer: Any) -> None:
        from tqdm import tqdm

        total = int(trainer.total_steps or 0)
        done = int(trainer.step)  # a resumed run starts where it stopped
        self.bar = tqdm(
            total=total or None,
            initial=min(done, total) if total else done,
            unit="step",
            file=self.stream,
            mininterval=self.params.refresh_secs,
            dynamic_ncols=True,
            leave=True,
            disable=False,
        )
        self._redirect_log()

    def _redirect_log(self) -> None:
        """Have the run log's console handlers on this stream write above the bar."""
        for handler in logging.getLogger("hjepa_kit").handlers:
            if type(handler) is logging.StreamHandler and handler.stream is self.stream:
                self._redirected.append((handler, handler.setStream(_AboveTheBar(self.bar, self.stream))))

    def _restore_log(self) -> None:
        for handler, stream in self._redirected:
            if isinstance(handler.stream, _AboveTheBar):
                handler.setStream(stream)
        self._redirected.clear()


class _AboveTheBar:
    """A stream for a log handler: each write clears the bar, writes the text, and redraws the bar below it."""

    def __init__(self, bar: Any, stream: Any) -> None:
        self.bar = bar
        self.stream = stream

    def write(self, text: str) -> None:
        with self.bar.get_lock():
            self.bar.clear(nolock=True)
            self.stream.write(text)
            self.bar.refresh(nolock=True)

    def flush(self) -> None:
        self.stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _build_tensorboard(params: TensorBoardParams, ctx: Any) -> TensorBoardCallback:
    return TensorBoardCallback(params)


def _build_progress_bar(params: ProgressBarParams, ctx: Any) -> ProgressBar:
    return ProgressBar(params)


@hookimpl
def hjepa_register_callbacks(register: Any) -> None:
    register("tensorboard", _build_tensorboard, params=TensorBoardParams, summary="TensorBoard scalars: losses per level, LR, momentum, feature health")
    register("progress_bar", _build_progress_bar, params=ProgressBarParams, summary="Progress bar with images/s and ETA on a terminal")
