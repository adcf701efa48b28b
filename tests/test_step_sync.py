"""A training step never waits for the device: no tensor is read back between log lines.

Reading a tensor's value (``item``, ``float``, ``bool``, ``int``, ``tolist``) blocks the host until
the device has finished; on a GPU that stalls the queue of work. The step keeps loss terms, the
gradient norm and the finite check on the device; the trainer reads them once per log line. The
masker works on the host with its own generator, so its reads are not device reads and are not
counted here.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

import torch

import hjepa_kit
from conftest import tiny_config
from hjepa_kit.runtime import resolve_device
from hjepa_kit.training.trainer import Trainer

READS = ("item", "__float__", "__bool__", "__int__", "tolist")


@contextmanager
def counting_reads(reads: list[str]):
    """Record every tensor read outside a masker while the context is open."""
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            stack = "".join(traceback.format_stack(limit=12))
            if "multiblock.py" not in stack and "grid_masker.py" not in stack:
                reads.append(f"{name}\n{stack}")
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _prepared(tmp_path, **training):
    trainer = Trainer(tiny_config(tmp_path, training={"epochs": 1, **training}, callbacks=[]), console=False)
    trainer.device = resolve_device(trainer.config.device)
    trainer._build()
    trainer.model.train()
    return trainer


def _steps(trainer, count: int) -> None:
    images = next(iter(trainer.loader))[0]
    for step in range(count):
        assert trainer.train_step.feed(images, epoch=0, batch_index=step) is not None


def test_steps_read_nothing_from_the_device(tmp_path):
    trainer = _prepared(tmp_path)
    assert trainer.optimizer.defaults.get("fused"), "the device-side skip needs the fused AdamW"
    _steps(trainer, 1)  # warm-up outside the count
    reads: list[str] = []
    with counting_reads(reads):
        _steps(trainer, 3)
    assert reads == [], f"{len(reads)} device reads in 3 steps; the first:\n{reads[0] if reads else ''}"
    figures = trainer.train_step.read_interval()  # one read per log line
    assert set(figures) >= {"loss", "grad_norm"} and all(v == v for v in figures.values())


def test_a_non_finite_step_is_skipped_on_the_device_and_counted(tmp_path):
    trainer = _prepared(tmp_path)
    _steps(trainer, 1)
    before = [p.detach().clone() for p in trainer.model.context_encoder.parameters()]
    state_steps = [s["step"].clone() for s in trainer.optimizer.state.values()]
    images = next(iter(trainer.loader))[0]
    trainer.train_step.forward_backward(images, epoch=0, micro_index=5, sync=True)
    next(trainer.model.context_encoder.parameters()).grad.fill_(float("nan"))  # a poisoned gradient
    trainer.train_step.optimizer_update(1)
    after = list(trainer.model.context_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a non-finite step changed the parameters"
    assert all(torch.equal(s["step"], old) for s, old in zip(trainer.optimizer.state.values(), state_steps))
    bad = trainer.train_step.non_finite()
    assert (bad.skipped, bad.step, bad.what) == (1, 2, "gradient norm")
    _steps(trainer, 1)  # the next finite step updates again
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.context_encoder.parameters()))
    assert trainer.train_step.non_finite().skipped == 1


def test_max_skipped_steps_lets_a_run_train_past_a_few_bad_steps(tmp_path):
    from test_trainer import NanPlugin  # a loss that turns NaN after N calls

    config = tiny_config(tmp_path, loss={"name": "nan_after", "params": {"after": 9}}, training={"epochs": 2, "max_skipped_steps": 100},
                         callbacks=[])
    result = hjepa_kit.train(config, plugins=[NanPlugin()], console=False)
    assert result.status == "completed"
    assert result.metrics["skipped_steps"] >= 1
