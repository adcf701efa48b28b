"""Tests of the ``smooth_l1`` and ``mse`` losses and their variance/covariance regulariser."""

from __future__ import annotations

import pytest
import torch

from hjepa_kit.contracts import BuildContext, Loss, Masks, call_loss
from hjepa_kit.errors import ConfigError
from hjepa_kit.params import describe
from hjepa_kit.plugins import losses
from hjepa_kit.plugins.losses import (
    MSEParams,
    SmoothL1Params,
    build_mse,
    build_smooth_l1,
    cell_means,
    cell_table,
    covariance_loss,
    variance_loss,
)


def make_ctx(level_weights=(1.0, 0.5), num_levels=None) -> BuildContext:
    num_levels = len(level_weights) if num_levels is None else num_levels
    return BuildContext(image_size=32, grid_size=(8, 8), embed_dim=8, num_levels=num_levels, level_weights=level_weights)


def levels(*offsets: float, shape=(2, 3, 4, 8)):
    """Targets per level, and predictions that differ from them by a constant offset per level."""
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randn(shape, generator=gen) for _ in offsets]
    return [t + offset for t, offset in zip(targets, offsets)], targets


@pytest.mark.parametrize("build", [build_smooth_l1, build_mse])
def test_perfect_predictions_cost_nothing(build):
    params = SmoothL1Params() if build is build_smooth_l1 else MSEParams()
    loss = build(params, make_ctx())
    predictions, targets = levels(0.0, 0.0)
    out = loss(predictions, targets)
    assert isinstance(loss, Loss)
    assert out.total.item() == 0.0
    assert set(out.terms) == {"level0", "level1"}


def test_smooth_l1_matches_hand_computed_values_and_level_weights():
    # |d| = 0.5 < beta = 1: 0.5 * d**2 / beta = 0.125; |d| = 2 >= beta: |d| - beta / 2 = 1.5
    loss = build_smooth_l1(SmoothL1Params(), make_ctx((1.0, 0.5)))
    out = loss(*levels(0.5, -2.0))
    assert out.terms["level0"].item() == pytest.approx(0.125)
    assert out.terms["level1"].item() == pytest.approx(1.5)
    assert out.total.item() == pytest.approx(0.125 + 0.5 * 1.5)


def test_smooth_l1_beta_moves_the_quadratic_zone():
    # |d| = 0.25 < beta = 0.5: 0.5 * 0.0625 / 0.5 = 0.0625; |d| = 1 >= 0.5: 1 - 0.25 = 0.75
    loss = build_smooth_l1(SmoothL1Params(beta=0.5), make_ctx((1.0, 1.0)))
    out = loss(*levels(0.25, 1.0))
    assert out.terms["level0"].item() == pytest.approx(0.0625)
    assert out.terms["level1"].item() == pytest.approx(0.75)


def test_mse_matches_hand_computed_values_and_level_weights():
    loss = build_mse(MSEParams(), make_ctx((2.0, 0.0, 1.0)))
    out = loss(*levels(0.5, 3.0, 1.0))
    assert [out.terms[f"level{i}"].item() for i in range(3)] == pytest.approx([0.25, 9.0, 1.0])
    assert out.total.item() == pytest.approx(2.0 * 0.25 + 0.0 * 9.0 + 1.0 * 1.0)


def test_targets_are_constants_and_predictions_get_gradients():
    predictions, targets = levels(0.5, 0.5)
    predictions = [p.requires_grad_() for p in predictions]
    targets = [t.requires_grad_() for t in targets]
    build_smooth_l1(SmoothL1Params(), make_ctx()).forward(predictions, targets).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictions)
    assert all(t.grad is None for t in targets)


def test_bf16_inputs_give_a_float32_total():
    predictions, targets = levels(0.5, 0.5)
    out = build_mse(MSEParams(), make_ctx())([p.bfloat16() for p in predictions], [t.bfloat16() for t in targets])
    assert out.total.dtype == torch.float32


