"""The evaluation report: ``results.json``, ``report.md``, PNG figures and TensorBoard records.

:func:`write_report` turns the evaluators' figures and artifacts into files a person reads:

- ``results.json``: every figure, the checkpoint, the resolved configuration, timings, the plan
  grades and every artifact, made JSON-safe (arrays become lists, non-finite numbers ``null``).
- ``report.md``: one table per evaluator (figures grouped by the prefix before their first ``/``),
  each figure the training plan grades shown with its Minimum / Good / Excellent thresholds.
- ``figures/*.png``: loss curves (from the run's ``metrics.jsonl``), the singular-value spectrum,
  per-level accuracy, the linear-probe confusion matrix, and mask examples.

:func:`write_tensorboard` adds the figures as scalars, the PNGs as images and the features as a
projector embedding. matplotlib and TensorBoard are imported inside the functions that draw or
write, so importing the core stays fast; figures use matplotlib's object API (``Figure``), never
pyplot, so no global backend is switched.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .metrics import PLAN_THRESHOLDS, grade

__all__ = [
    "MaskExamples",
    "ThresholdRule",
    "THRESHOLD_RULES",
    "write_report",
    "write_tensorboard",
    "to_jsonable",
    "read_metrics_log",
    "plan_grades",
]


@attrs.frozen
class MaskExamples:
    """A few images with the masks a masker drew for them, for the report's mask figure.

    Attributes:
        images: ``(K, 3, H, W)`` uint8 images.
        context: ``(K, Nc)`` int64 context patch indices (row-major over ``grid``).
        targets: ``(K, M, Nt)`` int64 target-block patch indices.
        grid: ``(rows, cols)`` of the patch grid.
    """

    images: Any
    context: Any
    targets: Any
    grid: tuple[int, int]


@attrs.frozen
class ThresholdRule:
    """Which figures the plan grades, and how.

    Attributes:
        pattern: regular expression a figure name must match in full.
        thresholds: key of :data:`~hjepa_kit.evaluation.metrics.PLAN_THRESHOLDS`.
        label: the plan's name of the check.
        summary: whether the figure also appears in the report's summary table (the plan's own
            checks); per-level figures are graded only in their evaluator's table.
    """

    pattern: str
    thresholds: str
    label: str
    summary: bool = True


#: The figures compared with the training plan's success table. Accuracies are fractions in
#: ``[0, 1]``; the rank check uses the plan's definition (95%-energy rank) as a fraction of ``D``.
THRESHOLD_RULES: tuple[ThresholdRule, ...] = (
    ThresholdRule(r"linear_probe/top1", "linear_probe", "Linear probe accuracy"),
    ThresholdRule(r"knn/top1@20", "knn", "k-NN accuracy (k=20)"),
    ThresholdRule(r"feature_quality/variance_mean", "variance", "Feature variance"),
    ThresholdRule(r"feature_quality/energy_rank95_frac", "rank_fraction", "Effective rank (95% energy) / D"),
    ThresholdRule(r"hierarchy/[^/]+/linear_top1", "linear_probe", "Linear probe accuracy", summary=False),
    ThresholdRule(r"hierarchy/[^/]+/knn_top1", "knn", "k-NN accuracy (k=20)", summary=False),
)

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


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temp file + rename), so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- plan thresholds --------------------------------------------------------------------------


def _rule_for(name: str) -> ThresholdRule | None:
    for rule in THRESHOLD_RULES:
        if re.fullmatch(rule.pattern, name):
            return rule
    return None


def plan_grades(results: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Grade every figure the plan has a threshold for.

    Returns:
        figure name -> ``{"check", "value", "thresholds": [min, good, excellent], "grade"}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, value in results.items():
        rule = _rule_for(name)
        if rule is None or not isinstance(value, (int, float)):
            continue
        thresholds = PLAN_THRESHOLDS[rule.thresholds]
        out[name] = {
            "check": rule.label,
            "value": value,
            "thresholds": list(thresholds),
            "grade": grade(float(value), thresholds),
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


def _format_threshold(name: str, threshold: float, dim: float | None) -> str:
    rule = _rule_for(name)
    if rule is not None and rule.thresholds in ("linear_probe", "knn"):
        return f"> {100 * threshold:g}%"
    if rule is not None and rule.thresholds == "rank_fraction":
        absolute = f" ({threshold * dim:g})" if dim else ""
        return f"> {threshold:g} D{absolute}"
    return f"> {threshold:g}"


# --- report -----------------------------------------------------------------------------------


def _group(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else "other"


def _markdown(
    results: Mapping[str, float],
    artifacts: Mapping[str, Mapping[str, Any]],
    grades: Mapping[str, Mapping[str, Any]],
    *,
    checkpoint: str | None,
    timings: Mapping[str, float],
    figures: Mapping[str, Path],
    output_dir: Path,
    notes: Sequence[str],
) -> str:
    dim = results.get("feature_quality/dim")
    lines = ["# hjepa-kit evaluation report", ""]
    lines.append(f"- Checkpoint: `{checkpoint}`" if checkpoint else "- Checkpoint: (none given)")
    lines.append(f"- Written: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    for evaluator, items in artifacts.items():
        for key in ("verdict", "note"):
            if isinstance(items.get(key), str):
                lines.append(f"- {evaluator} {key}: {items[key]}")
    lines += [f"- {note}" for note in notes]
    lines.append("")

    summary = {name: row for name, row in grades.items() if _rule_for(name).summary}
    if summary:
        lines += ["## Against the training plan", ""]
        lines += ["| Check | Figure | Value | Minimum | Good | Excellent | Grade |", "|---|---|---|---|---|---|---|"]
        for name, row in summary.items():
            cells = [_format_threshold(name, t, dim) for t in row["thresholds"]]
            lines.append(
                f"| {row['check']} | `{name}` | {_format_value(name, row['value'])} | "
                + " | ".join(cells)
                + f" | {row['grade']} |"
            )
        lines.append("")

    groups: dict[str, list[str]] = {}
    for name in results:
        groups.setdefault(_group(name), []).append(name)
    for group, names in groups.items():
        lines += [f"## {group}", "", "| Figure | Value | Minimum | Good | Excellent | Grade |", "|---|---|---|---|---|---|"]
        for name in names:
            value = results[name]
            if name in grades:
                row = grades[name]
                cells = [_format_threshold(name, t, dim) for t in row["thresholds"]] + [row["grade"]]
            else:
                cells = ["", "", "", ""]
            lines.append(f"| `{name}` | {_format_value(name, value)} | " + " | ".join(cells) + " |")
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
            ``verdict`` ...). A ``confusion_matrix`` or ``singular_values`` artifact of any
            evaluator is drawn.
        checkpoint: the evaluated checkpoint file.
        config: the run's resolved configuration (plain data or attrs).
        timings: stage -> seconds.
        training_log: the run's ``training.log`` (its sibling ``metrics.jsonl`` is read), its folder,
            or a ``metrics.jsonl`` itself; missing files are tolerated (no loss figure).
        mask_examples: a :class:`MaskExamples` or the tuple ``(images, context, targets, grid)``.

    Returns:
        name -> path of each file written: ``results_json``, ``report_md`` and one per figure
        (``loss_curves``, ``singular_values``, ``level_accuracy``, ``confusion_matrix``,
        ``mask_examples``; an evaluator's name is appended when several evaluators give one kind).
    """
    out = Path(output_dir)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    artifacts = dict(artifacts or {})
    timings = dict(timings or {})
    results = dict(results)
    notes: list[str] = []

    figures: dict[str, Path] = {}
    metrics_file = _metrics_file(training_log)
    records = read_metrics_log(metrics_file) if metrics_file is not None else []
    if records and _draw_loss_curves(records, figure_dir / "loss_curves.png"):
        figures["loss_curves"] = figure_dir / "loss_curves.png"
    else:
        notes.append(f"No loss curves: no training metrics found ({metrics_file or 'no training log given'}).")

    spectra = {name: a["singular_values"] for name, a in artifacts.items() if a.get("singular_values") is not None}
    if spectra:
        path = figure_dir / "singular_values.png"
        _draw_spectra(spectra, path)
        figures["singular_values"] = path

    if _draw_level_accuracy(results, figure_dir / "level_accuracy.png"):
        figures["level_accuracy"] = figure_dir / "level_accuracy.png"

    matrices = {name: a for name, a in artifacts.items() if a.get("confusion_matrix") is not None}
    for name, items in matrices.items():
        key = "confusion_matrix" if len(matrices) == 1 else f"confusion_matrix_{_slug(name)}"
        path = figure_dir / f"{key}.png"
        _draw_confusion(items["confusion_matrix"], items.get("classes"), name, path)
        figures[key] = path

    if mask_examples is not None:
        examples = mask_examples if isinstance(mask_examples, MaskExamples) else MaskExamples(*mask_examples)
        path = figure_dir / "mask_examples.png"
        _draw_masks(examples, path)
        figures["mask_examples"] = path

    grades = plan_grades(results)
    document = {
        "results": results,
        "plan_grades": grades,
        "checkpoint": checkpoint,
        "config": config,
        "timings": timings,
        "artifacts": artifacts,
        "figures": {name: path.relative_to(out).as_posix() for name, path in figures.items()},
        "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    results_json = out / "results.json"
    _write_text(results_json, json.dumps(to_jsonable(document), indent=2, allow_nan=False) + "\n")
    report_md = out / "report.md"
    markdown = _markdown(
        results, artifacts, grades, checkpoint=checkpoint, timings=timings, figures=figures, output_dir=out, notes=notes
    )
    _write_text(report_md, markdown + "\n")
    return {"results_json": results_json, "report_md": report_md, **figures}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


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

    Lines that are not JSON objects (a half-written last line of a running job) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# --- figures ----------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _draw_loss_curves(records: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Loss (and each ``loss/<term>``) against step, learning rate beside it; False if nothing to draw."""
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k == "loss" or k.startswith("loss/")]
    if not keys:
        return False
    has_lr = any(_number(r.get("lr")) is not None for r in records)
    fig = _figure(11 if has_lr else 7, 4)
    axes = fig.subplots(1, 2 if has_lr else 1, squeeze=False)[0]
    for key in keys:
        points = [(_number(r.get("step", i)), _number(r.get(key))) for i, r in enumerate(records)]
        points = [(s, v) for s, v in points if s is not None and v is not None]
        if points:
            steps, values = zip(*points)
            axes[0].plot(steps, values, label=key, linewidth=2.0 if key == "loss" else 1.2)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_title("Training loss")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if has_lr:
        points = [(_number(r.get("step", i)), _number(r.get("lr"))) for i, r in enumerate(records)]
        points = [(s, v) for s, v in points if s is not None and v is not None]
        steps, values = zip(*points)
        axes[1].plot(steps, values, color="tab:orange")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("learning rate")
        axes[1].set_title("Learning rate")
        axes[1].grid(alpha=0.3)
    fig.savefig(path)
    return True


