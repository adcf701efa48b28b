"""The evaluation report: results.json, report.md, PNG figures and TensorBoard records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hjepa_kit.contracts import Grade
from hjepa_kit.evaluation.report import MaskExamples, grade_figures, read_metrics_log, to_jsonable, write_report
from hjepa_kit.evaluation.tensorboard_writer import write_tensorboard
from hjepa_kit.plugins.feature_quality import VARIANCE_GRADE, rank_grade
from hjepa_kit.plugins.knn import KNN_GRADE
from hjepa_kit.plugins.linear_probe import LINEAR_PROBE_GRADE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RESULTS = {
    "knn/top1@20": 0.55,
    "knn/top5@20": 0.91,
    "linear_probe/top1": 0.72,
    "linear_probe/top5": 0.97,
    "feature_quality/variance_mean": 0.03,
    "feature_quality/energy_rank95": 120.0,
    "feature_quality/energy_rank95_frac": 120 / 192,
    "feature_quality/rankme": 150.5,
    "feature_quality/dim": 192.0,
    "feature_quality/cosine_mean": float("nan"),
    "hierarchy/encoder/knn_top1": 0.55,
    "hierarchy/level0/knn_top1": 0.45,
    "hierarchy/level0/linear_top1": 0.62,
    "hierarchy/level1/knn_top1": 0.35,
    "hierarchy/level1/linear_top1": 0.52,
    "hierarchy/cka/level0-level1": 0.8,
}

# The grades the built-in evaluators declare for these figures (the report knows no figure names).
PER_LEVEL_KNN = Grade(label="k-NN accuracy (k=20)", thresholds=KNN_GRADE.thresholds, percent=True, summary=False)
PER_LEVEL_LINEAR = Grade(label="Linear probe accuracy", thresholds=LINEAR_PROBE_GRADE.thresholds, percent=True, summary=False)
GRADES = {
    "knn/top1@20": KNN_GRADE,
    "linear_probe/top1": LINEAR_PROBE_GRADE,
    "feature_quality/variance_mean": VARIANCE_GRADE,
    "feature_quality/energy_rank95_frac": rank_grade(192),
    "hierarchy/encoder/knn_top1": PER_LEVEL_KNN,
    "hierarchy/level0/knn_top1": PER_LEVEL_KNN,
    "hierarchy/level0/linear_top1": PER_LEVEL_LINEAR,
    "hierarchy/level1/knn_top1": PER_LEVEL_KNN,
    "hierarchy/level1/linear_top1": PER_LEVEL_LINEAR,
}


def artifacts() -> dict:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 20, size=(10, 10)) + np.diag(np.full(10, 80))
    return {
        "linear_probe": {"confusion_matrix": confusion, "representation": "encoder"},
        "feature_quality": {"singular_values": torch.linspace(10, 0.1, 192, dtype=torch.float64), "verdict": "healthy (test)"},
        "hierarchy": {"cka_matrix": np.eye(2), "cka_names": ["level0", "level1"], "level_accuracy": {
            "knn top-1": {"values": {"encoder": 0.55, "level0": 0.45, "level1": 0.35}, "minimum": 0.40},
            "linear top-1": {"values": {"level0": 0.62, "level1": 0.52}, "minimum": 0.50},
        }},
    }


def write_metrics_log(folder: Path, steps: int = 30) -> Path:
    """A training run's ``training.log`` with the ``metrics.jsonl`` the trainer writes beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step in range(10, 10 * steps + 1, 10):
            f.write(json.dumps({"step": step, "epoch": step // 100, "loss": 2.0 / (1 + step / 50),
                                "loss/level0": 1.2 / (1 + step / 50), "loss/level1": 0.8 / (1 + step / 80),
                                "lr": 1e-3 * min(1.0, step / 100)}) + "\n")
        f.write('{"step": 999, "loss": ')  # a half-written last line of a running job
    (folder / "training.log").write_text("step 10 loss 1.9\n")
    return folder / "training.log"


def mask_examples() -> tuple:
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    context = torch.tensor([[0, 1, 2, 3, 8, 9, 10, 11], [20, 21, 22, 28, 29, 30, 36, 37]])
    targets = torch.tensor([[[40, 41, 48, 49], [60, 61, 62, 63]], [[0, 1, 8, 9], [54, 55, 62, 63]]])
    return images, context, targets, (8, 8)


def assert_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), path
    from matplotlib.image import imread

    picture = imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
    assert picture[..., :3].std() > 0.01, f"{path.name} is blank"
    return picture