def test_level_weights_come_from_the_build_context():
    with pytest.raises(ConfigError, match=r"num_levels=3 but level_weights=\(1.0, 0.5\)"):
        build_smooth_l1(SmoothL1Params(), make_ctx((1.0, 0.5), num_levels=3))
    with pytest.raises(ConfigError, match="build the predictor first"):
        build_mse(MSEParams(), BuildContext(image_size=32))
    assert build_mse(MSEParams(), make_ctx((1.0, 0.25))).level_weights == (1.0, 0.25)


def test_mismatched_inputs_name_the_shapes_and_counts():
    loss = build_smooth_l1(SmoothL1Params(), make_ctx())
    predictions, targets = levels(0.0, 0.0)
    with pytest.raises(ValueError, match=r"level 1: predictions have shape \(2, 3, 4, 8\) but targets have shape \(2, 3, 5, 8\)"):
        loss(predictions, [targets[0], torch.zeros(2, 3, 5, 8)])
    with pytest.raises(ValueError, match="got 1 prediction levels, 2 target levels and 2 level weights"):
        loss(predictions[:1], targets)


def test_regulariser_off_adds_nothing_even_for_collapsed_context():
    loss = build_smooth_l1(SmoothL1Params(), make_ctx())
    predictions, targets = levels(0.5, 0.5)
    out = loss(predictions, targets, context=torch.ones(2, 10, 8))
    assert set(out.terms) == {"level0", "level1"}
    assert out.total.item() == pytest.approx(1.5 * 0.125)


def test_regulariser_penalises_collapsed_context_only():
    params = SmoothL1Params(variance_weight=2.0, covariance_weight=1.0)
    loss = build_smooth_l1(params, make_ctx())
    predictions, targets = levels(0.0, 0.0)
    collapsed = loss(predictions, targets, context=torch.full((2, 10, 8), 3.0))
    # Every dimension's std is sqrt(0 + 1e-4) = 0.01: hinge 1 - 0.01; no covariance at all.
    assert collapsed.terms["variance"].item() == pytest.approx(0.99)
    assert collapsed.terms["covariance"].item() == 0.0
    assert collapsed.total.item() == pytest.approx(2.0 * 0.99)
    spread = loss(predictions, targets, context=torch.randn(2, 500, 8, generator=torch.Generator().manual_seed(0)) * 3)
    assert spread.terms["variance"].item() == 0.0
    with pytest.raises(ValueError, match="no context was given"):
        loss(predictions, targets)


def test_variance_gradient_spreads_nearly_collapsed_features():
    gen = torch.Generator().manual_seed(0)
    context = (torch.ones(4, 16, 8) + 1e-2 * torch.randn(4, 16, 8, generator=gen)).requires_grad_()
    loss = build_mse(MSEParams(variance_weight=1.0, std_target=1.0), make_ctx())
    predictions, targets = levels(0.0, 0.0)
    loss(predictions, targets, context).total.backward()
    stepped = context.detach() - 0.1 * context.grad
    before = context.detach().reshape(-1, 8).std(0)
    after = stepped.reshape(-1, 8).std(0)
    assert (after > before).all()


def test_covariance_loss_matches_hand_computed_values():
    correlated = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # cov = [[2, 2], [2, 2]]: (2**2 + 2**2) / 2 = 4
    assert covariance_loss(correlated).item() == pytest.approx(4.0)
    independent = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert covariance_loss(independent).item() == pytest.approx(0.0)
    assert variance_loss(independent * 2, std_target=1.0).item() == 0.0
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        variance_loss(torch.zeros(1, 4))


def test_registers_both_losses_with_documented_params():
    registered = {}
    losses.hjepa_register_losses(lambda name, factory, **kw: registered.update({name: (factory, kw)}))
    assert registered["smooth_l1"][0] is build_smooth_l1 and registered["smooth_l1"][1]["params"] is SmoothL1Params
    assert registered["mse"][0] is build_mse and registered["mse"][1]["params"] is MSEParams
    for params in (SmoothL1Params, MSEParams):
        assert all(row.help for row in describe(params))
    with pytest.raises(ValueError, match="beta"):
        SmoothL1Params(beta=0.0)


