"""`hjepa evaluate`: a checkpoint evaluates from the file alone, on its own or another dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hjepa_kit
from conftest import run_cli
from datafiles import write_cifar10

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory):
    from conftest import tiny_config

    root = tmp_path_factory.mktemp("evalrun")
    result = hjepa_kit.train(tiny_config(root, training={"epochs": 1}), console=False)
    return result


def test_a_one_epoch_checkpoint_evaluates_with_no_other_input(one_epoch_checkpoint, tmp_path):
    out = tmp_path / "report"
    proc = run_cli("evaluate", "--checkpoint", str(one_epoch_checkpoint.checkpoints["final"]), "--device", "cpu",
                   "--output-dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    figures = results["results"] if "results" in results else results
    flat = json.dumps(figures)
    for name in ("knn/top1@20", "linear_probe/top1", "feature_quality/rankme", "hierarchy/cka/level0-level1"):
        assert name in flat
    report = (out / "report.md").read_text()
    assert "|" in report and "k-NN" in report or "knn" in report
    pngs = list((out / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {"singular_values", "confusion_matrix", "mask_examples", "loss_curves"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "knn/top1@20" in proc.stdout


def test_default_output_folder_sits_beside_the_runs_checkpoints(one_epoch_checkpoint):
    figures = hjepa_kit.evaluate(one_epoch_checkpoint.checkpoints["final"], eval_types=["knn"], device="cpu")
    assert set(figures["metrics"]) == {"knn/top1@20", "knn/top5@20"}
    report = Path(figures["paths"]["report.md"])
    assert report.parent == one_epoch_checkpoint.checkpoint_dir.parent.parent / "eval" / "tiny"


def test_the_plans_evaluate_command_on_a_cifar10_folder(one_epoch_checkpoint, tmp_path):
    write_cifar10(tmp_path / "cifar10", per_batch=20)
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "evaluate.py"), "--checkpoint", str(one_epoch_checkpoint.checkpoints["best_model"]),
         "--dataset", "cifar10", "--data-path", str(tmp_path / "cifar10"), "--eval-type", "knn", "linear_probe",
         "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--set", "data.dataset.params.verify=false"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "linear_probe/top1" in json.dumps(results)


def test_unknown_eval_type_and_missing_dataset_are_clear_errors(one_epoch_checkpoint, tmp_path):
    ckpt = str(one_epoch_checkpoint.checkpoints["final"])
    bad = run_cli("evaluate", "--checkpoint", ckpt, "--eval-type", "knnn")
    assert bad.returncode == 2 and "--eval-type 'knnn': unknown evaluation; allowed: all, " in bad.stderr
    allowed = bad.stderr.split("allowed: ")[1].strip().split(", ")
    assert allowed == sorted(set(allowed)) and {"knn", "knn_faiss", "linear_probe"} <= set(allowed)  # once each, sorted
    missing = run_cli("evaluate", "--checkpoint", ckpt, "--dataset", "cifar10", "--data-path", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def test_in_process_evaluator_plugin(one_epoch_checkpoint):
    from hjepa_kit import hookimpl

    class MeanNorm:
        @hookimpl
        def hjepa_register_evaluators(self, register):
            register("mean_norm", lambda params, ctx: (lambda features, default: {
                "mean_norm": float(features[default].test.norm(dim=1).mean())}), summary="feature norm")

    figures = hjepa_kit.evaluate(one_epoch_checkpoint.checkpoints["final"], eval_types=["mean_norm"], device="cpu",
                                 plugins=[MeanNorm()], write_report=False)
    assert figures["metrics"]["mean_norm"] > 0


def test_a_third_party_evaluator_grades_its_own_figure(one_epoch_checkpoint, tmp_path):
    from hjepa_kit import hookimpl
    from hjepa_kit.contracts import EvalResult, Grade

    norm_grade = Grade(label="Mean feature norm", thresholds=(0.0, 1e6, 2e6))

    def build(params, ctx):
        def evaluate(features, default):
            norm = float(features[default].test.norm(dim=1).mean())
            return EvalResult(metrics={"norms/mean": norm}, grades={"norms/mean": norm_grade, "norms/absent": norm_grade})

        return evaluate

    class MeanNorm:
        @hookimpl
        def hjepa_register_evaluators(self, register):
            register("mean_norm", build, summary="feature norm")

    out = tmp_path / "report"
    figures = hjepa_kit.evaluate(one_epoch_checkpoint.checkpoints["final"], eval_types=["mean_norm"], device="cpu",
                                 plugins=[MeanNorm()], output_dir=out)
    assert figures["grades"] == {"norms/mean": norm_grade}  # a grade without its figure is dropped
    report = (out / "report.md").read_text()
    summary = report.split("## Grades")[1].split("\n## ")[0]
    assert "| Mean feature norm | `norms/mean` |" in summary and "| > 0 | > 1e+06 | > 2e+06 | minimum |" in summary
    assert json.loads((out / "results.json").read_text())["plan_grades"]["norms/mean"]["grade"] == "minimum"


def test_the_default_representation_is_configurable(one_epoch_checkpoint):
    ckpt = one_epoch_checkpoint.checkpoints["final"]
    encoder = hjepa_kit.evaluate(ckpt, eval_types=["knn"], device="cpu", write_report=False)
    level0 = hjepa_kit.evaluate(ckpt, eval_types=["knn"], device="cpu", write_report=False,
                                overrides=["evaluation.representation=level0"])
    assert level0["artifacts"]["knn_faiss"]["representation"] == "level0"
    assert encoder["artifacts"]["knn_faiss"]["representation"] == "encoder"
    with pytest.raises(hjepa_kit.ConfigError, match="evaluation.representation 'level9': unknown representation; this model has encoder, level0, level1"):
        hjepa_kit.evaluate(ckpt, eval_types=["knn"], device="cpu", write_report=False, overrides=["evaluation.representation=level9"])
