"""The evaluation report: ``results.json`` and ``report.md``, with the figures beside them.

:func:`write_report` turns the evaluators' figures, grades and artifacts into files a person reads:

- ``results.json``: every figure, the checkpoint, the resolved configuration, timings, the grades
  and every artifact, made JSON-safe (arrays become lists, non-finite numbers ``null``).
- ``report.md``: a summary table of the headline grades, then one table per evaluator (figures
  grouped by the prefix before their first ``/``), each graded figure shown with its Minimum /
  Good / Excellent thresholds.
- ``figures/*.png``: drawn by :mod:`hjepa_kit.evaluation.figures`.

The report grades exactly the figures it is given a :class:`~hjepa_kit.contracts.Grade` for
(evaluators declare them in :attr:`EvalResult.grades <hjepa_kit.contracts.EvalResult>`); it knows
no evaluator's figure names. TensorBoard records are written by
:func:`hjepa_kit.evaluation.tensorboard_writer.write_tensorboard`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..contracts import Grade
from ..errors import OutputError
from ..atomic import write_atomic
from .figures import MaskExamples, draw_figures
from .metrics import grade

__all__ = [
    "MaskExamples",
    "write_report",
    "to_jsonable",
    "read_metrics_log",
    "grade_figures",
]

_ACCURACY = re.compile(r"(top\d+|acc)")


# --- JSON -------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: arrays and tensors become lists, non-finite floats ``None``.

    Mappings keep their order with string keys; attrs instances become mappings; paths and
    anything else unknown become strings.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if attrs.has(type(value)):
        return to_jsonable(attrs.asdict(value, recurse=False))
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch tensor
        return to_jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist"):  # numpy array or scalar
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return str(value)


# --- grades -----------------------------------------------------------------------------------


def grade_figures(results: Mapping[str, float], grades: Mapping[str, Grade]) -> dict[str, dict[str, Any]]:
    """Grade every numeric figure of ``results`` that ``grades`` has a :class:`~hjepa_kit.contracts.Grade` for.

    Returns:
        figure name -> ``{"check", "value", "thresholds": [min, good, excellent], "grade"}``, in
        the order of ``results``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, value in results.items():
        rule = grades.get(name)
        if rule is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name] = {
            "check": rule.label,
            "value": value,
            "thresholds": list(rule.thresholds),
            "grade": grade(float(value), rule.thresholds),
        }
    return out


def _format_value(name: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if not math.isfinite(value):
        return "n/a"
    if _ACCURACY.search(name.rsplit("/", 1)[-1]):
        return f"{100 * value:.2f}%"
    if float(value).is_integer() and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}"


def _format_threshold(rule: Grade, threshold: float) -> str:
    if rule.percent:
        return f"> {100 * threshold:g}%"
    if rule.unit:
        absolute = f" ({threshold * rule.unit_value:g})" if rule.unit_value else ""
        return f"> {threshold:g} {rule.unit}{absolute}"
    return f"> {threshold:g}"


# --- report.md --------------------------------------------------------------------------------