def test_cell_means_average_the_tokens_of_each_image_and_cell():
    # A 4 x 4 grid in 2 x 2 cells: in image 0, patches 0, 1, 4 share cell 0 and patch 10 is in cell 3.
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 3.0], [7.0, 7.0]],
                           [[2.0, 2.0], [4.0, 4.0], [6.0, 6.0], [8.0, 8.0]]])
    indices = torch.tensor([[0, 1, 4, 10], [15, 2, 3, 0]])
    rows = cell_means(tokens, indices, (4, 4), 2)
    # Image 0: cell 0 = mean of 3 tokens, cell 3 = token 4; image 1: cell 0 (patch 0), cell 1 (patches 2, 3), cell 3 (15).
    expected = torch.tensor([[3.0, 1.0], [7.0, 7.0], [8.0, 8.0], [5.0, 5.0], [2.0, 2.0]])
    assert torch.allclose(rows, expected)
    # One-patch cells are the tokens themselves.
    assert torch.equal(cell_means(tokens, indices, (4, 4), 1).sort(dim=0).values, tokens.reshape(-1, 2).sort(dim=0).values)
    # A 4 x 5 grid: column 4 is a one-patch-wide edge cell; patches 4, 9 share one, 14, 19 the next.
    edge = cell_means(tokens[:1], torch.tensor([[4, 9, 14, 19]]), (4, 5), 2)
    assert torch.allclose(edge, torch.tensor([[2.0, 0.0], [6.0, 5.0]]))
    with pytest.raises(ValueError, match="do not match"):
        cell_means(tokens, indices[:, :3], (4, 4), 2)


def test_cell_table_keeps_shapes_fixed_and_weighted_terms_match_the_kept_rows():
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 5, 6, generator=gen)
    indices = torch.stack([torch.randperm(16, generator=gen)[:5] for _ in range(3)])
    means, held = cell_table(tokens, indices, (4, 4), 2)
    assert means.shape == (3 * 4, 6) and held.shape == (12,)  # 4 cells per image, whatever the positions
    kept = cell_means(tokens, indices, (4, 4), 2)
    assert torch.equal(means[held > 0], kept) and (means[held == 0] == 0).all()
    assert int(held.sum()) == kept.shape[0] < 12  # 5 patches of 16 leave cells empty in some image
    # The weighted terms are the plain terms of the kept rows: empty cells change nothing.
    assert variance_loss(means, 1.0, weights=held).item() == pytest.approx(variance_loss(kept, 1.0).item(), rel=1e-5)
    assert covariance_loss(means, weights=held).item() == pytest.approx(covariance_loss(kept).item(), rel=1e-5)
    means.requires_grad_(True)
    variance_loss(means, 1.0, weights=held).backward()
    assert (means.grad[held == 0] == 0).all() and means.grad[held > 0].abs().sum() > 0


def test_token_cell_regularises_cell_means_and_asks_for_the_positions():
    ctx = make_ctx()
    gen = torch.Generator().manual_seed(0)
    predictions, targets = levels(0.0, 0.0)
    # Each image: 16 tokens on the 8 x 8 grid, the four of each 2 x 2 cell equal up to sign: the
    # tokens spread, their cell means do not.
    base = torch.randn(2, 4, 8, generator=gen) * 3
    context = torch.cat([base, -base, base, -base], dim=1)  # (2, 16, 8)
    cells = torch.tensor([0, 1, 8, 9])  # the 2 x 2 cell at the grid's corner
    corners = torch.stack([cells + 2 * k for k in range(4)])  # four cells along the first rows
    indices = corners.T.reshape(1, 16).repeat(2, 1)  # token j*4+k -> cell k, position j
    plain = build_smooth_l1(SmoothL1Params(variance_weight=1.0), ctx)
    cell = build_smooth_l1(SmoothL1Params(variance_weight=1.0, token_cell=2), ctx)
    assert not plain.uses_context_indices and cell.uses_context_indices
    masks = Masks(context=indices, targets=torch.zeros(2, 3, 4, dtype=torch.long))
    assert call_loss(plain, predictions, targets, context, masks).terms["variance"].item() == 0.0
    assert call_loss(cell, predictions, targets, context, masks).terms["variance"].item() == pytest.approx(0.99)
    with pytest.raises(ValueError, match="no context_indices"):
        cell(predictions, targets, context)
    with pytest.raises(ValueError, match="needs the context's positions"):
        call_loss(cell, predictions, targets, context)
    # The pooled side never needs positions.
    assert not build_mse(MSEParams(variance_weight=1.0, token_cell=2, regularise="pooled"), ctx).uses_context_indices
    with pytest.raises(ConfigError, match="grid"):
        build_mse(MSEParams(variance_weight=1.0, token_cell=2), BuildContext(image_size=32, num_levels=2, level_weights=(1.0, 0.5)))