def _draw_spectra(spectra: Mapping[str, Any], path: Path) -> None:
    """Normalised singular values (log scale) and cumulative energy, with the plan's 95% line."""
    import numpy as np

    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    for name, values in spectra.items():
        s = np.sort(np.asarray(to_jsonable(values), dtype=float).ravel())[::-1]
        if s.size == 0 or s[0] <= 0:
            continue
        index = np.arange(1, s.size + 1)
        left.semilogy(index, np.maximum(s / s[0], 1e-12), label=name)
        energy = np.cumsum(s**2) / np.sum(s**2)
        right.plot(index, energy, label=name)
    left.set_xlabel("component")
    left.set_ylabel("singular value / largest")
    left.set_title("Singular-value spectrum (centred features)")
    left.grid(alpha=0.3, which="both")
    right.axhline(0.95, color="grey", linestyle="--", linewidth=1, label="95% energy")
    right.set_xlabel("components")
    right.set_ylabel("fraction of squared singular values")
    right.set_title("Cumulative energy")
    right.set_ylim(0, 1.02)
    right.grid(alpha=0.3)
    for axis in (left, right):
        axis.legend(fontsize="small")
    fig.savefig(path)


def _draw_level_accuracy(results: Mapping[str, float], path: Path) -> bool:
    """Grouped bars of ``hierarchy/<name>/{knn,linear}_top1`` with the plan's minimum lines."""
    import numpy as np

    pattern = re.compile(r"hierarchy/([^/]+)/(knn|linear)_top1")
    table: dict[str, dict[str, float]] = {}
    for name, value in results.items():
        match = pattern.fullmatch(name)
        if match and _number(value) is not None:
            table.setdefault(match.group(1), {})[match.group(2)] = float(value)
    if not table:
        return False
    names = list(table)
    kinds = [k for k in ("knn", "linear") if any(k in row for row in table.values())]
    fig = _figure(max(5, 1.4 * len(names) + 2), 4)
    axis = fig.subplots()
    width = 0.8 / len(kinds)
    x = np.arange(len(names))
    colours = {"knn": "tab:blue", "linear": "tab:green"}
    for i, kind in enumerate(kinds):
        values = [100 * table[n].get(kind, float("nan")) for n in names]
        bars = axis.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=f"{kind} top-1", color=colours[kind])
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
        minimum = PLAN_THRESHOLDS["knn" if kind == "knn" else "linear_probe"][0]
        axis.axhline(100 * minimum, color=colours[kind], linestyle="--", linewidth=1, alpha=0.6)
    axis.set_xticks(x, names)
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title("Accuracy per representation (dashed: plan minimum)")
    axis.legend(fontsize="small")
    axis.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return True


