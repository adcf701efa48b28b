"""The ViT encoders: contract, indexed encoding, returned blocks, errors and parameters."""

from __future__ import annotations

import copy

import pluggy
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hjepa_kit import hookspecs
from hjepa_kit.contracts import BuildContext, Encoder
from hjepa_kit.errors import ConfigError, UserError
from hjepa_kit.params import structure
from hjepa_kit.plugins import vit
from hjepa_kit.plugins.vit import VARIANTS, VitParams, build_vit, sincos_pos_embed_2d

BATCH = 2


@pytest.fixture(scope="module")
def encoder() -> vit.VitEncoder:
    """ViT-Tiny on 32x32 images with 8x8 patches: a 4x4 grid of 16 patches."""
    torch.manual_seed(0)
    return build_vit("vit_tiny", VitParams(patch_size=8), BuildContext(image_size=32)).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def random_indices(batch: int, keep: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_patches, generator=g)[:keep] for _ in range(batch)])


# --- registration and contract -------------------------------------------------------------------


def test_registers_the_three_variants_through_the_hook() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(vit)
    pm.check_pending()  # every hook implementation matches a spec
    registered = {}

    def register(name, factory, *, params=None, summary=""):
        registered[name] = (factory, params, summary)

    pm.hook.hjepa_register_encoders(register=register)
    assert set(registered) == {"vit_tiny", "vit_small", "vit_base"}
    for name, (factory, params, summary) in registered.items():
        assert params is VitParams
        assert summary.startswith("ViT-")
        assert callable(factory)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_meets_the_encoder_contract(name: str) -> None:
    width, depth, heads, _ = VARIANTS[name]
    enc = build_vit(name, VitParams(patch_size=16), BuildContext(image_size=32, in_chans=1))
    assert isinstance(enc, Encoder)
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.patch_size, enc.grid_size) == (width, depth, heads, 16, (2, 2))
    with torch.no_grad():
        out = enc(torch.randn(BATCH, 1, 32, 32))
    assert out.tokens.shape == (BATCH, 4, width)
    assert dict(out.blocks) == {}


def test_known_sizes_of_the_variants() -> None:
    assert VARIANTS["vit_tiny"][:3] == (192, 12, 3)
    assert VARIANTS["vit_small"][:3] == (384, 12, 6)
    assert VARIANTS["vit_base"][:3] == (768, 12, 12)


def test_all_patch_encoding_gives_one_token_per_patch(encoder, images) -> None:
    with torch.no_grad():
        out = encoder(images)
    assert out.tokens.shape == (BATCH, 16, 192)
    assert torch.isfinite(out.tokens).all()


# --- indexed encoding ------------------------------------------------------------------------------


def test_indexed_encoding_keeps_only_the_given_patches(encoder, images) -> None:
    indices = random_indices(BATCH, 6, 16)
    with torch.no_grad():
        out = encoder(images, indices, return_blocks=(0, -1))
    assert out.tokens.shape == (BATCH, 6, 192)
    assert out.blocks[0].shape == out.blocks[-1].shape == (BATCH, 6, 192)


