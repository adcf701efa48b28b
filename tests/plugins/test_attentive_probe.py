"""The ``attentive_probe`` evaluator: V-JEPA's cross-attention probe on frozen patch tokens."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet
from hjepa_kit.errors import UserError
from hjepa_kit.plugins.attentive_heads import AttentiveProbes, EfficientProbes
from hjepa_kit.plugins.attentive_probe import (
    ATTENTIVE_PROBE_GRADE,
    AttentiveProbeParams,
    _queries_for,
    attentive_probe,
    build_attentive_probe,
)
from hjepa_kit.plugins.linear_probe import linear_probe

T, D = 8, 16


def where_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens where the label is *which* token holds a pattern: one of the first half (0) or the second (1).

    Every token is its position's embedding plus noise; one token also holds a fixed pattern. The
    mean over the tokens is the same for both labels up to noise (the pattern and every position
    are averaged in), so mean pooling keeps no information about the label; attention can find the
    pattern and read its position.
    """
    fixed = torch.Generator().manual_seed(7)
    positions = torch.randn(T, D, generator=fixed)
    pattern = 3 * torch.randn(D, generator=fixed)
    g = torch.Generator().manual_seed(seed)
    where = torch.randint(0, T, (n,), generator=g)
    tokens = positions.expand(n, T, D) + 0.1 * torch.randn(n, T, D, generator=g)
    tokens[torch.arange(n), where] += pattern
    return tokens.half(), (where >= T // 2).long()


def token_set(n_train: int = 600, n_test: int = 400) -> FeatureSet:
    train, train_labels = where_tokens(n_train, 1)
    test, test_labels = where_tokens(n_test, 2)
    return FeatureSet(train=train.float().mean(1), train_labels=train_labels, test=test.float().mean(1), test_labels=test_labels,
                      num_classes=2, train_tokens=train, test_tokens=test)  # fmt: skip


def probe(fs: FeatureSet, **kw):
    kw = {"lr": (3e-3,), "weight_decay": (1e-3,), "epochs": 15, "batch_size": 64, "warmup_epochs": 0.5, **kw}
    return attentive_probe(fs.train_tokens, fs.train_labels, fs.test_tokens, fs.test_labels, fs.num_classes, **kw)


@pytest.mark.parametrize("head, kw", [("vjepa", {}), ("efficient", {"lr": (3e-2,), "num_queries": 4})])
def test_attention_reads_which_token_holds_the_pattern_where_mean_pooling_cannot(head, kw):
    fs = token_set()
    pooled = linear_probe(fs.train, fs.train_labels, fs.test, fs.test_labels, 2, weight_decay=1e-3, max_iter=100)
    attended = probe(fs, epochs=8, head=head, **kw)
    assert pooled.top1 < 0.65  # chance is 0.5
    assert attended.top1 > 0.9, attended
    assert attended.val_top1 > 0.9


def randomise(probes) -> None:
    """Random values in every parameter, the LayerNorm affine included, so nothing is trivially 0 or 1."""
    with torch.no_grad():
        for v in probes.params.values():
            v.copy_(torch.randn(v.shape, generator=torch.Generator().manual_seed(v.numel())) * 0.5)


def naive_block(probes: AttentiveProbes, g: int, tokens: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
    """Probe ``g`` written as V-JEPA's block: full keys (with a bias) and values of every token."""
    p = {k: v[g].detach() for k, v in probes.params.items()}
    h, d = probes.num_heads, probes.dim
    dh = d // h
    x = F.layer_norm(tokens, (d,), p["ln1_w"], p["ln1_b"], eps=1e-5)
    q = (p["query"] @ p["wq"].T + p["bq"]).view(h, dh)
    k = (x @ p["wk"].T + key_bias).view(*x.shape[:2], h, dh)
    v = (x @ p["wv"].T + p["bv"]).view(*x.shape[:2], h, dh)
    attn = torch.einsum("hd,bthd->bht", q, k).div(math.sqrt(dh)).softmax(-1)
    out = torch.einsum("bht,bthd->bhd", attn, v).reshape(len(x), d)
    y = p["query"] + out @ p["wo"].T + p["bo"]
    y = y + F.gelu(F.layer_norm(y, (d,), p["ln2_w"], p["ln2_b"], eps=1e-5) @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
    return y @ p["wh"].T + p["bh"]


def test_the_folded_attention_is_the_block_with_full_keys_and_values():
    probes = AttentiveProbes(3, D, 5, 2, 4.0, torch.Generator().manual_seed(0))
    randomise(probes)
    tokens = torch.randn(4, T, D)
    fast = probes(tokens)
    assert fast.shape == (3, 4, 5)
    for g in range(3):
        torch.testing.assert_close(fast[g], naive_block(probes, g, tokens, key_bias=torch.randn(D)), rtol=1e-4, atol=1e-4)


def naive_efficient(probes: EfficientProbes, g: int, tokens: torch.Tensor) -> torch.Tensor:
    """Probe ``g`` written as EP: every token's values formed, query ``k`` pooling its slice of them."""
    p = {k: v[g].detach() for k, v in probes.params.items()}
    k, d = probes.num_queries, probes.dim
    x = F.layer_norm(tokens, (d,), eps=1e-5)
    attn = torch.einsum("kd,btd->bkt", p["query"], x).div(math.sqrt(d)).softmax(-1)
    values = (x @ p["wv"].T).view(*x.shape[:2], k, d // k)  # (B, T, K, D/K)
    y = torch.einsum("bkt,btkc->bkc", attn, values).reshape(len(x), d)
    return F.layer_norm(y, (d,), p["ln_w"], p["ln_b"], eps=1e-5) @ p["wh"].T + p["bh"]


def test_the_efficient_probe_pools_values_it_never_forms():
    probes = EfficientProbes(3, D, 5, 4, torch.Generator().manual_seed(0))
    randomise(probes)
    tokens = torch.randn(4, T, D)
    fast = probes(tokens)
    assert fast.shape == (3, 4, 5)
    for g in range(3):
        torch.testing.assert_close(fast[g], naive_efficient(probes, g, tokens), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_queries=3 does not divide the token width 16"):
        EfficientProbes(1, D, 5, 3, torch.Generator())


def test_each_head_has_its_own_default_grid():
    fs = token_set(n_train=100, n_test=50)
    assert set(probe(fs, epochs=1, lr=None, head="efficient").grid) == {(a, 1e-3) for a in (1e-2, 3e-2)}
    assert set(probe(fs, epochs=1, lr=None, head="vjepa").grid) == {(a, 1e-3) for a in (1e-3, 3e-3)}
    assert AttentiveProbeParams().head == "efficient" and AttentiveProbeParams().lr is None
    assert [_queries_for(d, None) for d in (192, 384, 16, 200, 7)] == [32, 32, 16, 25, 7]  # EP's 32, else a divisor below it


def test_a_seed_reproduces_the_result_and_the_grid_is_searched_on_held_out_train():
    fs = token_set(n_train=200, n_test=100)
    kw = {"epochs": 3, "lr": (1e-3, 3e-3), "weight_decay": (1e-3, 1e-1)}
    first, again = probe(fs, seed=3, **kw), probe(fs, seed=3, **kw)
    assert (first.top1, first.val_top1, first.grid, first.confusion.tolist()) == (again.top1, again.val_top1, again.grid, again.confusion.tolist())
    assert set(first.grid) == {(a, w) for a in (1e-3, 3e-3) for w in (1e-3, 1e-1)}
    assert first.val_top1 == max(first.grid.values()) and (first.lr, first.weight_decay) in first.grid
    assert first.confusion.shape == (2, 2) and first.confusion.sum() == 100


def test_the_evaluator_declares_tokens_and_grades_its_top1():
    fs = token_set(n_train=200, n_test=100)
    evaluate = build_attentive_probe(AttentiveProbeParams(epochs=2, batch_size=64, lr=(1e-3,), weight_decay=(1e-3,)), BuildContext(image_size=16))
    assert evaluate.needs_tokens is True
    level = FeatureSet(train=fs.train, train_labels=fs.train_labels, test=fs.test, test_labels=fs.test_labels, num_classes=2)
    result = evaluate({"encoder": fs, "level0": level}, "level0")  # the default has no tokens: the one that has is used
    assert isinstance(result, EvalResult) and result.artifacts["representation"] == "encoder"
    assert {"attentive_probe/top1", "attentive_probe/top5", "attentive_probe/val_top1", "attentive_probe/lr"} <= set(result.metrics)
    assert result.grades == {"attentive_probe/top1": ATTENTIVE_PROBE_GRADE}
    assert list(result.artifacts["grid"]) == ["lr=0.001,wd=0.001"]


def test_bad_parameters_and_missing_tokens_are_clear_errors():
    fs = token_set(n_train=50, n_test=20)
    pooled_only = FeatureSet(train=fs.train, train_labels=fs.train_labels, test=fs.test, test_labels=fs.test_labels, num_classes=2)
    ctx = BuildContext(image_size=16)
    with pytest.raises(UserError, match="patch tokens.*needs_tokens"):
        build_attentive_probe(AttentiveProbeParams(), ctx)({"encoder": pooled_only}, "encoder")
    with pytest.raises(UserError, match="'encoder' carries no patch tokens"):
        build_attentive_probe(AttentiveProbeParams(representation="encoder"), ctx)({"encoder": pooled_only}, "encoder")
    with pytest.raises(UserError, match="num_heads=3 does not divide the token width 16"):
        probe(fs, head="vjepa", num_heads=3)
    with pytest.raises(UserError, match="num_queries=3 does not divide the token width 16"):
        probe(fs, num_queries=3)
    with pytest.raises(UserError, match="num_queries=5 does not divide the token width 192"):
        build_attentive_probe(AttentiveProbeParams(num_queries=5), BuildContext(image_size=16, embed_dim=192))
    with pytest.raises(UserError, match="head 'mlp' is not one of vjepa, efficient"):
        probe(fs, head="mlp")
    with pytest.raises(ValueError, match="head"):
        AttentiveProbeParams(head="mlp")
    with pytest.raises(UserError, match="at least one value"):
        build_attentive_probe(AttentiveProbeParams(lr=()), ctx)
    with pytest.raises(ValueError, match="epochs"):
        AttentiveProbeParams(epochs=0)