def _draw_confusion(matrix: Any, classes: Sequence[str] | None, evaluator: str, path: Path) -> None:
    """Row-normalised confusion matrix (rows = true class), counts written in when small."""
    import numpy as np

    counts = np.asarray(to_jsonable(matrix), dtype=float)
    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(12.0, max(4.0, 0.45 * n + 2))
    fig = _figure(side + 1, side)
    axis = fig.subplots()
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=axis, label="fraction of true class")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    axis.set_title(f"{evaluator}: confusion matrix (top-1 {100 * accuracy:.1f}%)")
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if n <= 20:
        labels = list(classes) if classes is not None and len(classes) == n else [str(i) for i in range(n)]
        axis.set_xticks(range(n), labels, rotation=45, ha="right")
        axis.set_yticks(range(n), labels)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    axis.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize="x-small", color=colour)
    fig.savefig(path)


def _draw_masks(examples: MaskExamples, path: Path) -> None:
    """One row per image: the image, its context (hidden patches greyed), its target blocks."""
    import numpy as np
    from matplotlib import colormaps

    images = _numpy(examples.images)
    context = _numpy(examples.context).astype(np.int64)
    targets = _numpy(examples.targets).astype(np.int64)
    if targets.ndim == 2:  # a single target block per image
        targets = targets[:, None, :]
    rows_n, cols_n = examples.grid
    count = images.shape[0]
    height, width = images.shape[2], images.shape[3]
    extent = (0, width, height, 0)
    palette = colormaps["tab10"]
    fig = _figure(7.5, 2.6 * count)
    axes = fig.subplots(count, 3, squeeze=False)
    for k in range(count):
        picture = np.transpose(images[k], (1, 2, 0))
        if picture.shape[2] == 1:
            picture = picture[..., 0]
        hidden = np.ones(rows_n * cols_n, dtype=bool)
        hidden[context[k]] = False
        veil = np.zeros((rows_n * cols_n, 4))
        veil[hidden] = (0.5, 0.5, 0.5, 0.85)
        blocks = np.zeros((rows_n * cols_n, 4))
        for m, block in enumerate(targets[k]):
            blocks[block] = (*palette(m % 10)[:3], 0.6)
        panels = ((None, "image"), (veil, f"context ({len(context[k])} patches)"), (blocks, f"{len(targets[k])} target blocks"))
        for axis, (overlay, title) in zip(axes[k], panels):
            axis.imshow(picture, extent=extent, interpolation="nearest")
            if overlay is not None:
                axis.imshow(overlay.reshape(rows_n, cols_n, 4), extent=extent, interpolation="nearest")
            axis.set_title(title, fontsize="small")
            axis.set_xticks([])
            axis.set_yticks([])
    fig.savefig(path)


