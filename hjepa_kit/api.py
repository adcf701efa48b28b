"""The library entry points: :func:`train`, :func:`evaluate`, :func:`export` and :func:`embed`.

:func:`export` and :func:`embed` are :func:`hjepa_kit.evaluation.exporting.export_checkpoint` and
:func:`hjepa_kit.evaluation.embedding.embed_images` themselves, under their library names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .config import RunConfig, load_config
from .evaluation.embedding import embed_images as embed
from .evaluation.exporting import export_checkpoint as export
from .training.trainer import Trainer, TrainResult

__all__ = ["train", "evaluate", "export", "embed"]


def train(
    config: RunConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    plugins: Iterable[Any] = (),
    *,
    overrides: Sequence[str] = (),
    resume: str | os.PathLike[str] | None = None,
    console: bool = True,
) -> TrainResult:
    """Pretrain a model.

    Args:
        config: a YAML path, the name of a bundled config (``quickstart``, ``cpu_cifar10`` ...),
            a mapping, a :class:`~hjepa_kit.config.RunConfig`, or ``None`` for the quickstart.
        plugins: plugin objects or modules with ``@hookimpl`` functions, active for this run only
            (like ``pytest.main(plugins=...)``): their components can be selected in ``config`` and
            their lifecycle hooks are called.
        overrides: ``KEY=VALUE`` strings (dotted key path, YAML value).
        resume: a checkpoint path, or ``"auto"`` for the newest checkpoint of the run.
        console: echo the log to stderr.

    Returns:
        A :class:`~hjepa_kit.training.trainer.TrainResult`: status, folders, checkpoint paths, final metrics.

    Raises:
        hjepa_kit.errors.UserError: for any mistake in the configuration, data or plugins.
    """
    source, name = _source(config)
    run_config = load_config(source, overrides)
    return Trainer(run_config, plugins=plugins, source=name, resume=resume, console=console).fit()


def evaluate(
    checkpoint: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_path: str | os.PathLike[str] | None = None,
    eval_types: Sequence[str] = ("all",),
    device: str = "auto",
    output_dir: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    plugins: Iterable[Any] = (),
    write_report: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint from the file alone: features once, then every selected evaluator.

    Args:
        checkpoint: a checkpoint written by :func:`train` (holds its resolved configuration).
        dataset: evaluate on this dataset component instead of the training one.
        data_path: the dataset folder (sets ``data.dataset.params.root``).
        eval_types: ``all``, ``linear_probe``, ``knn``, ``feature_quality``, ``hierarchy`` or any
            registered evaluator name.
        device: ``auto``, ``cpu`` or ``cuda``.
        output_dir: where ``results.json``, ``report.md`` and the figures go.
        overrides: ``KEY=VALUE`` overrides applied to the checkpoint's configuration.
        plugins: extra plugins for this evaluation only.
        write_report: write the report files (``False``: figures only in the returned dict).

    Returns:
        ``{"metrics": {name: value}, "paths": {file: path}, "timings": {stage: seconds}, "artifacts": {...},
        "features_compiled": bool}`` (whether feature extraction ran compiled, see ``evaluation.compile``).
    """
    from .evaluation.run import run_evaluation

    return run_evaluation(
        checkpoint, dataset=dataset, data_path=data_path, eval_types=eval_types, device=device,
        output_dir=output_dir, overrides=overrides, plugins=plugins, write_report=write_report,
    )


def _source(config: Any) -> tuple[Any, str]:
    """Resolve ``None`` and bundled config names to files."""
    from .bundled import find_bundled

    if config is None:
        return find_bundled("quickstart"), "quickstart"
    if isinstance(config, (str, os.PathLike)):
        path = str(config)
        if not os.path.exists(path):
            bundled = find_bundled(path)
            if bundled is not None:
                return bundled, path
        return path, path
    return config, "<config>"
