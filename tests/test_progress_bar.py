"""The ``progress_bar`` callback: a tqdm bar over the run's steps on a terminal, nothing elsewhere."""

from __future__ import annotations

import io
import logging
import re
import types

import pytest

from hjepa_kit.plugins.callbacks import ProgressBar, ProgressBarParams


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _trainer(step: int = 0, total_steps: int = 10, epochs: int = 2) -> types.SimpleNamespace:
    return types.SimpleNamespace(step=step, total_steps=total_steps, epoch=0,
                                 config=types.SimpleNamespace(training=types.SimpleNamespace(epochs=epochs)))


def _run(bar: ProgressBar, trainer: types.SimpleNamespace, between=None) -> None:
    bar.hjepa_fit_start(trainer=trainer)
    for step in range(trainer.step + 1, trainer.total_steps + 1):
        trainer.step = step
        bar.hjepa_step_end(trainer=trainer, step=step, metrics={"loss": 0.5, "images_per_s": 123.4, "eta_s": 1.0})
        if between is not None and step == trainer.total_steps // 2:
            between()
    bar.hjepa_fit_end(trainer=trainer, status="completed")


def test_on_a_terminal_one_bar_counts_the_steps_with_loss_speed_and_eta():
    stream = Terminal()
    bar = ProgressBar(ProgressBarParams(refresh_secs=0.01), stream=stream)
    assert bar.active
    _run(bar, _trainer(step=3))  # resumed at step 3 of 10
    text = stream.getvalue()
    assert "3/10" in text  # starts where the resumed run stopped
    final = text.rstrip("\n").split("\r")[-1]
    assert "10/10" in final and "100%" in final
    assert "epoch 1/2" in final
    assert "loss 0.5000" in final and "123.4 img/s" in final
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", final)  # elapsed < remaining (the ETA)
    assert text.endswith("\n")  # closed at the end of the run, left on its line
    assert bar.bar is None


def test_log_lines_are_written_above_the_bar_while_it_is_shown():
    stream = Terminal()
    logger = logging.getLogger("hjepa_kit")
    handler = logging.StreamHandler(stream)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        bar = ProgressBar(ProgressBarParams(refresh_secs=0.01), stream=stream)
        _run(bar, _trainer(), between=lambda: logger.info("epoch 1/2 done: loss 0.5"))
        assert handler.stream is stream  # given back at the end of the run
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = stream.getvalue().split("\n")
    # The log line starts on a cleared line, and the bar is drawn again after it.
    assert any(line.endswith("\repoch 1/2 done: loss 0.5") for line in lines)
    assert "10/10" in lines[-2]


@pytest.mark.parametrize(("stream", "enabled"), [(io.StringIO(), "auto"), (Terminal(), "off")])
def test_nothing_is_written_off_a_terminal_or_when_off(stream, enabled):
    bar = ProgressBar(ProgressBarParams(enabled=enabled), stream=stream)
    assert not bar.active
    _run(bar, _trainer())
    assert stream.getvalue() == ""


def test_on_draws_even_off_a_terminal():
    stream = io.StringIO()
    _run(ProgressBar(ProgressBarParams(enabled="on", refresh_secs=0.01), stream=stream), _trainer(total_steps=4))
    assert "4/4" in stream.getvalue()
