"""The commands a stopped run prints: the core's remedies plus those the loss component declares."""

from __future__ import annotations

from pathlib import Path

from hjepa_kit.plugins.losses import SmoothL1PredictionLoss
from hjepa_kit.training.remedies import fallback_commands, loss_remedies


def test_core_remedies_resume_the_checkpoint_from_the_resolved_config():
    text = fallback_commands(Path("logs/run/config.yaml"), Path("ckpt/latest.pth"), 1e-3)
    lines = text.splitlines()
    assert lines == [
        "  hjepa train --config logs/run/config.yaml --set training.lr=0.0002 --resume ckpt/latest.pth",
        "  hjepa train --config logs/run/config.yaml --set training.ema_momentum=[0.999,1.0] --resume ckpt/latest.pth",
    ]
    assert "--resume" not in fallback_commands(Path("c.yaml"), None, 1e-3)


def test_a_loss_adds_its_own_remedy_as_one_command():
    text = fallback_commands(Path("c.yaml"), None, 1e-3, [{"variance_weight": 1.0, "regularise": "tokens", "levels": [1, 2]}])
    assert text.splitlines()[-1] == (
        "  hjepa train --config c.yaml --set loss.params.variance_weight=1 --set loss.params.regularise=tokens "
        "--set loss.params.levels=[1,2]")


def test_builtin_loss_suggests_vicreg_on_tokens():
    assert loss_remedies(SmoothL1PredictionLoss((1.0,), sigreg_weight=0.05)) == [{"variance_weight": 1.0, "covariance_weight": 0.04}]
    pooled = SmoothL1PredictionLoss((1.0,), variance_weight=1.0, regularise="pooled")
    assert loss_remedies(pooled) == [{"variance_weight": 1.0, "covariance_weight": 0.04, "regularise": "tokens"}]
    assert loss_remedies(SmoothL1PredictionLoss((1.0,), variance_weight=1.0, covariance_weight=0.04)) == [{"variance_weight": 2.0}]


def test_a_loss_without_remedies_or_with_a_broken_one_adds_none():
    class Plain:
        pass

    class Broken:
        def collapse_remedies(self):
            raise RuntimeError("boom")

    assert loss_remedies(Plain()) == [] and loss_remedies(Broken()) == []
