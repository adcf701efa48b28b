"""The multiblock masker: invariants, reproducibility, coverage and the reference code's defects."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch

from hjepa_kit import hookspecs
from hjepa_kit.contracts import BuildContext, Masker, Masks
from hjepa_kit.errors import ConfigError
from hjepa_kit.params import structure
from hjepa_kit.plugins import multiblock
from hjepa_kit.plugins.multiblock import MultiBlockMasker, MultiBlockParams, build_multiblock


@pytest.fixture(autouse=True)
def one_thread():
    """The masks are small tensors: on a busy machine a second intra-op thread slows them down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_masker(grid: tuple[int, int], **params) -> MultiBlockMasker:
    return build_multiblock(MultiBlockParams(**params), BuildContext(image_size=32, grid_size=grid))


def draw(masker: MultiBlockMasker, batches: int, batch_size: int, seed: int = 0) -> list[Masks]:
    generator = torch.Generator().manual_seed(seed)
    return [masker(batch_size, generator) for _ in range(batches)]


def one_hot(indices: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``(..., K)`` indices -> ``(..., N)`` 0/1 floats."""
    return torch.zeros(*indices.shape[:-1], num_patches).scatter_(-1, indices, 1.0)


def block_shape(targets: torch.Tensor, cols: int) -> tuple[int, int]:
    """The common ``(h, w)`` of ``(B, M, Nt)`` target blocks; fails unless every one is a full rectangle."""
    rows_of, cols_of = targets // cols, targets % cols
    top, left = rows_of.amin(-1, keepdim=True), cols_of.amin(-1, keepdim=True)
    h = int((rows_of.amax(-1) - rows_of.amin(-1)).max()) + 1
    w = int((cols_of.amax(-1) - cols_of.amin(-1)).max()) + 1
    assert h * w == targets.shape[-1], "target blocks are not full rectangles of one size"
    expected = ((top + torch.arange(h))[..., :, None] * cols + (left + torch.arange(w))[..., None, :]).flatten(-2)
    assert torch.equal(targets, expected), "target blocks are not full rectangles of one size"
    return h, w


def check_invariants(masks: Masks, grid: tuple[int, int], batch_size: int, params: MultiBlockParams) -> None:
    num_patches = grid[0] * grid[1]
    context, targets = masks.context, masks.targets
    assert context.dtype == targets.dtype == torch.int64
    assert context.dim() == 2 and context.shape[0] == batch_size
    assert targets.dim() == 3 and targets.shape[:2] == (batch_size, params.num_targets)
    assert context.shape[1] >= params.min_context
    for idx in (context, targets):
        assert int(idx.min()) >= 0 and int(idx.max()) < num_patches
    assert torch.all(context[:, 1:] > context[:, :-1]), "context indices must be sorted and unique"
    block_shape(targets, grid[1])
    overlap = one_hot(context, num_patches) * one_hot(targets.flatten(1), num_patches)
    assert overlap.sum() == 0, "a context patch is also a target"


# --- registration and contract -------------------------------------------------------------------


def test_registers_through_the_hook() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(multiblock)
    pm.check_pending()
    registered = {}
    pm.hook.hjepa_register_maskers(register=lambda name, factory, **kw: registered.setdefault(name, (factory, kw)))
    factory, kwargs = registered["multiblock"]
    assert kwargs["params"] is MultiBlockParams and kwargs["summary"]
    assert isinstance(factory(MultiBlockParams(), BuildContext(image_size=32, grid_size=(8, 8))), Masker)


@pytest.mark.parametrize(
    ("grid", "params"),
    [((8, 8), {}), ((14, 14), {}), ((4, 4), {}), ((6, 10), {"num_targets": 2}), ((2, 2), {"min_context": 1}),
     ((1, 5), {"min_context": 1}), ((8, 8), {"placement": "uniform", "min_context": 10})],
)
def test_masks_keep_every_invariant(grid: tuple[int, int], params: dict) -> None:
    masker = make_masker(grid, **params)
    for masks in draw(masker, batches=40, batch_size=16):
        check_invariants(masks, grid, 16, masker.params)


def test_target_block_size_follows_scale_and_aspect_and_varies_per_batch() -> None:
    params = MultiBlockParams()
    masker = MultiBlockMasker(params, (14, 14))
    (a_lo, a_hi), (s_lo, s_hi) = params.target_aspect, params.target_scale
    area_lo, area_hi = s_lo * 196, s_hi * 196
    sizes = {block_shape(m.targets, 14) for m in draw(masker, batches=100, batch_size=4)}
    for h, w in sizes:
        assert round(math.sqrt(area_lo * a_lo)) <= h <= round(math.sqrt(area_hi * a_hi))
        assert round(math.sqrt(area_lo / a_hi)) <= w <= round(math.sqrt(area_hi / a_lo))
    assert len(sizes) >= 4


# --- randomness ------------------------------------------------------------------------------------


def test_same_seed_gives_identical_masks_whatever_the_global_rng() -> None:
    masker = make_masker((14, 14))
    torch.manual_seed(1)
    first = draw(masker, batches=5, batch_size=8, seed=7)
    torch.manual_seed(2)  # only the given generator may be used
    second = draw(masker, batches=5, batch_size=8, seed=7)
    for a, b in zip(first, second):
        assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)


def test_different_seeds_give_different_masks() -> None:
    masker = make_masker((14, 14))
    a, b = draw(masker, 1, 8, seed=0)[0], draw(masker, 1, 8, seed=1)[0]
    assert a.targets.shape != b.targets.shape or not torch.equal(a.targets, b.targets)
    assert a.context.shape != b.context.shape or not torch.equal(a.context, b.context)


# --- coverage --------------------------------------------------------------------------------------


def coverage(masker: MultiBlockMasker, batches: int = 400, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each patch is in some target block, and in the context: two ``(N,)`` counts."""
    rows, cols = masker.grid_size
    targets = torch.zeros(rows * cols)
    context = torch.zeros(rows * cols)
    for masks in draw(masker, batches, batch_size):
        targets += one_hot(masks.targets, rows * cols).amax(1).sum(0)
        context += one_hot(masks.context, rows * cols).sum(0)
    return targets, context


# Measured over 400 batches of 16 (3 seeds): balanced 1.43-1.47 (8x8), 1.60-1.64 (14x14);
# uniform placement 7.0-7.1 and 18-20. The bound of a single block size on one axis is k / (k - 1)
# for k = ceil(grid / block) (1.5 for 3 of 8), so flatter is not possible with whole blocks.
@pytest.mark.parametrize(("side", "bound"), [(8, 1.6), (14, 1.75)])
def test_every_patch_is_a_target_about_equally_often(side: int, bound: float) -> None:
    targets, _ = coverage(make_masker((side, side)))
    assert targets.min() > 0
    assert targets.max() / targets.min() < bound
    uniform, _ = coverage(make_masker((side, side), placement="uniform"), batches=100)
    assert uniform.max() / uniform.min() > 3 * bound  # the test can tell the two apart


@pytest.mark.parametrize("placement", ["balanced", "uniform"])
def test_defect_a_last_row_and_column_are_reachable(placement: str) -> None:
    # The reference draws the top-left corner from 0 .. H - h - 1: on 8x8 with 3x3 blocks the last
    # row and column are never a target, and a 7x7 context block never reaches them either.
    masker = make_masker((8, 8), placement=placement)
    targets, context = coverage(masker, batches=100)
    grid_targets, grid_context = targets.view(8, 8), context.view(8, 8)
    assert (grid_targets[-1] > 0).all() and (grid_targets[:, -1] > 0).all()
    assert (grid_context[-1] > 0).all() and (grid_context[:, -1] > 0).all()
    assert (targets > 0).all() and (context > 0).all()


def test_defect_b_truncation_to_the_shortest_context_favours_no_part_of_the_grid() -> None:
    # Contexts of one batch are cut to the shortest one. Keeping the first indices (the reference)
    # drops the bottom of the grid: 67% of kept context patches land in the top half (measured).
    _, context = coverage(make_masker((8, 8)))
    grid = context.view(8, 8)
    total = grid.sum()
    assert abs(grid[:4].sum() / total - 0.5) < 0.02
    assert abs(grid[:, :4].sum() / total - 0.5) < 0.02
    rows = grid.sum(1)
    assert torch.allclose(rows, rows.flip(0), rtol=0.08)  # the placement is mirror-symmetric
    assert context.max() / context.min() < 2.5  # measured 1.8-1.9; 15 with first-k truncation


# --- termination and fallbacks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "params"),
    [
        # 1x1 target blocks: the reference retries forever, since a block must exceed min_keep=4 patches.
        ((8, 8), {"target_scale": (0.01, 0.02)}),
        ((2, 2), {"min_context": 1}),
        ((2, 2), {"min_context": 3, "num_targets": 8}),
        ((4, 4), {"min_context": 15}),
        ((3, 3), {"target_scale": (1.0, 1.0), "min_context": 1}),
    ],
)
def test_defect_c_tiny_blocks_and_grids_end_with_valid_masks(grid: tuple[int, int], params: dict) -> None:
    masker = make_masker(grid, **params)
    for masks in draw(masker, batches=20, batch_size=32):
        check_invariants(masks, grid, 32, masker.params)


