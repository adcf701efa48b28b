"""Patch tokens in the evaluation contract: a FeatureSet may carry them, extracted only when an evaluator asks."""

from __future__ import annotations

import json

import pytest
import torch

import hjepa_kit
from hjepa_kit import hookimpl
from hjepa_kit.contracts import FeatureSet, needs_tokens
from hjepa_kit.evaluation.features import compact_tokens, extract_features, extract_features_and_tokens
from hjepa_kit.evaluation.pretrained import load_pretrained
from hjepa_kit.evaluation.selection import EVAL_TYPES
from hjepa_kit.testing import random_feature_sets


def test_a_feature_set_carries_tokens_of_matching_rows_or_none():
    x, y = torch.randn(6, 4), torch.arange(6) % 2
    plain = FeatureSet(train=x, train_labels=y, test=x[:3], test_labels=y[:3], num_classes=2)
    assert not plain.has_tokens and plain.train_tokens is None
    tokens = torch.randn(6, 5, 4).half()
    full = FeatureSet(train=x, train_labels=y, test=x[:3], test_labels=y[:3], num_classes=2, train_tokens=tokens, test_tokens=tokens[:3])
    assert full.has_tokens
    with pytest.raises(ValueError, match="together"):
        FeatureSet(train=x, train_labels=y, test=x[:3], test_labels=y[:3], num_classes=2, train_tokens=tokens)
    with pytest.raises(ValueError, match=r"train_tokens must be \(6, T, D\)"):
        FeatureSet(train=x, train_labels=y, test=x[:3], test_labels=y[:3], num_classes=2, train_tokens=tokens[:4], test_tokens=tokens[:3])
    with pytest.raises(ValueError, match="int64"):
        FeatureSet(train=x, train_labels=y, test=x[:3], test_labels=y[:3], num_classes=2,
                   train_tokens=tokens.long(), test_tokens=tokens[:3].long())  # fmt: skip


def test_tokens_are_kept_in_half_precision_float16_when_in_range():
    small = torch.randn(3, 4, 8)
    kept = compact_tokens(small)
    assert kept.dtype == torch.float16
    assert ((kept.float() - small).abs() <= small.abs() * 2**-10 + 1e-7).all()
    assert compact_tokens(small * 1e5).dtype == torch.bfloat16  # beyond float16's range
    assert compact_tokens(torch.tensor([[[float("inf")]]])).dtype == torch.bfloat16


def test_the_stand_in_features_carry_tokens_on_encoder_only_when_asked():
    assert not any(fs.has_tokens for fs in random_feature_sets().values())
    sets = random_feature_sets(tokens=8)
    assert sets["encoder"].train_tokens.shape == (96, 8, 16) and not sets["level0"].has_tokens
    torch.testing.assert_close(sets["encoder"].train, sets["encoder"].train_tokens.float().mean(1))


def test_both_new_evaluators_are_eval_type_shorthands():
    assert {"few_shot", "attentive_probe"} <= set(EVAL_TYPES)


@pytest.fixture(scope="module")
def pretrained(checkpoint):
    model = load_pretrained(checkpoint)
    return model, model.build_dataset().load("test")


def test_extraction_with_tokens_gives_the_same_pooled_features_and_their_tokens(pretrained):
    model, data = pretrained
    kwargs = dict(image_size=16, batch_size=20, mean=model.mean, std=model.std, device=torch.device("cpu"))
    pooled = extract_features(model.model, data, **kwargs)
    with_tokens, tokens = extract_features_and_tokens(model.model, data, **kwargs)
    assert set(with_tokens) == set(pooled) and list(tokens) == ["encoder"]
    for name in pooled:
        torch.testing.assert_close(with_tokens[name], pooled[name])
    encoder_tokens = tokens["encoder"]
    assert encoder_tokens.shape == (len(data), 16, pooled["encoder"].shape[1]) and encoder_tokens.dtype == torch.float16
    torch.testing.assert_close(encoder_tokens.float().mean(1), pooled["encoder"], rtol=1e-3, atol=1e-3)


class TokenSpy:
    """An evaluator plugin that declares needs_tokens (or not) and records what it was given."""

    def __init__(self) -> None:
        self.seen: dict[str, bool] = {}

    @hookimpl
    def hjepa_register_evaluators(self, register):
        def build(wants):
            def factory(params, ctx):
                def evaluate(features, default):
                    self.seen[f"wants={wants}"] = features["encoder"].has_tokens
                    return {"spy/tokens": float(features["encoder"].has_tokens)}

                evaluate.needs_tokens = wants
                return evaluate

            return factory

        register("token_spy", build(True), summary="records whether tokens came")
        register("pooled_spy", build(False), summary="records whether tokens came")


