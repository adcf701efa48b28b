"""Checkpoints written before the restructuring of the core still load, evaluate the same and resume.

``tests/data/legacy_checkpoint.pt`` is the structure of a tiny run's final checkpoint written by the
code of 2026-11-28 (``scripts/make_legacy_checkpoint.py``): every key, the configuration, the
optimizer state and RNG state as written, with the large tensors replaced by seeded fill markers, and
the features that code computed from the filled checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

import hjepa_kit
from conftest import tiny_config
from hjepa_kit.evaluation.pretrained import load_pretrained
from legacy import fill

FIXTURE = Path(__file__).parent / "data" / "legacy_checkpoint.pt"


def _legacy(tmp_path: Path) -> tuple[Path, dict]:
    stored = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    path = tmp_path / "legacy.pth"
    torch.save(fill(stored["checkpoint"]), path)
    return path, stored


def test_legacy_checkpoint_gives_the_same_features(tmp_path):
    path, stored = _legacy(tmp_path)
    model = load_pretrained(path).model
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    features = model.features(images)
    assert set(features) == set(stored["reference"])
    for name, reference in stored["reference"].items():
        torch.testing.assert_close(features[name], reference, rtol=1e-4, atol=1e-5, msg=f"representation {name}")


def test_legacy_checkpoint_resumes(tmp_path):
    path, stored = _legacy(tmp_path)
    assert stored["checkpoint"]["epoch"] == 1
    # The legacy run finished its epoch: one more is an extension (--extend-epochs 1).
    result = hjepa_kit.train(tiny_config(tmp_path, training={"epochs": 2}, callbacks=[]), resume=path, extend_epochs=1,
                             console=False)
    assert result.status == "completed"
    state = torch.load(result.checkpoints["final"], map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["step"] > stored["checkpoint"]["step"]