def test_std_target_schedule_falls_linearly_then_holds_and_follows_the_step_call_loss_passes():
    params = SmoothL1Params(variance_weight=1.0, std_target=1.0, std_target_end=0.5, std_target_steps=4)
    loss = build_smooth_l1(params, make_ctx())
    assert [loss.std_target_at(s) for s in (0, 1, 2, 4, 10)] == pytest.approx([1.0, 0.875, 0.75, 0.5, 0.5])
    predictions, targets = levels(0.0, 0.0)
    collapsed = torch.full((2, 10, 8), 3.0)  # every dimension's std is sqrt(1e-4) = 0.01
    # Before any step the hinge asks for the start; call_loss moves it to the step it is given.
    assert loss(predictions, targets, collapsed).terms["variance"].item() == pytest.approx(0.99)
    assert call_loss(loss, predictions, targets, collapsed, step=2).terms["variance"].item() == pytest.approx(0.74)
    assert call_loss(loss, predictions, targets, collapsed, step=9).terms["variance"].item() == pytest.approx(0.49)
    # No step (the memory estimate, an evaluation): the schedule stays where it is.
    assert call_loss(loss, predictions, targets, collapsed).terms["variance"].item() == pytest.approx(0.49)
    # Without a schedule set_step changes nothing.
    constant = build_smooth_l1(SmoothL1Params(variance_weight=1.0, std_target=0.7), make_ctx())
    constant.set_step(1000)
    assert constant.std_target == pytest.approx(0.7)


def test_std_target_schedule_needs_both_ends():
    for params in (SmoothL1Params(std_target_end=0.5), MSEParams(std_target_steps=300)):
        build = build_smooth_l1 if isinstance(params, SmoothL1Params) else build_mse
        with pytest.raises(ConfigError, match="set both, or neither"):
            build(params, make_ctx())
    with pytest.raises(ValueError, match="std_target_steps"):
        SmoothL1Params(std_target_end=0.5, std_target_steps=0)
    with pytest.raises(ValueError, match="give both"):
        losses.SmoothL1PredictionLoss((1.0,), std_target_end=0.5)