def test_tokens_are_extracted_for_an_evaluation_exactly_when_an_evaluator_declares_it(checkpoint, tmp_path):
    spy = TokenSpy()
    assert needs_tokens(type("E", (), {"needs_tokens": True})()) and not needs_tokens(lambda f, d: {})
    hjepa_kit.evaluate(checkpoint, eval_types=["pooled_spy"], device="cpu", plugins=[spy], write_report=False)
    assert spy.seen == {"wants=False": False}
    hjepa_kit.evaluate(checkpoint, eval_types=["pooled_spy", "token_spy"], device="cpu", plugins=[spy], write_report=False)
    assert spy.seen == {"wants=False": True, "wants=True": True}  # extracted once, shared by every evaluator


def test_few_shot_and_attentive_probe_run_in_an_evaluation_with_report_and_figure(checkpoint, tmp_path):
    evaluators = [
        {"name": "few_shot", "params": {"shots": [1, 2, 5], "draws": 3}},
        {"name": "attentive_probe", "params": {"epochs": 1, "lr": [1e-3], "weight_decay": [1e-3], "batch_size": 32}},
    ]
    out = tmp_path / "report"
    result = hjepa_kit.evaluate(checkpoint, eval_types=["few_shot", "attentive_probe"], device="cpu", output_dir=out,
                                overrides=[f"evaluation.evaluators={json.dumps(evaluators)}"])  # fmt: skip
    metrics = result["metrics"]
    assert {"few_shot/5shot_top1", "few_shot/5shot_top1_ci95", "attentive_probe/top1"} <= set(metrics)
    assert result["artifacts"]["attentive_probe"]["representation"] == "encoder"
    assert set(result["grades"]) == {"few_shot/5shot_top1", "attentive_probe/top1"}
    saved = json.loads((out / "results.json").read_text())
    assert "accuracy_vs_labels" in saved["figures"] and (out / saved["figures"]["accuracy_vs_labels"]).is_file()
    report = (out / "report.md").read_text()
    assert "## few_shot" in report and "## attentive_probe" in report and "Attentive probe accuracy" in report


def test_a_small_train_split_trains_the_attentive_probe_in_smaller_batches():
    from hjepa_kit.plugins.attentive_probe import batch_for

    # CIFAR-sized: 45,000 images at 256 give 3,520 steps in 20 epochs; the batch stays.
    assert batch_for(45_000, 256, 20, 400) == 256
    # The quickstart's 1,132: 100 steps at 256; 56 images give 400 steps over the same 20 epochs.
    assert batch_for(1_132, 256, 20, 400) == 56
    assert 20 * -(-1_132 // 56) >= 400
    # Never below 16 images, never above the batch asked for; 0 turns the rule off.
    assert batch_for(48, 256, 1, 400) == 16
    assert batch_for(48, 8, 1, 400) == 8
    assert batch_for(1_132, 256, 20, 0) == 256


def test_the_attentive_probe_reports_the_batch_it_trained_with():
    from hjepa_kit.plugins.attentive_probe import attentive_probe

    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(3, 16, generator=generator)

    def tokens_of(labels: torch.Tensor) -> torch.Tensor:
        # one token of each image, at a random place, points in its class's direction
        tokens = torch.randn(len(labels), 4, 16, generator=generator)
        where = torch.randint(0, 4, (len(labels),), generator=generator)
        tokens[torch.arange(len(labels)), where] += 5.0 * directions[labels]
        return tokens

    labels, test_labels = torch.arange(400) % 3, torch.arange(90) % 3
    tokens, test = tokens_of(labels), tokens_of(test_labels)

    def probe(min_steps: int):
        return attentive_probe(tokens, labels, test, test_labels, 3, lr=(3e-3,), weight_decay=(1e-3,), epochs=10,
                               batch_size=256, min_steps=min_steps, head="vjepa", num_heads=1)  # fmt: skip

    shrunk, fixed = probe(200), probe(0)
    assert (shrunk.batch_size, fixed.batch_size) == (18, 256)  # 360 fit images: 20 steps an epoch at 18, 2 at 256
    assert shrunk.top1 > 0.9 and shrunk.top1 > fixed.top1 + 0.2, (shrunk.top1, fixed.top1)