def test_fallback_moves_targets_together_when_they_leave_too_few_patches() -> None:
    # 4 blocks of 2x2 on 4x4 often cover 13+ patches; min_context 4 then needs stacking.
    params = {"target_scale": (0.25, 0.25), "target_aspect": (1.0, 1.0), "min_context": 4}
    masker = make_masker((4, 4), **params)
    for masks in draw(masker, batches=20, batch_size=32):
        check_invariants(masks, (4, 4), 32, masker.params)
    assert masker.fallbacks["targets"] > 0


def test_fallback_context_is_every_non_target_patch_when_no_block_fits() -> None:
    # A 1x1 context block can never hold min_context = 4 patches.
    masker = make_masker((8, 8), context_scale=(0.01, 0.01))
    (masks,) = draw(masker, batches=1, batch_size=8)
    check_invariants(masks, (8, 8), 8, masker.params)
    assert masker.fallbacks["context"] == 8
    free = 1 - one_hot(masks.targets, 64).amax(1)
    assert int(free.sum(1).min()) == masks.context.shape[1]


def test_min_context_that_leaves_no_room_for_targets_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="min_context 4 leaves no patch for the targets on a 2x2 patch grid"):
        make_masker((2, 2))


def test_factory_needs_the_encoder_grid() -> None:
    with pytest.raises(ConfigError, match="grid_size"):
        build_multiblock(MultiBlockParams(), BuildContext(image_size=32))


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        make_masker((8, 8))(0, torch.Generator())


