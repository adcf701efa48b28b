"""Label-free health: RankMe of pooled embeddings, the collapse response, best_model.pth without labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hjepa_kit
from hjepa_kit.errors import CollapseDetected
from hjepa_kit.training.epoch_policy import pooled_collapse, select_metric
from hjepa_kit.training.health import HealthMonitor


def test_the_monitor_keeps_the_last_rows_and_measures_their_rank() -> None:
    monitor = HealthMonitor(samples=100)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # 5 batches of 40: only the newest ~100 rows are kept
        monitor.add({"encoder": torch.randn(40, 16, generator=g), "level0": torch.randn(40, 1, generator=g) * torch.ones(1, 16)})
    assert 100 <= monitor._count < 140
    figures = monitor.rankme()
    assert figures["health/rankme/encoder"] > 14  # isotropic: close to the width
    assert figures["health/rankme/level0"] == pytest.approx(1.0, abs=0.01)  # on a line
    assert monitor.rankme() == {}  # forgotten after each measurement
    assert HealthMonitor(0).enabled is False


def test_collapse_problem_names_the_representation_and_threshold() -> None:
    widths = {"encoder": 192, "level0": 192}
    thresholds = {"std_threshold": 0.01, "rank_fraction": 0.05}
    assert pooled_collapse({"health/rankme/encoder": 50.0, "loss": 0.1}, widths, "encoder", **thresholds) is None
    figures = {"health/rankme/encoder": 50.0, "health/rankme/level0": 2.0}
    reason = pooled_collapse(figures, widths, "level0", **thresholds)
    assert "'level0'" in reason and "2.0 of 192" in reason and "9.6" in reason
    # Only the evaluated representation counts.
    assert pooled_collapse(figures, widths, "encoder", **thresholds) is None


def test_select_metric() -> None:
    labelled = {"online/knn/top1@20": 0.8, "health/rankme/encoder": 40.0, "loss": 0.3}
    unlabelled = {"health/rankme/encoder": 40.0, "health/rankme/level1": 30.0, "loss": 0.3}
    # The online evaluator's declared headline figure comes first.
    assert select_metric("auto", labelled, "encoder", "online/knn/top1@20") == ("online/knn/top1@20", 0.8, True)
    assert select_metric("auto", unlabelled, "level1") == ("health/rankme/level1", 30.0, True)
    assert select_metric("auto", {"loss": 0.3}, "encoder") == ("loss", 0.3, False)
    assert select_metric("rankme", labelled, "encoder") == ("health/rankme/encoder", 40.0, True)
    assert select_metric("loss/level0", {"loss/level0": 0.2}, "encoder") == ("loss/level0", 0.2, False)
    assert select_metric("health/rankme/nope", labelled, "encoder")[0] == "loss"


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run.log_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_rankme_is_logged_and_picks_best_model_without_labels(tiny) -> None:
    config = tiny(training={"epochs": 2}, evaluation={"online": None}, callbacks=[])
    result = hjepa_kit.train(config, console=False)
    assert result.status == "completed"
    assert result.metrics["health/rankme/encoder"] > 10
    assert {"health/rankme/level0", "health/rankme/level1"} <= set(result.metrics)
    best = torch.load(result.checkpoints["best_model"], weights_only=True)["best"]
    assert best["metric"] == "health/rankme/encoder"
    # latest.pth carries the same record: a run resumed from it never replaces best_model.pth with a worse epoch
    assert torch.load(result.checkpoints["latest"], weights_only=True)["best"] == best


class ZeroPatchEmbedding:
    """Makes every image look the same to both encoders from ``epoch``'s end: a forced collapse."""

    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def _collapse(self, trainer) -> None:
        with torch.no_grad():
            for encoder in (trainer.model.context_encoder, trainer.model.target_encoder):
                encoder.patch_embed.proj.weight.zero_()
        # No gradient, so AdamW leaves it at zero; the EMA copies the zeros into the target.
        trainer.model.context_encoder.patch_embed.proj.weight.requires_grad_(False)

    @hjepa_kit.hookimpl
    def hjepa_fit_start(self, trainer) -> None:
        if self.after_epoch == 0:
            self._collapse(trainer)

    @hjepa_kit.hookimpl
    def hjepa_epoch_end(self, trainer, epoch, metrics) -> None:
        if epoch == self.after_epoch:
            self._collapse(trainer)


@pytest.mark.slow
def test_a_forced_collapse_stops_the_run_and_keeps_the_last_healthy_checkpoint(tiny) -> None:
    config = tiny(training={"epochs": 3, "on_collapse": "stop"}, evaluation={"online": None}, callbacks=[])
    with pytest.raises(CollapseDetected) as caught:
        hjepa_kit.train(config, plugins=[ZeroPatchEmbedding(after_epoch=1)], console=False)
    message = str(caught.value)
    checkpoints = Path(config["output_dir"]) / "checkpoints" / "tiny"
    latest = checkpoints / "latest.pth"
    # Either monitor may see it first: the target tokens every 2 steps, or the pooled RankMe at the epoch's end.
    assert "representation collapse at epoch 2" in message
    assert "RankMe of the pooled" in message or "of the target tokens" in message
    assert f"the last healthy checkpoint is {latest}" in message
    resolved = Path(config["output_dir"]) / "logs" / "tiny" / "config.yaml"
    assert f"hjepa train --config {resolved} --set training.lr=0.0002 --resume {latest}" in message
    assert torch.load(latest, weights_only=True)["epoch"] == 1  # the collapsed epoch 2 did not overwrite it
    assert not (checkpoints / "final.pth").exists()
    log = (Path(config["output_dir"]) / "logs" / "tiny" / "training.log").read_text()
    assert "status: collapsed" in log


@pytest.mark.slow
def test_a_forced_collapse_only_warns_by_default(tiny) -> None:
    config = tiny(training={"epochs": 2}, evaluation={"online": None}, callbacks=[])
    result = hjepa_kit.train(config, plugins=[ZeroPatchEmbedding(after_epoch=0)], console=False)
    assert result.status == "completed"
    assert result.metrics["health/rankme/encoder"] < 5  # every image pools to the same row (bf16 rounding adds a little)
    log = (result.log_dir / "training.log").read_text()
    assert "representation collapse at epoch 1" in log and "no healthy checkpoint was written" in log


@pytest.mark.slow
def test_a_healthy_run_is_not_stopped(tiny) -> None:
    config = tiny(training={"epochs": 2, "on_collapse": "stop"}, callbacks=[])
    assert hjepa_kit.train(config, console=False).status == "completed"