def test_report_writes_json_markdown_and_figures(tmp_path):
    log = write_metrics_log(tmp_path / "logs")
    written = write_report(
        tmp_path / "eval", RESULTS, artifacts(), grades=GRADES, checkpoint="ckpt/best_model.pth", config={"name": "tiny", "seed": 0},
        timings={"features_s": 1.5, "knn_faiss_s": 0.25}, training_log=log, mask_examples=mask_examples(),
    )
    assert set(written) == {"results_json", "report_md", "loss_curves", "singular_values", "level_accuracy",
                            "confusion_matrix", "mask_examples"}
    for name in ("loss_curves", "singular_values", "level_accuracy", "confusion_matrix", "mask_examples"):
        assert written[name].parent == tmp_path / "eval" / "figures"
        assert_png(written[name])

    document = json.loads(written["results_json"].read_text())
    assert document["results"]["knn/top1@20"] == 0.55
    assert document["results"]["feature_quality/cosine_mean"] is None  # nan is not JSON
    assert document["checkpoint"] == "ckpt/best_model.pth"
    assert document["config"] == {"name": "tiny", "seed": 0}
    assert document["timings"]["features_s"] == 1.5
    assert len(document["artifacts"]["linear_probe"]["confusion_matrix"]) == 10
    assert len(document["artifacts"]["feature_quality"]["singular_values"]) == 192
    assert document["plan_grades"]["knn/top1@20"]["grade"] == "good"
    assert document["figures"]["loss_curves"] == "figures/loss_curves.png"

    markdown = written["report_md"].read_text()
    summary = markdown.split("## Grades")[1].split("\n## ")[0]
    assert "`knn/top1@20`" in summary and "hierarchy/" not in summary  # per-level grades live in their table
    assert "| Linear probe accuracy | `linear_probe/top1` | 72.00% | > 50% | > 60% | > 70% | excellent |" in markdown
    assert "| k-NN accuracy (k=20) | `knn/top1@20` | 55.00% | > 40% | > 50% | > 60% | good |" in markdown
    assert "| `feature_quality/variance_mean` | 0.03 | > 0.05 | > 0.1 | > 0.15 | below minimum |" in markdown
    assert "| `feature_quality/energy_rank95_frac` | 0.625 | > 0.25 D (48) | > 0.5 D (96) | > 0.75 D (144) | good |" in markdown
    assert "| `feature_quality/rankme` | 150.5 |" in markdown
    assert "| `hierarchy/level1/knn_top1` | 35.00% | > 40% | > 50% | > 60% | below minimum |" in markdown
    for group in ("## knn", "## linear_probe", "## feature_quality", "## hierarchy", "## Timings"):
        assert group in markdown
    assert "feature_quality verdict: healthy (test)" in markdown
    assert "![loss_curves](figures/loss_curves.png)" in markdown


def test_loss_curves_follow_the_metrics_file(tmp_path):
    log = write_metrics_log(tmp_path / "a")
    records = read_metrics_log(log.with_name("metrics.jsonl"))
    assert len(records) == 30 and records[0]["loss/level0"] == pytest.approx(1.2 / 1.2)
    first = write_report(tmp_path / "one", {}, training_log=log)
    # A folder or the jsonl itself work as well as training.log.
    assert "loss_curves" in write_report(tmp_path / "two", {}, training_log=log.parent)
    # Different training curves draw a different picture.
    with open(log.with_name("metrics.jsonl"), "w") as f:
        for step in range(10, 310, 10):
            f.write(json.dumps({"step": step, "loss": 1.0 + (step % 30) / 30}) + "\n")
    second = write_report(tmp_path / "three", {}, training_log=log.with_name("metrics.jsonl"))
    a, b = assert_png(first["loss_curves"]), assert_png(second["loss_curves"])
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_missing_training_metrics_are_tolerated(tmp_path):
    written = write_report(tmp_path / "eval", {"knn/top1@20": 0.3}, {}, grades={"knn/top1@20": KNN_GRADE},
                           training_log=tmp_path / "nowhere" / "training.log")
    assert set(written) == {"results_json", "report_md"}
    markdown = written["report_md"].read_text()
    assert "No loss curves" in markdown
    assert "below minimum" in markdown
    assert json.loads(written["results_json"].read_text())["checkpoint"] is None


def test_mask_examples_accept_the_attrs_form(tmp_path):
    images, context, targets, grid = mask_examples()
    written = write_report(tmp_path, {}, mask_examples=MaskExamples(images.numpy(), context, targets[:, 0], grid))
    assert_png(written["mask_examples"])