def _group(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else "other"


def _markdown(
    results: Mapping[str, float],
    artifacts: Mapping[str, Mapping[str, Any]],
    grades: Mapping[str, Grade],
    graded: Mapping[str, Mapping[str, Any]],
    *,
    checkpoint: str | None,
    timings: Mapping[str, float],
    figures: Mapping[str, Path],
    output_dir: Path,
    notes: Sequence[str],
) -> str:
    lines = ["# hjepa-kit evaluation report", ""]
    lines.append(f"- Checkpoint: `{checkpoint}`" if checkpoint else "- Checkpoint: (none given)")
    lines.append(f"- Written: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    for evaluator, items in artifacts.items():
        for key in ("verdict", "note"):
            if isinstance(items.get(key), str):
                lines.append(f"- {evaluator} {key}: {items[key]}")
    lines += [f"- {note}" for note in notes]
    lines.append("")

    def cells(name: str) -> list[str]:
        row = graded[name]
        return [_format_threshold(grades[name], t) for t in row["thresholds"]] + [row["grade"]]

    summary = [name for name in graded if grades[name].summary]
    if summary:
        lines += ["## Grades", ""]
        lines += ["| Check | Figure | Value | Minimum | Good | Excellent | Grade |", "|---|---|---|---|---|---|---|"]
        for name in summary:
            row = graded[name]
            lines.append(f"| {row['check']} | `{name}` | {_format_value(name, row['value'])} | " + " | ".join(cells(name)) + " |")
        lines.append("")

    groups: dict[str, list[str]] = {}
    for name in results:
        groups.setdefault(_group(name), []).append(name)
    for group, names in groups.items():
        lines += [f"## {group}", "", "| Figure | Value | Minimum | Good | Excellent | Grade |", "|---|---|---|---|---|---|"]
        for name in names:
            row = cells(name) if name in graded else ["", "", "", ""]
            lines.append(f"| `{name}` | {_format_value(name, results[name])} | " + " | ".join(row) + " |")
        lines.append("")

    if timings:
        lines += ["## Timings", "", "| Stage | Seconds |", "|---|---|"]
        lines += [f"| {stage} | {float(seconds):.2f} |" for stage, seconds in timings.items()]
        lines.append("")

    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({path.relative_to(output_dir).as_posix()})", ""]
    return "\n".join(lines)


def write_report(
    output_dir: str | os.PathLike,
    results: Mapping[str, float],
    artifacts: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    grades: Mapping[str, Grade] | None = None,
    checkpoint: str | None = None,
    config: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    training_log: str | os.PathLike | None = None,
    mask_examples: MaskExamples | Sequence[Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the PNG figures into ``output_dir``.

    Args:
        output_dir: the folder to write into (created).
        results: figure name -> value, from every evaluator.
        artifacts: evaluator name -> its artifacts (``confusion_matrix``, ``singular_values``,
            ``level_accuracy``, ``label_curve``, ``epoch_accuracy``, ``verdict`` ...). Those of a kind
            :func:`~hjepa_kit.evaluation.figures.draw_figures` knows are drawn, whichever
            evaluator gives them.
        grades: figure name -> its :class:`~hjepa_kit.contracts.Grade`, as the evaluators
            declared them (:attr:`EvalResult.grades <hjepa_kit.contracts.EvalResult>`); only these
            figures are graded.
        checkpoint: the evaluated checkpoint file.
        config: the run's resolved configuration (plain data or attrs).
        timings: stage -> seconds.
        training_log: the run's ``training.log`` (its sibling ``metrics.jsonl`` is read), its folder,
            or a ``metrics.jsonl`` itself; missing files are tolerated (no loss figure).
        mask_examples: a :class:`MaskExamples` or the tuple ``(images, context, targets, grid)``.

    Returns:
        name -> path of each file written: ``results_json``, ``report_md`` and one per figure
        (``loss_curves``, ``singular_values``, ``level_accuracy``, ``confusion_matrix``,
        ``accuracy_vs_labels``, ``accuracy_vs_epoch``, ``mask_examples``; an evaluator's name is
        appended when several evaluators give one kind).
    """
    out = Path(output_dir)
    figure_dir = out / "figures"
    try:
        figure_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: the report folder cannot be created ({exc.strerror or exc}); choose another "
                          "with --output-dir") from None
    artifacts = dict(artifacts or {})
    timings = dict(timings or {})
    results = dict(results)
    grades = dict(grades or {})

    metrics_file = _metrics_file(training_log)
    records = read_metrics_log(metrics_file) if metrics_file is not None else []
    figures = draw_figures(figure_dir, artifacts, records, mask_examples)
    notes: list[str] = []
    if "loss_curves" not in figures:
        notes.append(f"No loss curves: no training metrics found ({metrics_file or 'no training log given'}).")

    graded = grade_figures(results, grades)
    document = {
        "results": results,
        "plan_grades": graded,  # the key kept from earlier reports
        "checkpoint": checkpoint,
        "config": config,
        "timings": timings,
        "artifacts": artifacts,
        "figures": {name: path.relative_to(out).as_posix() for name, path in figures.items()},
        "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    results_json = out / "results.json"
    write_atomic(results_json, json.dumps(to_jsonable(document), indent=2, allow_nan=False) + "\n")
    report_md = out / "report.md"
    markdown = _markdown(
        results, artifacts, grades, graded, checkpoint=checkpoint, timings=timings, figures=figures, output_dir=out,
        notes=notes,
    )
    write_atomic(report_md, markdown + "\n")
    return {"results_json": results_json, "report_md": report_md, **figures}


# --- training metrics -------------------------------------------------------------------------


def _metrics_file(training_log: str | os.PathLike | None) -> Path | None:
    if training_log is None:
        return None
    path = Path(training_log)
    if path.is_dir():
        return path / "metrics.jsonl"
    if path.suffix == ".jsonl":
        return path
    return path.with_name("metrics.jsonl")


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics file; ``[]`` when it is missing.

    Lines that are not JSON objects (a half-written last line of a running or killed job) are
    skipped with a warning naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            warnings.warn(f"{path}: line {number} is not a whole JSON record (cut short by a killed run?); it is skipped",
                          stacklevel=2)
    return records
