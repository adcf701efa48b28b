"""The ``fine_tune`` evaluator, the ``needs_model`` contract it uses, and its per-epoch figure."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

import hjepa_kit
from hjepa_kit import hookimpl
from hjepa_kit.contracts import EvalModel, EvalResult, ImageData, needs_model
from hjepa_kit.errors import UserError
from hjepa_kit.evaluation.figures import draw_figures
from hjepa_kit.params import structure
from hjepa_kit.plugins.fine_tune import FINE_TUNE_GRADE, FineTuneParams, build_fine_tune
from hjepa_kit.plugins.fine_tune_loop import PROGRESS_FILE, fine_tune, param_groups
from hjepa_kit.testing import check_component, probe_encoder, random_feature_sets, registry_with, stand_in_model, tiny_context

FAST = {"epochs": 2, "batch_size": 16, "eval_batch_size": 64}


def colour_images(n: int, seed: int, classes: int = 3) -> ImageData:
    """Noise images whose class is the channel made brighter: easy to learn, invisible to a flip or a crop."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 150, (n, 3, 32, 32), generator=generator)
    images[torch.arange(n), labels] += 60
    return ImageData(images=images.to(torch.uint8), labels=labels)


@pytest.fixture
def features():
    return random_feature_sets(num_train=48, num_test=24, num_classes=3)


def model_for(features, state_dir=None) -> EvalModel:
    return stand_in_model(features, state_dir=state_dir)


def test_it_reports_each_epoch_a_grade_and_the_figures_artifacts(features, tmp_path):
    evaluate = build_fine_tune(FineTuneParams(**FAST), tiny_context())
    assert needs_model(evaluate)
    result = evaluate(features, "encoder", model=model_for(features, tmp_path / "state"))
    assert isinstance(result, EvalResult)
    assert {"fine_tune/top1", "fine_tune/top5", "fine_tune/train_top1", "fine_tune/train_loss", "fine_tune/epochs",
            "fine_tune/epoch_s", "fine_tune/labels_per_class"} == set(result.metrics)  # fmt: skip
    assert result.metrics["fine_tune/epochs"] == 2 and result.metrics["fine_tune/labels_per_class"] == 16
    assert 0 <= result.metrics["fine_tune/top1"] <= result.metrics["fine_tune/top5"] <= 1
    assert [h["epoch"] for h in result.artifacts["history"]] == [1, 2]
    curve = result.artifacts["epoch_accuracy"]
    assert curve["epochs"] == [1, 2] and set(curve["series"]) == {"test_top1", "train_top1"}
    assert curve["series"]["test_top1"][-1] == result.metrics["fine_tune/top1"]
    assert result.artifacts["confusion_matrix"].shape == (3, 3) and result.artifacts["confusion_matrix"].sum() == 24
    assert result.grades == {"fine_tune/top1": FINE_TUNE_GRADE}
    assert (tmp_path / "state" / PROGRESS_FILE).is_file()


def test_the_same_seed_gives_the_same_fine_tune(features):
    runs = [fine_tune(model_for(features), 3, seed=seed, **FAST) for seed in (0, 0, 1)]
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in runs]
    assert strip[0] == strip[1]
    assert strip[0] != strip[2]


def test_bad_parameters_and_missing_inputs_are_clear_errors(features):
    problems: list[str] = []
    structure(FineTuneParams, {"layer_decay": 1.5, "epochs": 0}, "evaluation.evaluators[fine_tune].params", problems)
    text = "\n".join(problems)
    assert "evaluation.evaluators[fine_tune].params.layer_decay" in text and "evaluation.evaluators[fine_tune].params.epochs" in text
    with pytest.raises(UserError, match=r"labels_per_class=20.*3 class\(es\)"):
        fine_tune(model_for(features), 3, labels_per_class=20, **FAST)
    evaluate = build_fine_tune(FineTuneParams(**FAST), tiny_context())
    with pytest.raises(UserError, match="needs_model.*evaluation.online"):
        evaluate(features, "encoder")


class Interrupted(Exception):
    pass


