"""Tests of the ``hierarchical`` predictor: shapes, targets, pooling, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hjepa_kit.contracts import BuildContext, EncoderOutput, Masks, Predictor
from hjepa_kit.errors import ConfigError
from hjepa_kit.params import describe, structure
from hjepa_kit.plugins import hierarchical
from hjepa_kit.plugins.hierarchical import HierarchicalParams, build_hierarchical, pool_cells

D = 32  # encoder width in these tests: small, so every test runs in milliseconds


def make_ctx(grid=(8, 8), depth=4, device="cpu") -> BuildContext:
    return BuildContext(image_size=grid[0] * 4, grid_size=grid, patch_size=4, embed_dim=D, depth=depth, device=torch.device(device))


def make_predictor(grid=(8, 8), **overrides) -> hierarchical.HierarchicalPredictor:
    kwargs = {"width": 32, "num_heads": 2} | overrides
    torch.manual_seed(0)
    return build_hierarchical(HierarchicalParams(**kwargs), make_ctx(grid))


def make_masks(grid, batch=2, blocks=3, per_block=5, context=10, seed=0) -> Masks:
    """Context patches and target blocks drawn from disjoint parts of a random permutation."""
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    contexts, targets = [], []
    for _ in range(batch):
        order = torch.randperm(n, generator=gen)
        contexts.append(order[:context])
        rest = order[context:]
        targets.append(torch.stack([rest[torch.randperm(len(rest), generator=gen)[:per_block]] for _ in range(blocks)]))
    return Masks(context=torch.stack(contexts), targets=torch.stack(targets))


def encoder_output(grid, batch=2, seed=1, **blocks) -> EncoderOutput:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, grid[0] * grid[1], D, generator=gen) * 3 + 1
    return EncoderOutput(tokens=tokens, blocks={int(k[1:]): v for k, v in blocks.items()})


def hand_cell_targets(tokens, grid, side, targets):
    """Level target of every target patch by explicit slicing: the mean normed token of its cell."""
    rows, cols = grid
    normed = F.layer_norm(tokens, (tokens.shape[-1],)).reshape(tokens.shape[0], rows, cols, -1)
    out = torch.empty(*targets.shape, tokens.shape[-1])
    for b, m, t in torch.cartesian_prod(*(torch.arange(s) for s in targets.shape)).tolist():
        r, c = divmod(int(targets[b, m, t]), cols)
        r0, c0 = (r // side) * side, (c // side) * side
        out[b, m, t] = normed[b, r0 : min(r0 + side, rows), c0 : min(c0 + side, cols)].mean(dim=(0, 1))
    return out


@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (7, 7)])
@pytest.mark.parametrize("num_levels", [1, 2, 3])
def test_predictions_have_one_tensor_per_level_shaped_like_targets(grid, num_levels):
    predictor = make_predictor(grid, num_levels=num_levels)
    masks = make_masks(grid)
    context = torch.randn(2, 10, D)
    predictions = predictor(context, masks)
    targets = predictor.make_targets(encoder_output(grid), masks)
    assert len(predictions) == len(targets) == num_levels
    for prediction, target in zip(predictions, targets):
        assert prediction.shape == target.shape == (2, 3, 5, D)
    assert isinstance(predictor, Predictor)
    assert predictor.num_levels == num_levels


def test_default_level_weights_halve_per_level():
    assert make_predictor().level_weights == (1.0, 0.5)
    assert make_predictor(num_levels=3).level_weights == (1.0, 0.5, 0.25)
    assert make_predictor(num_levels=3, level_weights=(1.0, 1.0, 2.0)).level_weights == (1.0, 1.0, 2.0)


def test_level_weights_of_wrong_length_name_both_fields():
    with pytest.raises(ValueError, match=r"level_weights has 2 entries .* num_levels is 3"):
        HierarchicalParams(num_levels=3, level_weights=(1.0, 0.5))
    with pytest.raises(ValueError, match="level_weights"):
        structure(HierarchicalParams, {"num_levels": 1, "level_weights": [1.0, 0.5]})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pool": (1, 2, 4)}, "pool has 3 entries"),
        ({"level_blocks": (None,)}, "level_blocks has 1 entries"),
        ({"width": 30, "num_heads": 3}, "multiple of 4"),
        ({"width": 32, "num_heads": 3}, "not divisible by num_heads"),
        ({"level_weights": (0.0, 0.0)}, "all 0"),
    ],
)
def test_inconsistent_params_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        HierarchicalParams(**fields)


def test_level0_targets_are_layer_normed_tokens_at_target_positions():
    grid = (8, 8)
    predictor = make_predictor(grid)
    masks = make_masks(grid)
    target = encoder_output(grid)
    level0 = predictor.make_targets(target, masks)[0]
    normed = F.layer_norm(target.tokens, (D,))
    for b in range(2):
        torch.testing.assert_close(level0[b], normed[b][masks.targets[b]])
    assert level0.mean(-1).abs().max() < 1e-5  # layer norm without affine: zero mean per token


def test_coarse_targets_equal_avg_pooled_fine_targets():
    grid = (8, 8)
    predictor = make_predictor(grid, num_levels=3)
    masks = make_masks(grid)
    target = encoder_output(grid)
    _, level1, level2 = predictor.make_targets(target, masks)
    fine = F.layer_norm(target.tokens, (D,)).transpose(1, 2).reshape(2, D, 8, 8)
    for level, side in ((level1, 2), (level2, 4)):
        pooled = F.avg_pool2d(fine, side)  # (B, D, 8/side, 8/side)
        rows, cols = masks.targets // 8, masks.targets % 8
        expected = pooled[torch.arange(2)[:, None, None], :, rows // side, cols // side]  # (B, M, Nt, D)
        torch.testing.assert_close(level, expected)


@pytest.mark.parametrize("grid", [(7, 7), (5, 9)])
def test_partial_cells_average_only_the_patches_they_hold(grid):
    predictor = make_predictor(grid, num_levels=3)
    masks = make_masks(grid, context=8)
    target = encoder_output(grid)
    _, level1, level2 = predictor.make_targets(target, masks)
    torch.testing.assert_close(level1, hand_cell_targets(target.tokens, grid, 2, masks.targets))
    torch.testing.assert_close(level2, hand_cell_targets(target.tokens, grid, 4, masks.targets))


def test_cell_larger_than_grid_is_the_whole_image():
    tokens = torch.randn(2, 16, D)
    torch.testing.assert_close(pool_cells(tokens, (4, 4), 8), tokens.mean(1, keepdim=True))


def test_renorm_coarse_gives_unit_scale_coarse_targets():
    grid = (8, 8)
    predictor = make_predictor(grid, renorm_coarse=True)
    level1 = predictor.make_targets(encoder_output(grid), make_masks(grid))[1]
    torch.testing.assert_close(level1.var(-1, unbiased=False), torch.ones(level1.shape[:-1]), atol=1e-3, rtol=0)


def test_targets_carry_no_grad_and_use_no_parameters():
    grid = (8, 8)
    predictor = make_predictor(grid, num_levels=3)
    masks = make_masks(grid)
    tokens = torch.randn(2, 64, D, requires_grad=True)
    before = predictor.make_targets(EncoderOutput(tokens=tokens), masks)
    assert not any(t.requires_grad for t in before)
    with torch.no_grad():
        for p in predictor.parameters():
            p.fill_(float("nan"))  # a target that read any parameter would turn NaN
    after = predictor.make_targets(EncoderOutput(tokens=tokens), masks)
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b)


def test_gradients_reach_every_parameter_and_the_context():
    grid = (8, 8)
    predictor = make_predictor(grid)
    masks = make_masks(grid)
    context = torch.randn(2, 10, D, requires_grad=True)
    targets = predictor.make_targets(encoder_output(grid), masks)
    loss = sum(F.smooth_l1_loss(p, t) for p, t in zip(predictor(context, masks), targets))
    loss.backward()
    for name, p in predictor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert context.grad.abs().sum() > 0


def test_predictions_depend_on_context_and_target_positions():
    grid = (8, 8)
    predictor = make_predictor(grid)
    masks = make_masks(grid)
    context = torch.randn(2, 10, D)
    base = predictor(context, masks)[0]
    # Every mask token starts as the same learned vector: only its position tells them apart.
    assert not torch.allclose(base[:, :, 0], base[:, :, 1])
    # The same tokens said to come from other patches must change the prediction.
    moved_context = Masks(context=masks.context.roll(1, dims=1), targets=masks.targets)
    assert not torch.allclose(predictor(context, moved_context)[0], base)
    # Reordering the target patches reorders their predictions and nothing else.
    order = torch.randperm(5)
    reordered = predictor(context, Masks(context=masks.context, targets=masks.targets[..., order]))[0]
    torch.testing.assert_close(reordered, base[..., order, :], atol=1e-5, rtol=1e-4)


def test_per_block_layout_predicts_each_block_as_if_alone():
    grid = (8, 8)
    joint = make_predictor(grid)
    per_block = make_predictor(grid, layout="per_block")
    per_block.load_state_dict(joint.state_dict())
    masks = make_masks(grid, blocks=3)
    context = torch.randn(2, 10, D)
    together = per_block(context, masks)
    for m in range(3):
        alone = joint(context, Masks(context=masks.context, targets=masks.targets[:, m : m + 1]))
        for level in range(2):
            torch.testing.assert_close(together[level][:, m : m + 1], alone[level], atol=1e-5, rtol=1e-4)
    # In the joint layout blocks see each other, so block 0's prediction depends on the others.
    assert not torch.allclose(joint(context, masks)[0][:, :1], joint(context, Masks(masks.context, masks.targets[:, :1]))[0])


def test_level_blocks_select_the_target_encoders_block():
    grid = (8, 8)
    predictor = make_predictor(grid, level_blocks=(None, -2))  # encoder depth 4: block -2 is block 2
    assert predictor.target_blocks == (2,)
    masks = make_masks(grid)
    block_tokens = torch.randn(2, 64, D)
    target = EncoderOutput(tokens=torch.randn(2, 64, D), blocks={2: block_tokens})
    level1 = predictor.make_targets(target, masks)[1]
    torch.testing.assert_close(level1, hand_cell_targets(block_tokens, grid, 2, masks.targets))
    # An encoder that keys the block by its negative index works too.
    keyed_negative = EncoderOutput(tokens=target.tokens, blocks={-2: block_tokens})
    torch.testing.assert_close(predictor.make_targets(keyed_negative, masks)[1], level1)
    with pytest.raises(KeyError, match="return_blocks"):
        predictor.make_targets(EncoderOutput(tokens=target.tokens), masks)
    assert make_predictor(grid).target_blocks == ()


def test_target_average_targets_the_mean_of_the_last_blocks_and_evaluation_the_final_output():
    grid = (8, 8)
    predictor = make_predictor(grid, target_average=3)  # encoder depth 4: blocks 1, 2 and the final output
    assert predictor.target_blocks == (1, 2)
    masks = make_masks(grid)
    gen = torch.Generator().manual_seed(3)
    block1, block2, final = (torch.randn(2, 64, D, generator=gen) * 2 for _ in range(3))
    target = EncoderOutput(tokens=final, blocks={1: block1, 2: block2})
    norm = lambda t: F.layer_norm(t, (D,))  # noqa: E731
    averaged = norm((norm(block1) + norm(block2) + norm(final)) / 3)
    level0, level1 = predictor.make_targets(target, masks)
    flat = masks.targets.flatten(1)
    torch.testing.assert_close(level0, torch.stack([averaged[b, flat[b]] for b in range(2)]).reshape(level0.shape), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(level1, hand_cell_targets(averaged, grid, 2, masks.targets), atol=1e-4, rtol=1e-4)
    # Evaluation reads the final output alone, as without target_average.
    plain = make_predictor(grid)
    for name, feature in predictor.level_features(target).items():
        torch.testing.assert_close(feature, plain.level_features(EncoderOutput(tokens=final))[name])
    with pytest.raises(KeyError, match="return_blocks"):
        predictor.make_targets(EncoderOutput(tokens=final), masks)
    with pytest.raises(ConfigError, match=r"target_average: 5 blocks averaged, but the encoder's depth is 4"):
        build_hierarchical(HierarchicalParams(target_average=5, width=32, num_heads=2), make_ctx())


def test_target_norm_centres_or_instance_normalises_each_levels_targets_over_the_image():
    grid = (8, 8)
    masks = make_masks(grid)
    target = encoder_output(grid)
    normed = F.layer_norm(target.tokens, (D,))  # (B, 64, D)
    flat = masks.targets.flatten(1)
    cells1 = pool_cells(normed, grid, 2)  # (B, 16, D): level 1's cells
    plain0 = torch.stack([normed[b, flat[b]] for b in range(2)]).reshape(2, *masks.targets.shape[1:], D)
    plain1 = hand_cell_targets(target.tokens, grid, 2, masks.targets)
    plain = make_predictor(grid, cross_view_weight=1.0).make_targets(target, masks)
    for norm in ("centre", "instance"):
        level0, level1, cross = make_predictor(grid, target_norm=norm, cross_view_weight=1.0).make_targets(target, masks)
        # Each channel minus its mean over the image's cells (64 patches, 16 cells), then over their std.
        mean0, mean1 = normed.mean(1)[:, None, None], cells1.mean(1)[:, None, None]
        expected0, expected1 = plain0 - mean0, plain1 - mean1
        if norm == "instance":
            expected0 = expected0 / torch.sqrt(normed.var(1, unbiased=False)[:, None, None] + 1e-5)
            expected1 = expected1 / torch.sqrt(cells1.var(1, unbiased=False)[:, None, None] + 1e-5)
        torch.testing.assert_close(level0, expected0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(level1, expected1, atol=1e-5, rtol=1e-5)
        # The cross-view level (one cell, the whole grid) is left as it was.
        torch.testing.assert_close(cross, plain[2])
    # A shared part of every token (here: a tenth of image 0's first token added to all its tokens)
    # is what centring removes: level 0's centred targets move far less than the plain ones.
    shared = target.tokens.clone()
    shared[0] += 0.1 * target.tokens[0, :1]
    moved_plain = (make_predictor(grid).make_targets(EncoderOutput(tokens=shared), masks)[0] - plain[0])[0].abs().mean()
    moved_centred = (make_predictor(grid, target_norm="centre").make_targets(EncoderOutput(tokens=shared), masks)[0]
                     - make_predictor(grid, target_norm="centre").make_targets(target, masks)[0])[0].abs().mean()
    assert moved_centred < 0.5 * moved_plain
    # Evaluation features do not depend on target_norm.
    for name, feature in make_predictor(grid, target_norm="instance").level_features(target).items():
        torch.testing.assert_close(feature, make_predictor(grid).level_features(target)[name])


def test_level_blocks_outside_the_encoder_are_config_errors():
    with pytest.raises(ConfigError, match=r"level_blocks\[1\]: block 4 does not exist .* depth 4"):
        build_hierarchical(HierarchicalParams(level_blocks=(None, 4), width=32, num_heads=2), make_ctx())
    assert structure(HierarchicalParams, {"level_blocks": [None, 2]}).level_blocks == (None, 2)


def test_building_before_the_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="embed_dim, grid_size"):
        build_hierarchical(HierarchicalParams(), BuildContext(image_size=32))


def test_level_features_differ_per_level_with_max_pooling():
    grid = (8, 8)
    target = encoder_output(grid)
    features = make_predictor(grid, num_levels=3).level_features(target)
    assert list(features) == ["level0", "level1", "level2"]
    assert all(f.shape == (2, D) and f.dtype == torch.float32 for f in features.values())
    torch.testing.assert_close(features["level0"], F.layer_norm(target.tokens, (D,)).amax(1))
    assert not torch.allclose(features["level0"], features["level1"])
    # Why max is the default: with linear pooling over one block the mean features coincide.
    means = make_predictor(grid, feature_pool="mean").level_features(target)
    torch.testing.assert_close(means["level0"], means["level1"])


def test_gem_feature_pool_is_the_generalised_mean_between_the_mean_and_the_max():
    grid = (8, 8)
    target = encoder_output(grid)
    normed = F.layer_norm(target.tokens, (D,))
    gem = make_predictor(grid, feature_pool="gem").level_features(target)["level0"]
    torch.testing.assert_close(gem, normed.clamp(min=0).pow(3).mean(1).pow(1 / 3))
    assert (gem >= normed.clamp(min=0).mean(1) - 1e-6).all() and (gem <= normed.amax(1).clamp(min=0) + 1e-6).all()
    # p = 1 is the mean of the positive parts; as p grows it tends to the max: between max * 64**(-1/p) and the max.
    first = make_predictor(grid, feature_pool="gem", gem_power=1.0).level_features(target)["level0"]
    torch.testing.assert_close(first, normed.clamp(min=0).mean(1))
    top = normed.amax(1).clamp(min=0)
    for p in (3.0, 60.0, 400.0):  # 400: x**400 overflows float32; the pooled feature must not
        pooled = make_predictor(grid, feature_pool="gem", gem_power=p).level_features(target)["level0"]
        assert torch.isfinite(pooled).all()
        assert (pooled >= top * 64 ** (-1 / p) - 1e-5).all() and (pooled <= top + 1e-5).all()
    with pytest.raises(ValueError, match="gem_power"):
        HierarchicalParams(gem_power=0.5)
    # gem_power is gem's alone: set beside another pooling it would be ignored, so it is refused.
    with pytest.raises(ValueError, match="gem_power 4.0 is set but feature_pool is 'max'"):
        HierarchicalParams(gem_power=4.0)
    # A level of one cell (the whole grid) is its own feature, negative parts kept, as under max and mean.
    whole = make_predictor(grid, num_levels=4, feature_pool="gem").level_features(target)["level3"]
    torch.testing.assert_close(whole, make_predictor(grid, num_levels=4).level_features(target)["level3"])
    assert (whole < 0).any()


def test_fused_attention_auto_is_off_on_cpu():
    assert not make_predictor().fused_attn
    assert not any(b.attn.fused_attn for b in make_predictor().blocks)
    assert all(b.attn.fused_attn for b in make_predictor(fused_attn=True).blocks)
    cuda = build_hierarchical(HierarchicalParams(width=32, num_heads=2), make_ctx(device="cuda"))
    assert cuda.fused_attn


def test_shape_errors_name_the_shapes():
    grid = (8, 8)
    predictor = make_predictor(grid)
    masks = make_masks(grid)
    with pytest.raises(ValueError, match=r"\(2, 10, 16\)"):
        predictor(torch.randn(2, 10, 16), masks)
    with pytest.raises(ValueError, match=r"\(2, 60, 32\)"):
        predictor.make_targets(EncoderOutput(tokens=torch.randn(2, 60, D)), masks)


def test_registers_under_its_name_with_documented_params():
    registered = {}
    hierarchical.hjepa_register_predictors(lambda name, factory, **kw: registered.update({name: (factory, kw)}))
    factory, kw = registered["hierarchical"]
    assert factory is build_hierarchical and kw["params"] is HierarchicalParams and kw["summary"]
    assert all(row.help for row in describe(HierarchicalParams))


def test_position_table_is_the_encoders_sincos_table():
    from hjepa_kit.plugins.vit import sincos_pos_embed_2d

    predictor = make_predictor(grid=(7, 5), width=32)
    assert predictor.pos_embed.shape == (35, 32)
    assert torch.equal(predictor.pos_embed, sincos_pos_embed_2d(32, (7, 5))[0])
    assert "pos_embed" not in predictor.state_dict()