def test_all_indices_in_any_order_permute_the_full_encoding(encoder, images) -> None:
    # Attention without masks is permutation-equivariant, so this holds exactly when position
    # embeddings are added before the gather and the gather keeps the given order.
    order = random_indices(BATCH, 16, 16, seed=3)
    with torch.no_grad():
        full = encoder(images).tokens
        permuted = encoder(images, order).tokens
    expected = torch.gather(full, 1, order[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(permuted, expected, rtol=1e-4, atol=1e-5)


def test_dropped_patches_do_not_reach_the_kept_tokens(encoder, images) -> None:
    # Keep the left half of the grid (columns 0, 1), then change every pixel of the right half.
    keep = torch.tensor([r * 4 + c for r in range(4) for c in range(2)]).expand(BATCH, -1)
    changed = images.clone()
    changed[..., 16:] = torch.randn_like(changed[..., 16:])
    with torch.no_grad():
        before = encoder(images, keep).tokens
        after = encoder(changed, keep).tokens
        full_before = encoder(images).tokens[:, :2]
        full_after = encoder(changed).tokens[:, :2]
    torch.testing.assert_close(after, before)
    # The check is able to fail: with all patches kept, the right half does change the left tokens.
    assert not torch.allclose(full_after, full_before, atol=1e-4)


def test_gradients_flow_through_an_indexed_encoding(images) -> None:
    torch.manual_seed(0)
    enc = build_vit("vit_tiny", VitParams(patch_size=8), BuildContext(image_size=32))
    out = enc(images, random_indices(BATCH, 5, 16), return_blocks=(5,))
    (out.tokens.square().mean() + out.blocks[5].mean()).backward()
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.weight", "norm.weight"):
        grad = enc.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_cost_of_the_blocks_scales_with_the_number_of_kept_patches(encoder, images) -> None:
    def flops(keep: int) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            encoder(images, random_indices(BATCH, keep, 16))
        return counter.get_total_flops()

    full = flops(16)
    # Linear layers are ~98% of the work at 16 tokens; attention (quadratic) and the patch
    # embedding (run on all patches) move the ratio by about a percent.
    assert flops(8) / full == pytest.approx(0.5, abs=0.03)
    assert flops(4) / full == pytest.approx(0.25, abs=0.03)


# --- returned blocks -------------------------------------------------------------------------------


def test_block_minus_one_is_the_last_block_before_the_final_norm(encoder, images) -> None:
    with torch.no_grad():
        out = encoder(images, return_blocks=(-1, 11, 0, 3))
    assert set(out.blocks) == {-1, 11, 0, 3}
    torch.testing.assert_close(out.blocks[-1], out.blocks[11])
    torch.testing.assert_close(encoder.norm(out.blocks[-1]), out.tokens)
    assert not torch.allclose(out.blocks[-1], out.tokens)


def test_returned_blocks_are_the_outputs_of_those_blocks(encoder, images) -> None:
    with torch.no_grad():
        out = encoder(images, return_blocks=(0, 3))
        x = encoder.patch_embed(images) + encoder.pos_embed
        x = encoder.blocks[0](x)
        torch.testing.assert_close(out.blocks[0], x)
        for block in encoder.blocks[1:4]:
            x = block(x)
        torch.testing.assert_close(out.blocks[3], x)


@pytest.mark.parametrize("bad", [12, -13])
def test_a_block_that_does_not_exist_is_refused(encoder, images, bad: int) -> None:
    with pytest.raises(ValueError, match=f"block {bad} does not exist; valid are -12 .. 11"):
        encoder(images, return_blocks=(bad,))


# --- inputs and building ---------------------------------------------------------------------------


def test_image_size_not_divisible_by_patch_size_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="patch_size 8 does not divide image_size 36") as info:
        build_vit("vit_tiny", VitParams(patch_size=8), BuildContext(image_size=36))
    assert isinstance(info.value, UserError)
    assert "2, 3, 4, 6, 9, 12, 18" in str(info.value)  # the patch sizes that would work


def test_wrong_image_shape_names_both_shapes(encoder) -> None:
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        encoder(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize(
    "indices",
    [torch.zeros(BATCH, 4, dtype=torch.int32), torch.zeros(BATCH + 1, 4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)],
)
def test_malformed_indices_are_refused(encoder, images, indices) -> None:
    with pytest.raises(ValueError, match="indices must be int64"):
        encoder(images, indices)


@pytest.mark.parametrize(
    ("choice", "device", "fused"),
    [("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True), (False, "cuda", False)],
)
def test_fused_attention_choice(choice: bool | str, device: str, fused: bool) -> None:
    ctx = BuildContext(image_size=16, device=torch.device(device))
    enc = build_vit("vit_tiny", VitParams(patch_size=8, fused_attention=choice), ctx)
    assert [block.attn.fused_attn for block in enc.blocks] == [fused] * enc.depth


def test_fused_and_plain_attention_agree(encoder, images) -> None:
    with torch.no_grad():
        plain = encoder(images).tokens
        encoder.set_fused_attention(True)
        try:
            fused = encoder(images).tokens
        finally:
            encoder.set_fused_attention(False)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_position_embeddings_are_fixed_distinct_and_not_saved(encoder) -> None:
    table = sincos_pos_embed_2d(192, (4, 4))
    assert table.shape == (1, 16, 192)
    assert torch.cdist(table[0], table[0]).add(torch.eye(16)).min() > 0.1  # all positions differ
    torch.testing.assert_close(encoder.pos_embed, table)
    assert not encoder.pos_embed.requires_grad
    assert "pos_embed" not in encoder.state_dict()
    assert all(not name.startswith("head") for name in encoder.state_dict())


def test_a_deep_copy_encodes_the_same(encoder, images) -> None:
    twin = copy.deepcopy(encoder)  # the core copies the encoder for the EMA target
    with torch.no_grad():
        torch.testing.assert_close(twin(images).tokens, encoder(images).tokens)


# --- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 0}, "patch_size: must be >= 1, got 0"),
        ({"drop_path_rate": 1.0}, "drop_path_rate: must be >= 0, < 1, got 1.0"),
        ({"fused_attention": "on"}, "fused_attention: must be one of 'auto', True, False, got 'on'"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VitParams(**kwargs)


def test_parameters_structure_strictly_from_yaml_data() -> None:
    assert structure(VitParams, {"patch_size": 4, "fused_attention": False}) == VitParams(patch_size=4, fused_attention=False)
    with pytest.raises(ValueError, match=r"encoder.params.patch_sise: unknown key \(did you mean 'patch_size'\?\)"):
        structure(VitParams, {"patch_sise": 4}, path="encoder.params")
    with pytest.raises(ValueError, match="patch_size: expected an integer, got 4.5"):
        structure(VitParams, {"patch_size": 4.5})


def test_chunked_encoding_without_gradients_equals_the_whole_batch(encoder, images) -> None:
    batch = torch.cat([images] * 3)  # 6 images of 16 tokens
    indices = random_indices(6, 10, encoder.num_patches)
    whole_chunk = encoder.inference_chunk_tokens
    try:
        encoder.inference_chunk_tokens = 0
        with torch.no_grad():
            whole = encoder(batch, return_blocks=(3, -1))
            whole_indexed = encoder(batch, indices=indices)
        encoder.inference_chunk_tokens = 20  # one image of 16 tokens (two of 10) per chunk
        with torch.no_grad():
            assert encoder._images_per_chunk(batch, 16) == 1
            chunked = encoder(batch, return_blocks=(3, -1))
            chunked_indexed = encoder(batch, indices=indices)
        # With gradients the batch is never split: a backward pass needs the whole graph.
        assert encoder._images_per_chunk(batch, 16) == 6
    finally:
        encoder.inference_chunk_tokens = whole_chunk
    torch.testing.assert_close(chunked.tokens, whole.tokens)
    assert set(chunked.blocks) == {3, -1}
    for key in whole.blocks:
        torch.testing.assert_close(chunked.blocks[key], whole.blocks[key])
    torch.testing.assert_close(chunked_indexed.tokens, whole_indexed.tokens)


# --- the 2D sine-cosine table (pinned: trained checkpoints depend on its layout) -------------------


def _sincos_by_hand(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """The table entry by entry in float64, written independently of the code under test.

    Channel quarters: sin(row * w_j), cos(row * w_j), sin(col * w_j), cos(col * w_j), with
    ``w_j = 10000 ** (-j / (D / 4))``; positions row-major.
    """
    import math

    quarter = embed_dim // 4
    rows, cols = grid
    out = torch.empty(rows * cols, embed_dim, dtype=torch.float64)
    for p in range(rows * cols):
        r, c = divmod(p, cols)
        for k in range(embed_dim):
            part, j = divmod(k, quarter)
            angle = (r if part < 2 else c) * 10000.0 ** (-j / quarter)
            out[p, k] = math.sin(angle) if part % 2 == 0 else math.cos(angle)
    return out


# Recorded from the two tables this module and plugins/hierarchical.py computed (in float64, rounded
# to float32) before they became one function built on timm's: (position, channel) -> value, and
# sum / +-weighted sum / sum of |x| over the whole table.
_PINNED = {
    (192, (4, 4)): (
        {(5, 1): 0.7348219752311707, (5, 50): 0.7767596244812012, (5, 97): 0.7348219752311707,
         (5, 150): 0.9504152536392212, (15, 47): 0.0003634582972154021, (15, 191): 0.9999999403953552, (3, 10): 0.0},
        (1600.5044260935974, 4.638338290460524, 1646.013937087555),
    ),
    (64, (2, 3)): (
        {(4, 0): 0.8414709568023682, (4, 3): 0.17689219117164612, (4, 17): 0.8460091352462769,
         (4, 35): 0.17689219117164612, (5, 40): 0.019998665899038315, (5, 63): 0.9999999403953552, (2, 55): 0.9993675947189331},
        (200.89270644904173, 4.307561857276596, 202.55729382754362),
    ),
}


@pytest.mark.parametrize(("embed_dim", "grid"), list(_PINNED))
def test_sincos_table_keeps_its_recorded_values_and_layout(embed_dim: int, grid: tuple[int, int]) -> None:
    table = sincos_pos_embed_2d(embed_dim, grid)
    assert table.shape == (1, grid[0] * grid[1], embed_dim) and table.dtype == torch.float32
    table = table[0].double()
    # float32 rounding of the angles is all that may differ (a few ulps).
    torch.testing.assert_close(table, _sincos_by_hand(embed_dim, grid), rtol=0, atol=1e-6)
    entries, (total, weighted, absolute) = _PINNED[(embed_dim, grid)]
    for index, value in entries.items():
        assert table[index].item() == pytest.approx(value, abs=1e-6), index
    weights = torch.arange(table.numel(), dtype=torch.float64).reshape(table.shape).remainder(7).sub(3)
    assert table.sum().item() == pytest.approx(total, abs=5e-5)
    assert (table * weights).sum().item() == pytest.approx(weighted, abs=5e-5)
    assert table.abs().sum().item() == pytest.approx(absolute, abs=5e-5)


def test_sincos_table_of_a_large_grid_matches_the_formula() -> None:
    table = sincos_pos_embed_2d(64, (14, 14))[0].double()
    torch.testing.assert_close(table, _sincos_by_hand(64, (14, 14)), rtol=0, atol=5e-6)


def test_sincos_table_needs_a_width_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, (2, 2))