def test_an_interrupted_fine_tune_resumes_at_the_next_epoch_and_ends_as_an_uninterrupted_one(features, tmp_path):
    settings = {**FAST, "epochs": 3}
    whole = fine_tune(model_for(features), 3, **settings)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        fine_tune(model_for(features, tmp_path), 3, on_epoch=stop_after_first, **settings)
    epochs: list[int] = []
    resumed = fine_tune(model_for(features, tmp_path), 3, on_epoch=lambda r: epochs.append(r["epoch"]), **settings)
    assert epochs == [2, 3] and resumed.resumed_from == 1 and any("resumed after epoch 1 of 3" in n for n in resumed.notes)
    for a, b in zip(whole.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx({k: v for k, v in b.items() if k != "seconds"}, rel=1e-5)
    again = fine_tune(model_for(features, tmp_path), 3, on_epoch=epochs.append, **settings)  # finished: read, not redone
    assert epochs == [2, 3] and again.top1 == pytest.approx(resumed.top1)
    other = fine_tune(model_for(features, tmp_path), 3, **{**settings, "lr": 2e-3})  # other settings: afresh
    assert other.resumed_from == 0 and any("started afresh" in n for n in other.notes)


def colour_model(features) -> EvalModel:
    return attrs.evolve(model_for(features), train=colour_images(96, 1), test=colour_images(48, 2))


def test_fine_tuning_learns_an_easy_label_far_above_chance(features):
    result = fine_tune(colour_model(features), 3, epochs=4, batch_size=16, lr=3e-3, head_init="zero")  # all learned here
    assert result.top1 >= 0.9  # chance: 1/3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_the_head_starts_as_a_linear_probe_of_the_frozen_encoder(features):
    still = {"epochs": 1, "batch_size": 16, "lr": 1e-9, "augment": False}  # the weights barely move: the start is scored
    assert fine_tune(colour_model(features), 3, head_init="probe", **still).top1 >= 0.8
    assert fine_tune(colour_model(features), 3, head_init="zero", **still).top1 <= 0.5


def test_layer_wise_decay_follows_the_blocks_and_spares_biases_norms_and_positions():
    encoder = probe_encoder()  # patch_embed, pos_embed, blocks.0, blocks.1, norm
    head = torch.nn.Linear(encoder.embed_dim, 3)
    groups, depth = param_groups(encoder, head, layer_decay=0.5, weight_decay=0.05)
    assert depth == 2
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert scale[id(encoder.patch_embed.weight)] == (0.125, 0.05) and scale[id(encoder.pos_embed)] == (0.125, 0.0)
    assert scale[id(encoder.blocks[0][1].weight)] == (0.25, 0.05) and scale[id(encoder.blocks[1][1].bias)] == (0.5, 0.0)
    assert scale[id(encoder.norm.weight)] == (1.0, 0.0) and scale[id(head.weight)] == (1.0, 0.05)


class ModelSpy:
    """A third-party evaluator declaring needs_model, and one that does not: what each is handed."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    @hookimpl
    def hjepa_register_evaluators(self, register):
        def trains(params, ctx):
            def evaluate(features, default, model=None):
                self.seen["model"] = model
                return {"spy/images": float(len(model.train) + len(model.test))}

            evaluate.needs_model = True
            return evaluate

        def reads(params, ctx):
            return lambda features, default: {"spy/features": float(len(features))}

        register("model_spy", trains, summary="records the model it is handed")
        register("feature_spy", reads, summary="takes two arguments")


def test_a_third_party_evaluator_declaring_needs_model_is_checked_with_a_stand_in_model():
    spy = ModelSpy()
    check_component("evaluator", "model_spy", registry=registry_with(spy))
    model = spy.seen["model"]
    assert isinstance(model, EvalModel) and model.state_dir is not None and len(model.train) == 96
    assert model.augment(model.train.images[:2], torch.Generator().manual_seed(0)).shape == (2, 3, 32, 32)


def test_an_evaluation_hands_the_model_to_evaluators_that_need_it_and_fine_tune_resumes_when_run_again(checkpoint, tmp_path):
    spy = ModelSpy()
    evaluators = [{"name": "fine_tune", "params": {"epochs": 1, "batch_size": 32, "labels_per_class": 3}}]
    out = tmp_path / "eval"
    kwargs = dict(device="cpu", output_dir=out, plugins=[spy], overrides=[f"evaluation.evaluators={json.dumps(evaluators)}"])
    first = hjepa_kit.evaluate(checkpoint, eval_types=["fine_tune", "model_spy", "feature_spy"], **kwargs)
    model = spy.seen["model"]  # a third party's evaluator gets its own encoder copy, the images and a progress folder
    assert first["metrics"]["spy/images"] == 96 + 48 and first["metrics"]["spy/features"] >= 1
    assert model.state_dir == out / "state" / "model_spy" and model.fingerprint
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert model.augment(model.train.images[:2], torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
    saved = json.loads((out / "results.json").read_text())
    assert "fine_tune/top1" in saved["results"] and "fine_tune/top1" in first["grades"]
    assert {"accuracy_vs_epoch", "accuracy_vs_labels", "confusion_matrix"} <= set(saved["figures"])
    assert "## fine_tune" in (out / "report.md").read_text()
    assert (out / "state" / "fine_tune" / PROGRESS_FILE).is_file()
    second = hjepa_kit.evaluate(checkpoint, eval_types=["fine_tune"], write_report=False, **kwargs)  # the same output folder
    assert second["metrics"]["fine_tune/top1"] == first["metrics"]["fine_tune/top1"]
    assert "resumed after epoch 1 of 1" in second["artifacts"]["fine_tune"]["note"]


def test_the_epoch_figure_draws_each_evaluator_with_epochs_and_skips_empty_series(tmp_path):
    curve = {"epochs": [1, 2, 3], "series": {"test_top1": [0.2, 0.5, 0.7], "train_top1": [0.3, 0.6, float("nan")]}}
    one = draw_figures(tmp_path, {"fine_tune": {"epoch_accuracy": curve}})
    assert list(one) == ["accuracy_vs_epoch"] and one["accuracy_vs_epoch"].stat().st_size > 0
    two = draw_figures(tmp_path, {"a": {"epoch_accuracy": curve}, "b x": {"epoch_accuracy": curve}})
    assert set(two) == {"accuracy_vs_epoch_a", "accuracy_vs_epoch_b_x"}
    assert draw_figures(tmp_path, {"c": {"epoch_accuracy": {"epochs": [1], "series": {"t": [float("nan")]}}}}) == {}
