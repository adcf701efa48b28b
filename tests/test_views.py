"""Several augmented views per image: the loader's layout, the cross-view level, its contract."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from hjepa_kit.config import DataConfig
from hjepa_kit.contracts import BuildContext, EncoderOutput, ImageData
from hjepa_kit.data.loader import build_train_loader
from hjepa_kit.plugins.hierarchical import HierarchicalParams, build_hierarchical
from hjepa_kit.testing import check_component
from hjepa_kit.testing.standins import tiny_context
from test_data import _Dataset

D = 32


def make_masks(grid, batch: int, blocks: int = 3, per_block: int = 5, context: int = 10, seed: int = 0):
    """Context patches and target blocks from disjoint parts of a random permutation."""
    from hjepa_kit.contracts import Masks

    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    orders = [torch.randperm(n, generator=gen) for _ in range(batch)]
    return Masks(context=torch.stack([o[:context] for o in orders]),
                 targets=torch.stack([o[context:context + blocks * per_block].view(blocks, per_block) for o in orders]))


def _loader(views: int):
    cfg = attrs.evolve(DataConfig(batch_size=4), views=views)
    return build_train_loader(_Dataset(16), cfg, image_size=8, seed=7)


def test_the_loader_yields_the_views_of_each_image_view_after_view():
    one = list(_loader(1))
    two = list(_loader(2))
    assert len(one) == len(two) == 4
    for (single, labels1), (double, labels2) in zip(one, two):
        assert double.shape == (8, *single.shape[1:])
        assert torch.equal(labels1, labels2)  # labels of the images, once
        assert torch.equal(double[:4], single)  # view 0 draws exactly what a one-view run draws
        assert not torch.equal(double[:4], double[4:])  # view 1 is another crop of the same images


def _predictor(views: int, **params) -> torch.nn.Module:
    ctx = BuildContext(image_size=32, grid_size=(8, 8), patch_size=4, embed_dim=D, depth=4, views=views)
    torch.manual_seed(0)
    return build_hierarchical(HierarchicalParams(width=32, num_heads=2, **params), ctx)


def test_the_cross_view_level_predicts_the_other_views_pooled_target():
    predictor = _predictor(2, cross_view_weight=0.5)
    assert predictor.num_levels == 3 and predictor.level_weights == (1.0, 0.5, 0.5)
    masks = make_masks((8, 8), batch=6)  # 3 images x 2 views
    tokens = torch.randn(6, 64, D)
    targets = predictor.make_targets(EncoderOutput(tokens=tokens), masks)
    pooled = F.layer_norm(tokens, (D,)).mean(dim=1)
    assert targets[2].shape == (6, 3, 1, D)
    # view 0 of image i is asked for view 1's pooled target, and the other way round
    normed = (pooled - pooled.mean(0)) / torch.sqrt(pooled.var(0) + 1e-5)  # standardised over the batch
    assert torch.allclose(targets[2][:3, 0, 0], normed[3:], atol=1e-5)
    assert torch.allclose(targets[2][3:, 0, 0], normed[:3], atol=1e-5)
    context = torch.randn(6, 10, D, requires_grad=True)
    predictions = predictor(context, masks)
    assert [p.shape for p in predictions] == [t.shape for t in targets]
    predictions[2].sum().backward()
    assert predictor.cross_view_head[0].weight.grad is not None and context.grad is not None
    # its evaluation feature is the pooled normalised target token
    assert torch.allclose(predictor.level_features(EncoderOutput(tokens=tokens))["level2"], pooled, atol=1e-6)


def test_the_views_target_pulls_each_views_pooled_context_to_the_others_through_both():
    predictor = _predictor(2, cross_view_weight=1.0, cross_view_target="views")
    assert predictor.num_levels == 3 and predictor.cross_view_head is None  # no MLP, no target encoder in the level
    masks = make_masks((8, 8), batch=6)  # 3 images x 2 views
    targets = predictor.make_targets(EncoderOutput(tokens=torch.randn(6, 64, D)), masks)
    assert targets[2].shape == (6, 3, 1, D) and not targets[2].any()
    context = torch.randn(6, 10, D, requires_grad=True)
    gap = predictor(context, masks)[2]
    pooled = context.detach().mean(dim=1)
    assert torch.allclose(gap[:3, 0, 0], pooled[:3] - pooled[3:], atol=1e-6)
    assert torch.allclose(gap[3:, 0, 0], pooled[3:] - pooled[:3], atol=1e-6)
    gap[:3].pow(2).sum().backward()  # view 0's gap alone: the gradient reaches view 1's context too
    assert context.grad[:3].abs().sum() > 0 and context.grad[3:].abs().sum() > 0
    check_component("predictor", "hierarchical", params={"cross_view_weight": 1.0, "cross_view_target": "views", "depth": 1},
                    ctx=attrs.evolve(tiny_context(), views=2))


def test_both_forms_are_two_levels_the_ema_level_then_the_views_level():
    both = _predictor(2, cross_view_weight=0.5, cross_view_target="both")
    ema, views = _predictor(2, cross_view_weight=0.5), _predictor(2, cross_view_weight=0.5, cross_view_target="views")
    assert both.num_levels == 4 and both.level_weights == (1.0, 0.5, 0.5, 0.5) and both.cross_view_head is not None
    masks = make_masks((8, 8), batch=6)
    tokens = torch.randn(6, 64, D)
    targets = both.make_targets(EncoderOutput(tokens=tokens), masks)
    assert torch.equal(targets[2], ema.make_targets(EncoderOutput(tokens=tokens), masks)[2])
    assert targets[3].shape == (6, 3, 1, D) and not targets[3].any()
    context = torch.randn(6, 10, D)
    predictions = both(context, masks)
    assert [p.shape for p in predictions] == [t.shape for t in targets]
    torch.testing.assert_close(predictions[3], views(context, masks)[2])
    check_component("predictor", "hierarchical", params={"cross_view_weight": 1.0, "cross_view_target": "both", "depth": 1},
                    ctx=attrs.evolve(tiny_context(), views=2))


def test_with_one_view_the_cross_view_level_predicts_its_own_full_image():
    predictor = _predictor(1, cross_view_weight=1.0)
    tokens = torch.randn(4, 64, D)
    targets = predictor.make_targets(EncoderOutput(tokens=tokens), make_masks((8, 8), batch=4))
    pooled = F.layer_norm(tokens, (D,)).mean(dim=1)
    assert torch.allclose(targets[2][:, 0, 0], (pooled - pooled.mean(0)) / torch.sqrt(pooled.var(0) + 1e-5), atol=1e-5)


def test_off_by_default_and_the_single_view_path_is_unchanged():
    plain, off = _predictor(2), _predictor(2, cross_view_weight=0.0)
    assert plain.num_levels == off.num_levels == 2 and plain.cross_view_head is None
    masks = make_masks((8, 8), batch=4)
    tokens = torch.randn(4, 64, D)
    for a, b in zip(plain.make_targets(EncoderOutput(tokens=tokens), masks), off.make_targets(EncoderOutput(tokens=tokens), masks)):
        assert torch.equal(a, b)


def test_the_predictor_contract_check_covers_a_batch_of_views():

    ctx = attrs.evolve(tiny_context(), views=2)
    check_component("predictor", "hierarchical", params={"cross_view_weight": 1.0, "depth": 1}, ctx=ctx)


def test_a_run_of_views_trains_and_its_log_says_what_the_encoder_sees(tiny):
    """The header line counts the images per step and the views: the encoder sees views x batch images a step."""
    import hjepa_kit

    result = hjepa_kit.train(
        tiny(data={"views": 2, "batch_size": 8}, training={"epochs": 1, "max_steps": 2},
             model={"predictor": {"name": "hierarchical",
                                  "params": {"depth": 1, "cross_view_weight": 1.0, "cross_view_target": "views"}}},
             evaluation={"online": None}, callbacks=[]),
        console=False,
    )
    assert result.status == "stopped" and result.steps == 2  # max_steps, inside the first epoch of 12
    log = (result.log_dir / "training.log").read_text()
    assert "(batch 8 x accumulation 1 = 8 images x 2 views = 16 through the encoder)" in log
    assert "loss/level2" in (result.log_dir / "metrics.jsonl").read_text()  # the cross-view level above 2 spatial ones
