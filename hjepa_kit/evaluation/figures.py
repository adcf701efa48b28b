"""The report's PNG figures, drawn from the training metrics and the evaluators' artifacts.

:func:`draw_figures` writes each figure it has data for into a folder:

- ``loss_curves.png``: loss (and each ``loss/<term>``) and learning rate against step, from the
  records of a run's ``metrics.jsonl``;
- ``singular_values.png``: every evaluator's ``singular_values`` artifact, normalised, with the
  cumulative energy and its 95% line;
- ``level_accuracy.png``: every evaluator's ``level_accuracy`` artifact as grouped bars, a dashed
  line at each series' minimum;
- ``confusion_matrix.png``: every evaluator's ``confusion_matrix`` artifact, row-normalised;
- ``accuracy_vs_labels.png``: every evaluator's ``label_curve`` artifact, accuracy against labelled
  images per class (log scale) with a shaded interval, all series on one plot;
- ``accuracy_vs_epoch.png``: every evaluator's ``epoch_accuracy`` artifact (an evaluator that
  trains for epochs), each series' accuracy against the epoch;
- ``mask_examples.png``: a few images with the masks a masker drew for them.

The figures know artifact kinds, never an evaluator's name or figure names. matplotlib is imported
inside the functions that draw, so importing this module stays fast; figures use matplotlib's
object API (``Figure``), never pyplot, so no global backend is switched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["MaskExamples", "draw_figures"]


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


def draw_figures(
    figure_dir: Path,
    artifacts: Mapping[str, Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]] = (),
    mask_examples: MaskExamples | Sequence[Any] | None = None,
) -> dict[str, Path]:
    """Draw every figure there is data for into ``figure_dir`` (which must exist).

    Args:
        figure_dir: the folder of the PNG files.
        artifacts: evaluator name -> its artifacts; ``singular_values``, ``level_accuracy``,
            ``confusion_matrix`` (with ``classes``) and ``label_curve`` (series label ->
            ``{"labels_per_class": [k, ...], "mean": [...], "low": [...], "high": [...]}``,
            accuracies in ``[0, 1]``) and ``epoch_accuracy`` (``{"epochs": [1, 2, ...],
            "series": {name: [accuracy per epoch]}}``) of any evaluator are drawn.
        records: the training metrics records (``step``, ``loss``, ``loss/<term>``, ``lr``).
        mask_examples: a :class:`MaskExamples` or the tuple ``(images, context, targets, grid)``.

    Returns:
        name -> path of each figure drawn, in the report's order: ``loss_curves``,
        ``singular_values``, ``level_accuracy``, ``confusion_matrix``, ``accuracy_vs_labels``,
        ``accuracy_vs_epoch``, ``mask_examples``; an evaluator's name is appended when several
        evaluators give one kind.
    """
    figures: dict[str, Path] = {}
    if records and _draw_loss_curves(records, figure_dir / "loss_curves.png"):
        figures["loss_curves"] = figure_dir / "loss_curves.png"

    spectra = {name: a["singular_values"] for name, a in artifacts.items() if a.get("singular_values") is not None}
    if spectra:
        path = figure_dir / "singular_values.png"
        _draw_spectra(spectra, path)
        figures["singular_values"] = path

    for key, (name, items) in _per_evaluator("level_accuracy", artifacts):
        if _draw_level_accuracy(items["level_accuracy"], figure_dir / f"{key}.png"):
            figures[key] = figure_dir / f"{key}.png"

    for key, (name, items) in _per_evaluator("confusion_matrix", artifacts):
        path = figure_dir / f"{key}.png"
        _draw_confusion(items["confusion_matrix"], items.get("classes"), name, path)
        figures[key] = path

    curves = {label: entry for a in artifacts.values() if isinstance(a.get("label_curve"), Mapping) for label, entry in a["label_curve"].items()}
    if curves and _draw_label_curves(curves, figure_dir / "accuracy_vs_labels.png"):
        figures["accuracy_vs_labels"] = figure_dir / "accuracy_vs_labels.png"

    for key, (name, items) in _per_evaluator("epoch_accuracy", artifacts, figure="accuracy_vs_epoch"):
        if _draw_epoch_accuracy(items["epoch_accuracy"], name, figure_dir / f"{key}.png"):
            figures[key] = figure_dir / f"{key}.png"

    if mask_examples is not None:
        examples = mask_examples if isinstance(mask_examples, MaskExamples) else MaskExamples(*mask_examples)
        path = figure_dir / "mask_examples.png"
        _draw_masks(examples, path)
        figures["mask_examples"] = path
    return figures


def _per_evaluator(kind: str, artifacts: Mapping[str, Mapping[str, Any]], figure: str | None = None):
    """``(figure key, (evaluator, artifacts))`` of each evaluator with a ``kind`` artifact (key: ``figure`` or ``kind``)."""
    found = {name: a for name, a in artifacts.items() if a.get(kind) is not None}
    for name, items in found.items():
        yield (figure or kind) if len(found) == 1 else f"{figure or kind}_{_slug(name)}", (name, items)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG whole or not at all (a temporary file renamed to ``path``: a killed evaluation leaves no half image)."""
    from ..atomic import write_atomic

    write_atomic(path, lambda handle: fig.savefig(handle, format="png"))


