"""A short seeded run of the shipped quickstart on the embedded digits, scored before and after, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import hjepa_kit


class InitialFigures:
    """Scores the untrained network with the run's own online evaluator, before the first step."""

    def __init__(self) -> None:
        self.figures: dict = {}

    @hjepa_kit.hookimpl
    def hjepa_fit_start(self, trainer) -> None:
        self.figures = trainer.online_evaluation()


def short_quickstart(tmp_path: Path, interpolation: str, epochs: int):
    """The first ``epochs`` of the quickstart's own 8-epoch schedule (39 steps of 32 x 2 views each) on the
    digits drawn with ``interpolation``; returns (k-NN before, k-NN after, the run's result, its logged losses)."""
    initial = InitialFigures()
    result = hjepa_kit.train(
        "quickstart", plugins=[initial], console=False,
        overrides=[f"output_dir={tmp_path}", f"training.max_steps={39 * epochs}", "training.threads=2", "callbacks=[]",
                   f"data.dataset.params.interpolation={interpolation}", "logging.interval_steps=1",
                   f"evaluation.online_every_epochs={epochs}",  # the k-NN at the end alone: the run is what is tested
                   "checkpoint.save_final=false"],
    )
    records = [json.loads(line) for line in (result.log_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return initial.figures["online/knn/top1@20"], result.metrics["online/knn/top1@20"], result, losses
