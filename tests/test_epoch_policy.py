"""The end-of-epoch policy, the one collapse rule shared by the monitor and ``feature_quality``, and headline figures."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import attrs
import pytest
import torch

from hjepa_kit import hookimpl
from hjepa_kit.config import EarlyStoppingConfig, LoggingConfig, RunConfig
from hjepa_kit.contracts import EvalResult, FeatureSet
from hjepa_kit.errors import CollapseDetected
from hjepa_kit.evaluation.metrics import judge_collapse
from hjepa_kit.plugins.feature_quality import FeatureQualityParams, HierarchyParams, build_hierarchy, feature_quality
from hjepa_kit.plugins.knn import KnnParams, build_knn
from hjepa_kit.testing import check_component, registry_with
from hjepa_kit.training.epoch_policy import EpochPolicy, select_metric
from hjepa_kit.training.online import feature_stats


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- one definition of collapse -------------------------------------------------------------------


def test_judge_collapse_flags_each_symptom_and_names_its_threshold() -> None:
    thresholds = {"std_threshold": 0.01, "rank_fraction": 0.05}
    healthy = judge_collapse("the tokens", 192, std=0.5, rank=80.0, **thresholds)
    assert not healthy and healthy.reason is None
    flat = judge_collapse("the tokens", 192, std=0.001, rank=80.0, **thresholds)
    assert flat.flat and not flat.narrow
    assert flat.reason == "the mean per-dimension std of the tokens is 0.001 (below logging.collapse_std_threshold=0.01)"
    narrow = judge_collapse("the tokens", 192, std=0.5, rank=9.0, **thresholds)
    assert narrow.narrow and not narrow.flat and "9.0 of 192 dimensions" in narrow.reason and "i.e. 9.6" in narrow.reason
    assert judge_collapse("x", 192, std=math.nan, **thresholds).flat  # nan counts as collapsed
    assert not judge_collapse("x", 192, **thresholds)  # nothing measured, nothing judged
    assert "(below collapse_rank_fraction=0.05" in judge_collapse("x", 192, rank=1.0, source="", **thresholds).reason


@pytest.mark.parametrize("kind", ["healthy", "rank_one", "constant", "faint"])
def test_the_training_monitor_and_feature_quality_judge_alike(kind: str) -> None:
    x = {
        "healthy": torch.randn(400, 32, generator=gen(0)),
        "rank_one": torch.randn(400, 1, generator=gen(1)) * torch.randn(1, 32, generator=gen(2)),
        "constant": torch.full((400, 32), 2.0),
        "faint": torch.randn(400, 32, generator=gen(3)) * 0.005,  # spread in every direction, but tiny
    }[kind]
    stats, collapse = feature_stats(x[None], LoggingConfig())
    quality = feature_quality(x).metrics
    assert (quality["feature_quality/collapsed"], quality["feature_quality/rank_collapsed"]) == (float(collapse.flat), float(collapse.narrow))
    assert stats["features/collapse_warning"] == float(bool(collapse))
    assert bool(collapse) is (kind != "healthy")
    assert quality["feature_quality/std_mean"] == pytest.approx(stats["features/std"], rel=1e-4)


def test_feature_quality_thresholds_default_to_the_monitors_and_follow_its_parameters() -> None:
    params = FeatureQualityParams()
    monitor = LoggingConfig()
    assert (params.std_threshold, params.collapse_rank_fraction) == (monitor.collapse_std_threshold, monitor.collapse_rank_fraction)
    assert FeatureQualityParams(collapse_variance=0.04).std_threshold == pytest.approx(0.2)  # an older configuration's key
    faint = torch.randn(400, 16, generator=gen(4)) * 0.05
    assert feature_quality(faint).metrics["feature_quality/collapsed"] == 0.0
    strict = feature_quality(faint, collapse_std_threshold=0.1)
    assert strict.metrics["feature_quality/collapsed"] == 1.0
    assert strict.artifacts["verdict"].startswith("COLLAPSED: the mean per-dimension std of the features is")


# --- the end-of-epoch policy ----------------------------------------------------------------------


def policy(**training) -> EpochPolicy:
    config = RunConfig()
    return EpochPolicy(attrs.evolve(config, training=attrs.evolve(config.training, **training)))


def test_decide_reports_collapse_best_and_stop_without_committing_the_best() -> None:
    p = policy(early_stopping=EarlyStoppingConfig(metric="loss", patience=1))
    widths = {"encoder": 192}
    first = p.decide({"loss": 1.0, "health/rankme/encoder": 50.0}, 1, widths=widths)
    assert first.collapse is None and first.stop is None
    assert first.best == {"metric": "health/rankme/encoder", "value": 50.0, "epoch": 1}
    assert p.best == {}  # the caller commits it once latest.pth is written
    p.best = first.best
    second = p.decide({"loss": 1.5, "health/rankme/encoder": 2.0}, 2, widths=widths)
    assert "RankMe of the pooled 'encoder' embeddings is 2.0 of 192" in second.collapse
    assert second.stop.startswith("early stopping: loss has not improved")
    assert second.best is None  # 2.0 does not beat 50.0
    assert p.decide({"loss": 0.5}, 3, widths=widths, main=False).stop is None  # rank 0 alone counts


def test_a_resumed_policy_remembers_its_best_count_and_healthy_checkpoint(tmp_path: Path) -> None:
    p = policy(early_stopping=EarlyStoppingConfig(metric="loss", patience=1))
    p.decide({"loss": 1.0}, 1, widths={})
    p.decide({"loss": 1.0}, 2, widths={})
    again = policy(early_stopping=EarlyStoppingConfig(metric="loss", patience=1))
    again.restore({"metric": "loss", "value": 1.0, "epoch": 1}, p.stopping_state(), tmp_path / "latest.pth")
    assert again.healthy_checkpoint == tmp_path / "latest.pth" and again.best["epoch"] == 1
    assert "resumed after the stop" in again.stopped_before(2, 5)
    assert again.stopped_before(5, 5) is None  # nothing left to train anyway
    assert policy().stopped_before(2, 5) is None and policy().stopping_state() == {}


def test_a_collapse_warns_or_stops_as_on_collapse_says(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hjepa_kit"):
        policy().answer_collapse("RankMe of x is 1.0", epoch=2, step=10, commands=lambda last: "  hjepa train ...")
        policy().answer_collapse(None, epoch=3, step=12, commands=lambda last: "  hjepa train ...")
    assert "representation collapse at epoch 2, step 10: RankMe of x is 1.0" in caplog.text
    assert "epoch 3" not in caplog.text  # no reason, no answer
    stop = policy(on_collapse="stop")
    stop.healthy_checkpoint = tmp_path / "latest.pth"
    with pytest.raises(CollapseDetected, match="training.on_collapse=stop") as caught:
        stop.answer_collapse("RankMe of x is 1.0", epoch=2, step=10, commands=lambda last: f"  hjepa train --resume {last}")
    assert f"the last healthy checkpoint is {tmp_path / 'latest.pth'}" in str(caught.value)
    assert f"hjepa train --resume {tmp_path / 'latest.pth'}" in str(caught.value)


# --- the online evaluator's headline: declared, not guessed from a name -----------------------------


def test_select_metric_follows_the_declared_headline_and_no_name_pattern() -> None:
    figures = {"online/mine/top1": 0.9, "online/mine/score": 0.4, "health/rankme/encoder": 30.0, "loss": 0.3}
    assert select_metric("auto", figures, "encoder") == ("health/rankme/encoder", 30.0, True)  # no headline declared
    assert select_metric("knn", figures, "encoder") == ("loss", 0.3, False)
    assert select_metric("auto", figures, "encoder", "online/mine/score") == ("online/mine/score", 0.4, True)
    assert select_metric("knn", figures, "encoder", "online/mine/score")[0] == "online/mine/score"
    # A headline from an earlier epoch that was not evaluated this one: as if none.
    assert select_metric("auto", {"loss": 0.3}, "encoder", "online/mine/score")[0] == "loss"


def _features(seed: int = 5) -> dict[str, FeatureSet]:
    g = gen(seed)
    labels = torch.randint(0, 3, (60,), generator=g)
    x = torch.randn(60, 8, generator=g)
    level = FeatureSet(train=x, train_labels=labels, test=x[:20], test_labels=labels[:20], num_classes=3)
    return {"encoder": level, "level0": level}


def test_the_built_in_evaluators_declare_the_figure_best_model_followed() -> None:
    knn = build_knn(KnnParams(k=(10, 20)), None)(_features(), "encoder")
    assert knn.headline == "knn/top1@10" and knn.headline in knn.metrics  # the first k, as before
    params = HierarchyParams(linear_probe=False)
    hierarchy = build_hierarchy(params, None)(_features(), "encoder")
    assert hierarchy.headline == "hierarchy/encoder/knn_top1"


@attrs.frozen
class NoParams:
    pass


class HeadlinePlugin:
    @hookimpl
    def hjepa_register_evaluators(self, register):
        def factory(headline):
            return lambda p, ctx: (lambda features, default: EvalResult(metrics={"mine/score": 0.5}, headline=headline))

        register("declares", factory("mine/score"), params=NoParams, summary="a headline it returns")
        register("stray_headline", factory("mine/top1"), params=NoParams, summary="a headline it does not return")


def test_the_contract_check_catches_a_headline_the_evaluator_does_not_return() -> None:
    registry = registry_with(HeadlinePlugin(), entry_points=False)
    assert callable(check_component("evaluator", "declares", registry=registry))
    with pytest.raises(AssertionError, match="its headline 'mine/top1' is not among the figures it returns"):
        check_component("evaluator", "stray_headline", registry=registry)