def test_only_figures_with_a_declared_grade_are_graded():
    results = {"knn/top1@20": 0.61, "knn/top1@10": 0.9, "linear_probe/top1": 0.5, "other": 1.0}
    grades = grade_figures(results, GRADES)
    assert set(grades) == {"knn/top1@20", "linear_probe/top1"}
    assert grades["knn/top1@20"]["grade"] == "excellent"
    assert grades["linear_probe/top1"]["grade"] == "below minimum"  # a grade needs "> 50%"
    assert grades["knn/top1@20"]["thresholds"] == [0.40, 0.50, 0.60] and grades["knn/top1@20"]["check"] == "k-NN accuracy (k=20)"


def test_a_third_party_evaluators_grade_is_shown(tmp_path):
    grades = {
        "mine/score": Grade(label="My score", thresholds=(0.5, 0.6, 0.8)),
        "mine/width_frac": Grade(label="Used width", thresholds=(0.1, 0.2, 0.3), unit="W", unit_value=50, summary=False),
    }
    results = {"mine/score": 0.7, "mine/width_frac": 0.05, "mine/ungraded": 3.0}
    written = write_report(tmp_path, results, {"mine": {"verdict": "fine"}}, grades=grades)
    markdown = written["report_md"].read_text()
    summary = markdown.split("## Grades")[1].split("\n## ")[0]
    assert "| My score | `mine/score` | 0.7 | > 0.5 | > 0.6 | > 0.8 | good |" in summary
    assert "mine/width_frac" not in summary  # summary=False: graded in its own table only
    assert "| `mine/score` | 0.7 | > 0.5 | > 0.6 | > 0.8 | good |" in markdown
    assert "| `mine/width_frac` | 0.05 | > 0.1 W (5) | > 0.2 W (10) | > 0.3 W (15) | below minimum |" in markdown
    assert "| `mine/ungraded` | 3 |  |  |  |  |" in markdown
    document = json.loads(written["results_json"].read_text())
    assert document["plan_grades"]["mine/score"] == {"check": "My score", "value": 0.7, "thresholds": [0.5, 0.6, 0.8], "grade": "good"}
    assert "mine/ungraded" not in document["plan_grades"]


def test_a_grade_needs_three_increasing_thresholds():
    with pytest.raises(ValueError, match="three increasing"):
        Grade(label="x", thresholds=(0.5, 0.4, 0.6))
    with pytest.raises(ValueError, match="three increasing"):
        Grade(label="x", thresholds=(0.5, 0.6))


def test_the_report_modules_name_no_built_in_evaluator():
    import hjepa_kit.evaluation as package

    folder = Path(package.__file__).parent
    for module in ("report.py", "figures.py", "tensorboard_writer.py", "metrics.py"):
        source = (folder / module).read_text()
        for name in ("knn", "linear_probe", "feature_quality", "hierarchy"):
            assert name not in source, f"{module} names {name}"


def test_to_jsonable_handles_arrays_tensors_and_non_finite_numbers():
    value = {"a": np.arange(3), "b": torch.tensor([1.5, float("inf")]), "c": np.float32(2.5), 3: Path("x/y"),
             "d": (np.int64(4), float("nan")), "e": np.bool_(True)}
    assert to_jsonable(value) == {"a": [0, 1, 2], "b": [1.5, None], "c": 2.5, "3": "x/y", "d": [4, None], "e": True}
    json.dumps(to_jsonable(value), allow_nan=False)


def test_write_tensorboard_adds_scalars_images_and_embedding(tmp_path):
    written = write_report(tmp_path / "eval", RESULTS, artifacts(), grades=GRADES)
    features = torch.randn(60, 8)
    labels = torch.arange(60) % 3
    log_dir = write_tensorboard(tmp_path / "tb", RESULTS, written, (features, labels), step=7, max_embeddings=50)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "knn/top1@20" in tags["scalars"]
    assert "feature_quality/cosine_mean" not in tags["scalars"]  # nan is skipped
    (scalar,) = events.Scalars("linear_probe/top1")
    assert scalar.step == 7 and scalar.value == pytest.approx(0.72)
    assert "report/confusion_matrix" in tags["images"]
    assert (log_dir / "projector_config.pbtxt").is_file()
    tsv = next(log_dir.rglob("metadata.tsv")).read_text().split()
    assert len(tsv) == 50


def test_importing_the_report_does_not_import_matplotlib():
    code = ("import sys, hjepa_kit.evaluation.report, hjepa_kit.evaluation.figures, hjepa_kit.evaluation.tensorboard_writer; "
            "assert 'matplotlib' not in sys.modules; assert 'tensorboard' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