def test_pooled_std_target_asks_the_pooled_context_for_its_own_spread():
    torch.manual_seed(0)
    # Two images whose tokens spread by about 1 around their own means, which sit 0.2 apart in every
    # dimension: the tokens meet a target of 1 nearly, the pooled context (two rows 0.2 apart, std
    # about 0.14) does not.
    context = torch.randn(2, 64, 8) + torch.tensor([[[0.0]], [[0.2]]])
    predictions, targets = levels(0.0, 0.0)
    same = build_smooth_l1(SmoothL1Params(variance_weight=1.0, regularise="both"), make_ctx())
    own = build_smooth_l1(SmoothL1Params(variance_weight=1.0, regularise="both", pooled_std_target=0.1), make_ctx())
    a, b = same(predictions, targets, context).terms, own(predictions, targets, context).terms
    assert a["variance"].item() == pytest.approx(b["variance"].item())  # the tokens' hinge is unchanged
    pooled_std = torch.sqrt(context.mean(dim=1).var(dim=0) + 1e-4)  # as variance_loss, with its eps
    assert a["pooled_variance"].item() == pytest.approx((1.0 - pooled_std).clamp(min=0).mean().item(), abs=1e-5)
    assert b["pooled_variance"].item() == pytest.approx((0.1 - pooled_std).clamp(min=0).mean().item(), abs=1e-5)
    assert b["pooled_variance"].item() < 0.05 < a["pooled_variance"].item()
    # `regularise: pooled` alone uses it too, and the tokens' schedule does not move it.
    scheduled = build_smooth_l1(SmoothL1Params(variance_weight=1.0, regularise="pooled", pooled_std_target=0.1,
                                               std_target_end=0.5, std_target_steps=4), make_ctx())
    value = call_loss(scheduled, predictions, targets, context, step=10).terms["variance"].item()
    assert value == pytest.approx(b["pooled_variance"].item(), abs=1e-6)
    with pytest.raises(ValueError, match="pooled_std_target"):
        SmoothL1Params(pooled_std_target=0.0)


def test_pooled_by_max_asks_one_token_of_each_image_to_stand_out():
    torch.manual_seed(0)
    # Eight images whose tokens share one mean; in each image one token carries an image-specific
    # peak in every dimension. The means of the images barely differ, their maxima do.
    context = 0.1 * torch.randn(8, 16, 4)
    context[:, 3] += 1.0 + 2.0 * torch.rand(8, 4)
    predictions, targets = levels(0.0, 0.0)
    mean = build_smooth_l1(SmoothL1Params(variance_weight=1.0, covariance_weight=0.04, regularise="pooled"), make_ctx())
    peak = build_smooth_l1(SmoothL1Params(variance_weight=1.0, covariance_weight=0.04, regularise="pooled", pooled_by="max"),
                           make_ctx())
    a, b = mean(predictions, targets, context).terms, peak(predictions, targets, context).terms
    rows = context.amax(dim=1)
    assert b["variance"].item() == pytest.approx(variance_loss(rows).item(), abs=1e-6)
    assert b["covariance"].item() == pytest.approx(covariance_loss(rows).item(), rel=1e-5)
    assert a["variance"].item() == pytest.approx(variance_loss(context.mean(dim=1)).item(), abs=1e-6)
    assert b["variance"].item() < a["variance"].item() - 0.1
    # The gradient reaches the tokens that hold each image's maximum, and no other.
    leaf = context.clone().requires_grad_(True)
    peak(predictions, targets, leaf).total.backward()
    touched = leaf.grad.abs().sum(dim=(0, 2)) > 0
    assert touched.tolist() == [i == 3 for i in range(16)]
    # The tokens' side is untouched by it.
    both = build_smooth_l1(SmoothL1Params(variance_weight=1.0, regularise="both", pooled_by="max"), make_ctx())
    terms = both(predictions, targets, context).terms
    assert terms["variance"].item() == pytest.approx(variance_loss(context).item(), abs=1e-6)
    assert terms["pooled_variance"].item() == pytest.approx(b["variance"].item(), abs=1e-6)
    with pytest.raises(ValueError, match="pooled_by"):
        losses.SmoothL1PredictionLoss((1.0,), variance_weight=1.0, pooled_by="median")


