"""An evaluation's TensorBoard records: figures as scalars, PNGs as images, features as a projector.

TensorBoard (through ``torch.utils.tensorboard``) and matplotlib are imported inside
:func:`write_tensorboard`, so importing this module stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .figures import as_numpy, number

__all__ = ["write_tensorboard"]


def write_tensorboard(
    log_dir: str | os.PathLike,
    results: Mapping[str, float],
    figures: Mapping[str, str | os.PathLike] | None = None,
    embeddings: tuple[Any, Any] | None = None,
    *,
    step: int = 0,
    series: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    max_embeddings: int = 5000,
) -> Path:
    """Record an evaluation for TensorBoard.

    Args:
        log_dir: the event-file folder (e.g. the run's log folder).
        results: figure name -> value; each finite one becomes a scalar tagged with its name.
        figures: name -> PNG path (e.g. :func:`~hjepa_kit.evaluation.report.write_report`'s
            return); each PNG becomes an image tagged ``report/<name>``; other files are skipped.
        embeddings: ``(features (N, D), labels (N,))`` for the projector; at most
            ``max_embeddings`` rows, evenly spaced, are written.
        step: the global step to record at (the training step of the checkpoint).
        series: tag -> ``(step, value)`` points recorded at their own steps (an evaluator's
            accuracy per epoch, from its ``epoch_accuracy`` artifact).
        max_embeddings: the most projector rows to write.

    Returns:
        ``log_dir`` as a path.
    """
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, value in results.items():
            value = number(value)
            if value is not None:
                writer.add_scalar(name, value, global_step=step)
        for name, points in (series or {}).items():
            for at, value in points:
                if number(value) is not None:
                    writer.add_scalar(name, float(value), global_step=int(at))
        for name, file in (figures or {}).items():
            file = Path(file)
            if file.suffix.lower() != ".png" or not file.is_file():
                continue
            from matplotlib.image import imread

            picture = imread(file)[..., :3]  # float in [0, 1], alpha dropped
            writer.add_image(f"report/{name}", picture, global_step=step, dataformats="HWC")
        if embeddings is not None:
            features, labels = as_numpy(embeddings[0]).astype(np.float32), as_numpy(embeddings[1])
            if features.shape[0] > max_embeddings:
                keep = np.linspace(0, features.shape[0] - 1, max_embeddings).round().astype(np.int64)
                features, labels = features[keep], labels[keep]
            writer.add_embedding(features, metadata=[str(v) for v in labels.tolist()], tag="features", global_step=step)
    finally:
        writer.close()
    return log_dir
