"""Learning-rate, weight-decay and EMA-momentum schedules."""

from __future__ import annotations

import pytest

from hjepa_kit.training.optim import Schedules


def make(**kw):
    base = dict(total_steps=100, warmup_steps=10, lr=1e-3, start_lr=0.0, min_lr=1e-5, weight_decay=0.04,
                final_weight_decay=0.4, momentum_start=0.996, momentum_end=1.0)
    base.update(kw)
    return Schedules(**base)


def test_warmup_is_linear_and_reaches_the_peak():
    s = make()
    assert s.lr_at(0) == pytest.approx(1e-4)
    assert s.lr_at(4) == pytest.approx(5e-4)
    assert s.lr_at(9) == pytest.approx(1e-3)
    assert s.lr_at(10) == pytest.approx(1e-3)


def test_cosine_decays_to_the_floor_monotonically():
    s = make()
    values = [s.lr_at(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1e-5)
    assert s.lr_at(55) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5), rel=1e-6)


def test_weight_decay_and_momentum_run_from_start_to_end():
    s = make()
    assert s.weight_decay_at(0) == pytest.approx(0.04)
    assert s.weight_decay_at(100) == pytest.approx(0.4)
    assert s.momentum_at(0) == pytest.approx(0.996)
    assert s.momentum_at(50) == pytest.approx(0.998)
    assert s.momentum_at(100) == pytest.approx(1.0)
    assert s.momentum_at(1000) == pytest.approx(1.0)


def test_no_warmup():
    s = make(warmup_steps=0)
    assert s.lr_at(0) == pytest.approx(1e-3)
