"""SIGReg (LeJEPA's sketched isotropic-Gaussian regulariser) and its place in the losses."""

from __future__ import annotations

import math

import pytest
import torch

from hjepa_kit.plugins.losses import SmoothL1PredictionLoss, variance_loss
from hjepa_kit.plugins.sigreg import SIGReg, epps_pulley


def hand_epps_pulley(z: list[float], t_max: float = 3.0, knots: int = 17) -> float:
    """The statistic written out with Python floats: N * sum_t w_t |phi_N(t) - exp(-t^2/2)|^2."""
    n = len(z)
    total = 0.0
    step = t_max / (knots - 1)
    for j in range(knots):
        t = j * step
        trap = step / 2 if j in (0, knots - 1) else step
        gauss = math.exp(-t * t / 2)
        re = sum(math.cos(t * x) for x in z) / n
        im = sum(math.sin(t * x) for x in z) / n
        total += 2 * trap * gauss * ((re - gauss) ** 2 + im**2)
    return n * total


def test_epps_pulley_matches_the_hand_computed_value() -> None:
    z = [-1.5, -0.2, 0.1, 0.4, 2.0]
    got = epps_pulley(torch.tensor(z).unsqueeze(1))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(hand_epps_pulley(z), rel=1e-5)
    # Two columns are two independent tests.
    both = epps_pulley(torch.tensor([z, [3 * v for v in z]]).T)
    assert both[1].item() == pytest.approx(hand_epps_pulley([3 * v for v in z]), rel=1e-5)


def test_a_gaussian_sample_scores_about_one_and_a_constant_scores_n() -> None:
    g = torch.Generator().manual_seed(0)
    gaussian = epps_pulley(torch.randn(4096, 64, generator=g)).mean().item()
    assert 0.7 < gaussian < 1.4  # expectation 1.06 under the null
    constant = epps_pulley(torch.zeros(100, 3))
    assert torch.allclose(constant, torch.full((3,), constant[0].item()))
    assert constant[0].item() > 30  # grows with N: 100 * 0.42
    assert epps_pulley(torch.zeros(200, 1)).item() == pytest.approx(2 * constant[0].item(), rel=1e-5)


def test_sigreg_falls_from_a_collapsed_batch_under_gradient_descent() -> None:
    torch.manual_seed(0)
    sigreg = SIGReg(num_slices=64)
    base = torch.randn(1, 32)
    x = (base + 0.01 * torch.randn(128, 32)).requires_grad_(True)  # nearly collapsed
    optimizer = torch.optim.Adam([x], lr=0.05)
    first = sigreg(x).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = sigreg(x)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = torch.stack([sigreg(x) for _ in range(8)]).mean().item()
    assert first > 50
    assert last < first / 10
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_sigreg_draws_the_same_directions_for_the_same_seed_and_call() -> None:
    x = torch.randn(64, 16)
    a, b = SIGReg(num_slices=8, seed=3), SIGReg(num_slices=8, seed=3)
    assert a(x).item() == b(x).item()
    assert a(x).item() != SIGReg(num_slices=8, seed=4)(x).item()


def test_sigreg_refuses_a_single_embedding() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        SIGReg()(torch.randn(1, 8))


def test_prediction_loss_adds_sigreg_on_pooled_or_token_embeddings() -> None:
    torch.manual_seed(0)
    predictions = [torch.randn(4, 2, 3, 8)]
    targets = [torch.randn(4, 2, 3, 8)]
    context = torch.randn(4, 5, 8)
    plain = SmoothL1PredictionLoss((1.0,))(predictions, targets, context)
    pooled = SmoothL1PredictionLoss((1.0,), sigreg_weight=0.5, regularise="pooled", sigreg_slices=16)
    tokens = SmoothL1PredictionLoss((1.0,), sigreg_weight=0.5, regularise="tokens", sigreg_slices=16)
    out_pooled = pooled(predictions, targets, context)
    out_tokens = tokens(predictions, targets, context)
    assert set(out_pooled.terms) == {"level0", "sigreg"}
    assert out_pooled.total.item() == pytest.approx(plain.total.item() + 0.5 * out_pooled.terms["sigreg"].item(), rel=1e-6)
    # Same directions (same seed, first call): pooled sees 4 rows, tokens 20 rows.
    expected_pooled = SIGReg(num_slices=16)(context.mean(dim=1))
    expected_tokens = SIGReg(num_slices=16)(context.reshape(20, 8))
    assert out_pooled.terms["sigreg"].item() == pytest.approx(expected_pooled.item(), rel=1e-6)
    assert out_tokens.terms["sigreg"].item() == pytest.approx(expected_tokens.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no context"):
        pooled(predictions, targets)


def test_sigreg_may_see_the_pooled_embeddings_while_vicreg_sees_the_tokens() -> None:
    torch.manual_seed(0)
    predictions, targets = [torch.randn(4, 2, 3, 8)], [torch.randn(4, 2, 3, 8)]
    context = torch.randn(4, 5, 8)
    loss = SmoothL1PredictionLoss((1.0,), variance_weight=1.0, sigreg_weight=0.5, sigreg_slices=16,
                                  regularise="tokens", sigreg_regularise="pooled")  # fmt: skip
    out = loss(predictions, targets, context)
    assert set(out.terms) == {"level0", "variance", "pooled_sigreg"}
    assert out.terms["pooled_sigreg"].item() == pytest.approx(SIGReg(num_slices=16)(context.mean(dim=1)).item(), rel=1e-6)
    assert out.terms["variance"].item() == pytest.approx(variance_loss(context).item(), rel=1e-6)
    with pytest.raises(ValueError, match="sigreg_regularise must be"):
        SmoothL1PredictionLoss((1.0,), sigreg_weight=0.5, sigreg_regularise="images")


def test_pooled_regularisers_of_a_single_image_are_zero_and_keep_the_graph() -> None:
    loss = SmoothL1PredictionLoss((1.0,), variance_weight=1.0, sigreg_weight=0.5, regularise="pooled")
    context = torch.randn(1, 5, 8, requires_grad=True)
    out = loss([torch.randn(1, 2, 3, 8)], [torch.randn(1, 2, 3, 8)], context)
    assert out.terms["sigreg"].item() == 0.0 and out.terms["variance"].item() == 0.0
    out.total.backward()
    assert context.grad is not None


def test_a_resumed_sigreg_run_draws_the_same_directions(tmp_path):
    """SIGReg's call counter is saved with the loss: resuming after epoch 1 ends with the uninterrupted weights."""
    import hjepa_kit
    from conftest import tiny_config
    from hjepa_kit.training.checkpoint import load_checkpoint

    loss = {"name": "smooth_l1", "params": {"sigreg_weight": 0.05}}

    def run(folder, **training):
        config = tiny_config(tmp_path / folder, loss=loss, callbacks=[], training={"epochs": 2, **training})
        return config

    straight = hjepa_kit.train(run("straight"), console=False)
    first = hjepa_kit.train(run("resumed", max_steps=6), console=False)
    assert first.status == "stopped"
    state = load_checkpoint(first.checkpoints["final"])
    assert state["loss"]["sigreg._extra_state"]["calls"] > 0
    resumed = hjepa_kit.train(run("resumed"), resume=first.checkpoints["final"], console=False)
    a = load_checkpoint(straight.checkpoints["final"])["model"]
    b = load_checkpoint(resumed.checkpoints["final"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
