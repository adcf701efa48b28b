"""The memory estimate: saved activations measured at 1 and 2 images, scaled to the batch."""

from __future__ import annotations

import pytest
import torch

import hjepa_kit
from conftest import tiny_config
from hjepa_kit.build import build_model
from hjepa_kit.contracts import BuildContext
from hjepa_kit.training.memory import RUNTIME_BYTES, activation_bytes, estimate_peak_memory, saved_activation_bytes
from hjepa_kit.registry import Registry


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = hjepa_kit.load_config(tiny_config(tmp_path_factory.mktemp("memory")))
    ctx = BuildContext(image_size=16, in_chans=3, device=torch.device("cpu"))
    return build_model(Registry().resolve(config), ctx)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_estimate_for_a_batch_matches_what_that_batch_saves(built, dtype):
    args = (built.model, built.loss, built.masker, 16, 3, dtype, torch.device("cpu"))
    measured = saved_activation_bytes(*args, batch_size=6)
    estimated = activation_bytes(built.model, built.loss, built.masker, batch_size=6, image_size=16, in_chans=3,
                                 autocast_dtype=dtype, device=torch.device("cpu"))
    # The masks of 6 images are not those of 1 and 2 (block sizes are drawn per batch): close, not equal.
    assert abs(estimated - measured) <= 0.15 * measured
    one = saved_activation_bytes(*args, batch_size=1)
    assert estimated < 6 * one  # a fixed part (under autocast, the weights' bf16 copies) is not multiplied


def test_under_autocast_the_weight_copies_are_counted_once(built):
    args = (built.model, built.loss, built.masker, 16, 3, torch.bfloat16, torch.device("cpu"))
    one, two = (saved_activation_bytes(*args, batch_size=b) for b in (1, 2))
    fixed = one - (two - one)
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert fixed >= trainable  # at least 1 byte per parameter: the bf16 copies (2 bytes) of most weights


def test_the_estimate_adds_the_runtime_allowance_on_the_cpu_only(built):
    kwargs = dict(batch_size=4, image_size=16, in_chans=3, data_bytes=0, autocast_dtype=None)
    cpu = estimate_peak_memory(built.model, built.loss, built.masker, device=torch.device("cpu"), **kwargs)
    assert cpu.runtime == RUNTIME_BYTES and cpu.total >= RUNTIME_BYTES + cpu.activations
    assert "runtime 1.00" in cpu.describe()