# --- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_scale": (0.3, 0.2)}, r"target_scale: the range must be \(low, high\) with low <= high, got \(0.3, 0.2\)"),
        ({"context_aspect": (2.0, 1.0)}, "context_aspect: the range must be"),
        ({"target_scale": (0.0, 0.2)}, "target_scale: must be > 0, <= 1, got 0.0"),
        ({"context_scale": (0.9, 1.1)}, "context_scale: must be > 0, <= 1, got 1.1"),
        ({"num_targets": 0}, "num_targets: must be >= 1, got 0"),
        ({"min_context": 0}, "min_context: must be >= 1, got 0"),
        ({"placement": "random"}, "placement: must be one of 'balanced', 'uniform', got 'random'"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiBlockParams(**kwargs)


def test_parameters_structure_strictly_from_yaml_data() -> None:
    params = structure(MultiBlockParams, {"num_targets": 2, "target_scale": [0.1, 0.2]})
    assert params == MultiBlockParams(num_targets=2, target_scale=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"masker.params.target_scale: expected a list of 2 items"):
        structure(MultiBlockParams, {"target_scale": [0.1, 0.2, 0.3]}, path="masker.params")
    with pytest.raises(ValueError, match="masker.params: target_scale: the range must be"):
        structure(MultiBlockParams, {"target_scale": [0.3, 0.2]}, path="masker.params")


# --- fixed shapes (torch.compile, CUDA graphs) ---------------------------------------------------


FIXED_CASES = [
    ((8, 8), {}),
    ((14, 14), {}),
    ((4, 4), {}),
    ((6, 10), {"num_targets": 2}),
    ((2, 2), {"min_context": 1}),
    ((1, 5), {"min_context": 1}),
    ((8, 8), {"placement": "uniform", "min_context": 10}),
    ((4, 4), {"min_context": 15}),
    ((8, 8), {"context_scale": (0.01, 0.01)}),  # no context block holds K: every sample falls back
    ((4, 4), {"target_scale": (0.25, 0.25), "target_aspect": (1.0, 1.0)}),  # targets stacked
    ((8, 8), {"target_aspect": (1.2, 1.3)}),  # no whole block in the aspect range
]


@pytest.mark.parametrize(("grid", "params"), FIXED_CASES)
def test_fixed_shapes_give_one_shape_per_batch_size_and_keep_every_invariant(grid: tuple[int, int], params: dict) -> None:
    masker = make_masker(grid, fixed_shapes=True, **params)
    h, w = masker.target_shapes[0]
    assert all(a * b == h * w for a, b in masker.target_shapes)
    assert masker.params.min_context <= masker.context_length <= grid[0] * grid[1] - h * w
    for batch_size in (1, 7, 32):
        shapes = set()
        for seed in range(4):
            for masks in draw(masker, batches=15, batch_size=batch_size, seed=seed):
                check_invariants(masks, grid, batch_size, masker.params)
                shapes.add((masks.context.shape, masks.targets.shape))
        assert shapes == {((batch_size, masker.context_length), (batch_size, masker.params.num_targets, h * w))}


def test_fixed_shapes_do_not_vary_over_many_batches_where_the_default_does() -> None:
    # Measured over 500 batches of 64: the default gives 13 context and 3 target lengths on 8x8,
    # 35 and 7 on 14x14; fixed shapes give one of each.
    for grid in ((8, 8), (14, 14)):
        default = {(m.context.shape, m.targets.shape) for m in draw(make_masker(grid), 60, 64)}
        fixed = {(m.context.shape, m.targets.shape) for m in draw(make_masker(grid, fixed_shapes=True), 60, 64)}
        assert len(default) > 5 and len(fixed) == 1


@pytest.mark.parametrize(("grid", "shapes", "length"), [((8, 8), ((3, 4), (4, 3)), 16), ((14, 14), ((5, 6), (6, 5)), 65)])
def test_fixed_sizes_of_the_default_parameters(grid: tuple[int, int], shapes: tuple, length: int) -> None:
    # The documented figures (module docstring, configs/gpu_cifar10.yaml).
    masker = make_masker(grid, fixed_shapes=True)
    assert masker.target_shapes == shapes and masker.context_length == length


def test_fixed_sizes_are_a_function_of_the_parameters_only() -> None:
    torch.manual_seed(1)
    first = make_masker((14, 14), fixed_shapes=True)
    draw(first, 3, 16)  # drawing changes nothing
    torch.manual_seed(2)
    second = make_masker((14, 14), fixed_shapes=True)
    assert (first.target_shapes, first.context_length) == (second.target_shapes, second.context_length)
    assert make_masker((14, 14)).target_shapes is None and make_masker((14, 14)).context_length is None


def test_fixed_target_blocks_keep_scale_and_aspect_and_take_each_allowed_shape() -> None:
    params = MultiBlockParams(fixed_shapes=True)
    for grid in ((8, 8), (14, 14), (16, 16), (6, 10)):
        masker = MultiBlockMasker(params, grid)
        num_patches = grid[0] * grid[1]
        for h, w in masker.target_shapes:
            assert params.target_scale[0] * num_patches <= h * w <= params.target_scale[1] * num_patches
            assert params.target_aspect[0] <= h / w <= params.target_aspect[1]
        drawn = {block_shape(m.targets, grid[1]) for m in draw(masker, batches=60, batch_size=2)}
        assert drawn == set(masker.target_shapes)


def test_fixed_target_block_without_an_allowed_shape_is_the_middle_block() -> None:
    # 8x8, 10-12 patches: 2x5, 5x2, 3x4, 4x3, none with h / w in [1.2, 1.3]; 11.2 patches at 1.25 -> 4x3.
    assert make_masker((8, 8), fixed_shapes=True, target_aspect=(1.2, 1.3)).target_shapes == ((4, 3),)


def test_fixed_shapes_same_seed_same_masks_different_seed_different_masks() -> None:
    masker = make_masker((14, 14), fixed_shapes=True)
    torch.manual_seed(1)
    first = draw(masker, batches=5, batch_size=8, seed=7)
    torch.manual_seed(2)
    second = draw(make_masker((14, 14), fixed_shapes=True), batches=5, batch_size=8, seed=7)
    for a, b in zip(first, second):
        assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    other = draw(masker, batches=5, batch_size=8, seed=8)
    assert any(not torch.equal(a.context, b.context) for a, b in zip(first, other))
    assert any(not torch.equal(a.targets, b.targets) for a, b in zip(first, other))


def test_fixed_shapes_keep_balanced_targets_and_unbiased_contexts() -> None:
    masker = make_masker((8, 8), fixed_shapes=True)
    targets, context = coverage(masker)
    assert targets.min() > 0 and targets.max() / targets.min() < 1.6
    grid = context.view(8, 8)
    total = grid.sum()
    assert abs(grid[:4].sum() / total - 0.5) < 0.02
    assert abs(grid[:, :4].sum() / total - 0.5) < 0.02
    assert context.max() / context.min() < 2.5


def test_fixed_shapes_fallbacks_are_rare_with_the_defaults_and_counted() -> None:
    masker = make_masker((8, 8), fixed_shapes=True)
    draw(masker, batches=50, batch_size=64)
    assert 0 < masker.fallbacks["context"] < 0.05 * 50 * 64  # measured 1.9% over 500 batches
    assert masker.fallbacks["targets"] == 0


def test_fixed_shapes_context_fallback_is_a_random_subset_of_the_non_target_patches() -> None:
    masker = make_masker((8, 8), fixed_shapes=True, context_scale=(0.01, 0.01))
    masks = draw(masker, batches=20, batch_size=16)
    assert masker.fallbacks["context"] == 20 * 16
    free = 1 - one_hot(masks[0].targets, 64).amax(1)
    assert int(free.sum(1).min()) >= masker.context_length
    # Not the first free patches in grid order: the kept patches spread over the whole grid.
    kept = sum(one_hot(m.context, 64).sum(0) for m in masks).view(8, 8)
    assert abs(kept[:4].sum() / kept.sum() - 0.5) < 0.05


def test_fixed_shapes_stack_targets_to_free_the_context_length() -> None:
    masker = make_masker((4, 4), fixed_shapes=True, target_scale=(0.25, 0.25), target_aspect=(1.0, 1.0))
    for masks in draw(masker, batches=20, batch_size=32):
        check_invariants(masks, (4, 4), 32, masker.params)
        assert masks.context.shape[1] == masker.context_length
    assert masker.fallbacks["targets"] > 0


def test_fixed_shapes_pass_the_masker_contract() -> None:
    from hjepa_kit.testing import check_component

    for params in ({"fixed_shapes": True}, {"fixed_shapes": True, "placement": "uniform"}):
        masker = check_component("masker", "multiblock", params=params)
        assert masker.context_length is not None


def test_fixed_shapes_structure_from_yaml_data() -> None:
    assert structure(MultiBlockParams, {"fixed_shapes": True}) == MultiBlockParams(fixed_shapes=True)
    assert MultiBlockParams().fixed_shapes is False


def test_fixed_shapes_are_declared_to_the_trainer():
    """The trainer compiles for static shapes when the masker declares them (Masker contract: ``static_shapes``)."""
    from hjepa_kit.contracts import BuildContext
    from hjepa_kit.plugins.multiblock import MultiBlockParams, build_multiblock

    ctx = BuildContext(image_size=32, grid_size=(8, 8))
    assert build_multiblock(MultiBlockParams(fixed_shapes=True), ctx).static_shapes is True
    assert build_multiblock(MultiBlockParams(), ctx).static_shapes is False