def number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` for booleans, non-numbers and non-finite numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def as_numpy(value: Any):
    """A tensor, array or nested list as a numpy array."""
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _draw_loss_curves(records: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Loss (and each ``loss/<term>``) against step, learning rate beside it; False if nothing to draw."""
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k == "loss" or k.startswith("loss/")]
    if not keys:
        return False
    has_lr = any(number(r.get("lr")) is not None for r in records)
    fig = _figure(11 if has_lr else 7, 4)
    axes = fig.subplots(1, 2 if has_lr else 1, squeeze=False)[0]
    for key in keys:
        points = [(number(r.get("step", i)), number(r.get(key))) for i, r in enumerate(records)]
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
        points = [(number(r.get("step", i)), number(r.get("lr"))) for i, r in enumerate(records)]
        points = [(s, v) for s, v in points if s is not None and v is not None]
        steps, values = zip(*points)
        axes[1].plot(steps, values, color="tab:orange")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("learning rate")
        axes[1].set_title("Learning rate")
        axes[1].grid(alpha=0.3)
    _save(fig, path)
    return True


def _draw_spectra(spectra: Mapping[str, Any], path: Path) -> None:
    """Normalised singular values (log scale) and cumulative energy, with a 95% line."""
    import numpy as np

    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    for name, values in spectra.items():
        s = np.sort(as_numpy(values).astype(float).ravel())[::-1]
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
    _save(fig, path)


_SERIES_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")


def _draw_level_accuracy(series: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """Grouped bars of a ``level_accuracy`` artifact, a dashed line at each series' minimum.

    ``series``: label -> ``{"values": {representation: accuracy in [0, 1]}, "minimum": float | None}``.
    False (nothing drawn) when no series has a finite value.
    """
    import numpy as np

    table = {
        label: {name: float(v) for name, v in (entry.get("values") or {}).items() if number(v) is not None}
        for label, entry in series.items()
    }
    kinds = [label for label, values in table.items() if values]
    if not kinds:
        return False
    names = list(dict.fromkeys(name for label in kinds for name in table[label]))
    fig = _figure(max(5, 1.4 * len(names) + 2), 4)
    axis = fig.subplots()
    width = 0.8 / len(kinds)
    x = np.arange(len(names))
    for i, label in enumerate(kinds):
        colour = _SERIES_COLOURS[i % len(_SERIES_COLOURS)]
        values = [100 * table[label].get(n, float("nan")) for n in names]
        bars = axis.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=label, color=colour)
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
        minimum = number(series[label].get("minimum"))
        if minimum is not None:
            axis.axhline(100 * minimum, color=colour, linestyle="--", linewidth=1, alpha=0.6)
    axis.set_xticks(x, names)
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title("Accuracy per representation (dashed: minimum)")
    axis.legend(fontsize="small")
    axis.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True


def _draw_confusion(matrix: Any, classes: Sequence[str] | None, evaluator: str, path: Path) -> None:
    """Row-normalised confusion matrix (rows = true class), counts written in when small."""
    import numpy as np

    counts = as_numpy(matrix).astype(float)
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
    _save(fig, path)


def _draw_label_curves(series: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """Accuracy against labelled images per class, one line per series with its interval shaded.

    False (nothing drawn) when no series has a finite point.
    """
    fig = _figure(6, 4)
    axis = fig.subplots()
    drawn = False
    for i, (label, entry) in enumerate(series.items()):
        ks = [number(k) for k in entry.get("labels_per_class") or ()]
        mean = [number(v) for v in entry.get("mean") or ()]
        points = [(k, m, number(lo), number(hi)) for k, m, lo, hi in zip(ks, mean, entry.get("low") or mean, entry.get("high") or mean)]
        points = [p for p in points if p[0] is not None and p[0] > 0 and p[1] is not None]
        if not points:
            continue
        colour = _SERIES_COLOURS[i % len(_SERIES_COLOURS)]
        k, m, lo, hi = zip(*points)
        axis.plot(k, [100 * v for v in m], marker="o", color=colour, label=label)
        if all(v is not None for v in lo + hi):
            axis.fill_between(k, [100 * v for v in lo], [100 * v for v in hi], color=colour, alpha=0.2)
        drawn = True
    if not drawn:
        return False
    axis.set_xscale("log")
    ticks = sorted({int(k) for entry in series.values() for k in entry.get("labels_per_class") or () if number(k)})
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.set_xlabel("labelled images per class")
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title("Accuracy against labels per class (shaded: 95% interval)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small")
    _save(fig, path)
    return True


def _draw_epoch_accuracy(entry: Mapping[str, Any], evaluator: str, path: Path) -> bool:
    """Each series of an ``epoch_accuracy`` artifact against the epoch; False when no series has a finite point."""
    epochs = [number(e) for e in entry.get("epochs") or ()]
    fig = _figure(6, 4)
    axis = fig.subplots()
    drawn = False
    for i, (label, values) in enumerate((entry.get("series") or {}).items()):
        points = [(e, number(v)) for e, v in zip(epochs, values or ())]
        points = [(e, v) for e, v in points if e is not None and v is not None]
        if points:
            x, y = zip(*points)
            axis.plot(x, [100 * v for v in y], marker="o", color=_SERIES_COLOURS[i % len(_SERIES_COLOURS)], label=label)
            drawn = True
    if not drawn:
        return False
    axis.set_xlabel("epoch")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{evaluator}: accuracy per epoch")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    _save(fig, path)
    return True


def _draw_masks(examples: MaskExamples, path: Path) -> None:
    """One row per image: the image, its context (hidden patches greyed), its target blocks."""
    import numpy as np
    from matplotlib import colormaps

    images = as_numpy(examples.images)
    context = as_numpy(examples.context).astype(np.int64)
    targets = as_numpy(examples.targets).astype(np.int64)
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
    _save(fig, path)
