"""The shipped two-view configurations share one recipe, scaled by the rule their comments state.

``quickstart``, ``cifar10_native32`` and ``gpu_cifar10`` differ in data, size, batch and length;
what was measured on the Quality page (predictor, loss, views, augmentation, EMA start, weight
decay, evaluated representation) must be the same in all three, and the learning rate must follow
``5e-4 x sqrt(images per step / 64)``. A recipe change made in one file and not the others fails here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import pytest

from hjepa_kit.config import load_config
from hjepa_kit.registry import Registry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE_CONFIGS = ("quickstart", "cifar10_native32", "gpu_cifar10")
BASE_LR, BASE_IMAGES = 5.0e-4, 64  # the quickstart's rate at 32 images x 2 views


def recipe(name: str) -> dict[str, Any]:
    """The parts of a configuration that make its recipe, with component parameters resolved."""
    config = load_config(CONFIGS / f"{name}.yaml")
    resolved = Registry().resolve(config, name)
    masker = attrs.asdict(resolved["model.masker"][1])
    masker.pop("fixed_shapes")  # how the masks are batched (a speed and compile choice), not what they mask
    predictor_params = resolved["model.predictor"][1]
    predictor = attrs.asdict(predictor_params)
    predictor["level_weights"] = predictor_params.resolved_level_weights  # unset means 0.5**level
    training = config.training
    return {
        "predictor": (config.model.predictor.name, predictor),
        "masker": (config.model.masker.name, masker),
        "loss": (config.loss.name, attrs.asdict(resolved["loss"][1])),
        "views": config.data.views,
        "image_size": config.data.image_size,
        "augmentation": attrs.asdict(config.data.augmentation),
        "ema_start": training.ema_momentum[0],
        "weight_decay": (training.weight_decay, training.final_weight_decay),
        "representation": config.evaluation.representation,
    }


@pytest.mark.parametrize("name", RECIPE_CONFIGS[1:])
def test_the_cifar10_configs_take_the_quickstarts_recipe(name):
    quickstart, other = recipe("quickstart"), recipe(name)
    differing = {key: (quickstart[key], other[key]) for key in quickstart if quickstart[key] != other[key]}
    assert differing == {}, f"configs/{name}.yaml departs from the quickstart's recipe: {differing}"


@pytest.mark.parametrize("name", RECIPE_CONFIGS)
def test_the_learning_rate_follows_the_square_root_rule(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    images = config.data.batch_size * config.data.views
    expected = BASE_LR * math.sqrt(images / BASE_IMAGES)
    # the files round the rule to two significant figures (7.07e-4 -> 7.0e-4)
    assert config.training.lr == pytest.approx(expected, rel=0.02), (name, images, config.training.lr, expected)