def test_centre_tokens_asks_for_spread_within_images_and_leaves_the_pooled_side_between_them():
    torch.manual_seed(0)
    # Four images, each a large offset of its own (std about 2 between images) plus tokens that barely
    # differ within it: uncentred, the offsets meet the hinge; centred, only the small spread counts.
    offsets = 2.0 * torch.randn(4, 1, 8)
    context = offsets + 0.05 * torch.randn(4, 32, 8)
    predictions, targets = levels(0.0, 0.0)
    plain = build_smooth_l1(SmoothL1Params(variance_weight=1.0, covariance_weight=0.04, regularise="both"), make_ctx())
    centred = build_smooth_l1(SmoothL1Params(variance_weight=1.0, covariance_weight=0.04, regularise="both",
                                             centre_tokens=True), make_ctx())
    a, b = plain(predictions, targets, context).terms, centred(predictions, targets, context).terms
    assert a["variance"].item() < 0.3
    within = context - context.mean(dim=1, keepdim=True)
    assert b["variance"].item() == pytest.approx(variance_loss(within).item(), abs=1e-6)
    assert b["variance"].item() > 0.9
    assert b["covariance"].item() == pytest.approx(covariance_loss(within).item(), rel=1e-5)
    # The pooled terms see the images' means either way.
    assert b["pooled_variance"].item() == pytest.approx(a["pooled_variance"].item(), abs=1e-6)
    # Centring moves no token: the same images shifted by one vector score the same.
    shifted = centred(predictions, targets, context + 5.0).terms
    assert shifted["variance"].item() == pytest.approx(b["variance"].item(), abs=1e-5)
    # With grid cells the cells' means are centred on the image's mean.
    cells = build_smooth_l1(SmoothL1Params(variance_weight=1.0, token_cell=2, centre_tokens=True), make_ctx())
    indices = torch.arange(32).repeat(4, 1)
    value = call_loss(cells, predictions, targets, context, Masks(context=indices, targets=indices[:, None, :4])).terms["variance"]
    means, held = cell_table(within, indices, (8, 8), 2)
    assert value.item() == pytest.approx(variance_loss(means, weights=held).item(), abs=1e-5)


def test_centre_tokens_and_pooled_std_target_refuse_a_regulariser_that_never_uses_them():
    with pytest.raises(ConfigError, match="centre_tokens.*regularise: pooled"):
        build_smooth_l1(SmoothL1Params(variance_weight=1.0, regularise="pooled", centre_tokens=True), make_ctx())
    with pytest.raises(ConfigError, match="pooled_std_target=0.5.*regularise: tokens"):
        build_mse(MSEParams(variance_weight=1.0, pooled_std_target=0.5), make_ctx())
    with pytest.raises(ConfigError, match="pooled_by: max.*regularise: tokens"):
        build_smooth_l1(SmoothL1Params(variance_weight=1.0, pooled_by="max"), make_ctx())
    # SIGReg on the pooled context gives the max something to act on.
    build_smooth_l1(SmoothL1Params(variance_weight=1.0, pooled_by="max", sigreg_weight=0.05, sigreg_regularise="pooled"),
                    make_ctx())
    # SIGReg on the tokens gives the centring something to act on.
    build_smooth_l1(SmoothL1Params(variance_weight=1.0, regularise="pooled", centre_tokens=True, sigreg_weight=0.05,
                                   sigreg_regularise="tokens"), make_ctx())


def test_collapse_remedies_drop_the_centring_and_the_pooled_target_they_leave_nothing_for():
    both = build_smooth_l1(SmoothL1Params(variance_weight=1.0, covariance_weight=0.04, regularise="both",
                                          centre_tokens=True, pooled_std_target=0.75, pooled_by="max"), make_ctx())
    assert both.collapse_remedies() == [{"variance_weight": 1.0, "covariance_weight": 0.04, "regularise": "tokens",
                                         "pooled_std_target": None, "pooled_by": "mean", "centre_tokens": False}]
    tokens = build_smooth_l1(SmoothL1Params(variance_weight=1.0, centre_tokens=True), make_ctx())
    assert tokens.collapse_remedies() == [{"variance_weight": 2.0, "centre_tokens": False}]
    # Every remedy builds: the resumed run's loss is valid.
    for loss, params in ((both, dict(variance_weight=1.0, covariance_weight=0.04, regularise="both", centre_tokens=True,
                                     pooled_std_target=0.75, pooled_by="max")), (tokens, dict(variance_weight=1.0, centre_tokens=True))):
        build_smooth_l1(SmoothL1Params(**{**params, **loss.collapse_remedies()[0]}), make_ctx())