def _numpy(value: Any):
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# --- TensorBoard ------------------------------------------------------------------------------


def write_tensorboard(
    log_dir: str | os.PathLike,
    results: Mapping[str, float],
    figures: Mapping[str, str | os.PathLike] | None = None,
    embeddings: tuple[Any, Any] | None = None,
    *,
    step: int = 0,
    max_embeddings: int = 5000,
) -> Path:
    """Record an evaluation for TensorBoard.

    Args:
        log_dir: the event-file folder (e.g. the run's log folder).
        results: figure name -> value; each finite one becomes a scalar tagged with its name.
        figures: name -> PNG path (e.g. :func:`write_report`'s return); each PNG becomes an image
            tagged ``report/<name>``; other files are skipped.
        embeddings: ``(features (N, D), labels (N,))`` for the projector; at most
            ``max_embeddings`` rows, evenly spaced, are written.
        step: the global step to record at (the training step of the checkpoint).

    Returns:
        ``log_dir`` as a path.
    """
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, value in results.items():
            number = _number(value)
            if number is not None:
                writer.add_scalar(name, number, global_step=step)
        for name, file in (figures or {}).items():
            file = Path(file)
            if file.suffix.lower() != ".png" or not file.is_file():
                continue
            from matplotlib.image import imread

            picture = imread(file)[..., :3]  # float in [0, 1], alpha dropped
            writer.add_image(f"report/{name}", picture, global_step=step, dataformats="HWC")
        if embeddings is not None:
            features, labels = (_numpy(embeddings[0]).astype(np.float32), _numpy(embeddings[1]))
            if features.shape[0] > max_embeddings:
                keep = np.linspace(0, features.shape[0] - 1, max_embeddings).round().astype(np.int64)
                features, labels = features[keep], labels[keep]
            writer.add_embedding(features, metadata=[str(v) for v in labels.tolist()], tag="features", global_step=step)
    finally:
        writer.close()
    return log_dir
