"""training.early_stopping: the stop, its log line, final.pth, and what --resume does after it."""

from __future__ import annotations

import pytest
import torch

import hjepa_kit
from hjepa_kit.config import EarlyStoppingConfig
from hjepa_kit.training.epoch_policy import EarlyStopping


def test_patience_counts_epochs_without_an_improvement_above_min_delta() -> None:
    stopping = EarlyStopping(EarlyStoppingConfig(metric="online/knn/top1@20", patience=2, min_delta=0.01), "encoder")
    figures = [0.50, 0.60, 0.605, 0.608]  # the last two are within min_delta of 0.60
    stops = [stopping.update({"online/knn/top1@20": v, "loss": 1.0}, epoch) for epoch, v in enumerate(figures, 1)]
    assert stops == [False, False, False, True]
    assert stopping.best == 0.60 and stopping.best_epoch == 2
    assert "online/knn/top1@20 has not improved by more than 0.01 for 2 epochs" in stopping.reason()


def test_losses_are_minimised_and_mode_overrides() -> None:
    loss = EarlyStopping(EarlyStoppingConfig(metric="loss", patience=1), "encoder")
    assert [loss.update({"loss": v}, e) for e, v in enumerate([1.0, 0.5, 0.6], 1)] == [False, False, True]
    forced = EarlyStopping(EarlyStoppingConfig(metric="loss", mode="max", patience=1), "encoder")
    assert [forced.update({"loss": v}, e) for e, v in enumerate([1.0, 0.5], 1)] == [False, True]


def test_state_round_trips() -> None:
    a = EarlyStopping(EarlyStoppingConfig(metric="loss", patience=3), "encoder")
    for e, v in enumerate([1.0, 1.0, 1.0], 1):
        a.update({"loss": v}, e)
    b = EarlyStopping(EarlyStoppingConfig(metric="loss", patience=3), "encoder")
    b.load_state_dict(a.state_dict())
    assert b.update({"loss": 1.0}, 4) is True


@pytest.mark.slow
def test_a_run_stops_early_writes_final_and_resumes_predictably(tiny) -> None:
    never_better = {"metric": "loss", "patience": 2, "min_delta": 100.0}
    config = tiny(training={"epochs": 8, "early_stopping": never_better}, evaluation={"online": None}, callbacks=[])
    result = hjepa_kit.train(config, console=False)
    assert result.status == "stopped" and result.epochs == 3  # epoch 1 sets the best, 2 and 3 do not beat it
    final = torch.load(result.checkpoints["final"], weights_only=True)
    assert final["epoch"] == 3 and final["early_stopping"]["stale"] == 2
    log = (result.log_dir / "training.log").read_text()
    assert "early stopping: loss has not improved by more than 100 for 2 epochs" in log

    # Resuming with the same patience stops at once, saying why; nothing is trained.
    again = hjepa_kit.train(config, resume="auto", console=False)
    assert again.status == "stopped" and again.steps == result.steps and again.epochs == 3
    assert "resumed after the stop" in (result.log_dir / "training.log").read_text()

    # More patience continues the count: two more epochs, then the stop.
    config["training"]["early_stopping"] = {**never_better, "patience": 4}
    more = hjepa_kit.train(config, resume="auto", console=False)
    assert more.status == "stopped" and more.epochs == 5 and more.steps > result.steps
