"""The library entry points: :func:`train`, :func:`evaluate`, :func:`export`, :func:`embed` and :func:`tune`.

:func:`evaluate`, :func:`export` and :func:`embed` are
:func:`hjepa_kit.evaluation.run.run_evaluation`, :func:`hjepa_kit.evaluation.exporting.export_checkpoint`
and :func:`hjepa_kit.evaluation.embedding.embed_images` themselves, under their library names (and :func:`tune`
is :func:`hjepa_kit.tuning.study.tune`): each
signature is written and documented once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .config import RunConfig, load_config
from .evaluation.embedding import embed_images as embed
from .evaluation.exporting import export_checkpoint as export
from .evaluation.run import run_evaluation as evaluate
from .training.trainer import Trainer, TrainResult
from .tuning.study import tune

__all__ = ["train", "evaluate", "export", "embed", "tune"]


def train(
    config: RunConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    plugins: Iterable[Any] = (),
    *,
    overrides: Sequence[str] = (),
    resume: str | os.PathLike[str] | None = None,
    console: bool = True,
    extend_epochs: int | None = None,
    extend_mode: str | None = None,
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
        extend_epochs: with ``resume``, train the finished run this many epochs more, with new
            schedules that start where its ended (recorded in ``training.extensions``).
        extend_mode: ``"tail"`` (default: a new cosine from the current learning rate) or
            ``"restart"`` (a warmup back to ``training.lr``, then a cosine).

    Returns:
        A :class:`~hjepa_kit.training.state.TrainResult`: status, folders, checkpoint paths, final metrics.

    Raises:
        hjepa_kit.errors.UserError: for any mistake in the configuration, data or plugins.
    """
    source, name = _source(config)
    run_config = load_config(source, overrides)
    return Trainer(run_config, plugins=plugins, source=name, resume=resume, console=console,
                   extend_epochs=extend_epochs, extend_mode=extend_mode).fit()


def _source(config: Any) -> tuple[Any, str]:
    """Resolve ``None`` and bundled config names to files (:func:`hjepa_kit.bundled.resolve_config_source`)."""
    from .bundled import resolve_config_source

    return resolve_config_source(config)
