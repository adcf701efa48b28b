"""The library entry points: :func:`train`, :func:`evaluate`, :func:`export` and :func:`embed`.

:func:`evaluate`, :func:`export` and :func:`embed` are
:func:`hjepa_kit.evaluation.run.run_evaluation`, :func:`hjepa_kit.evaluation.exporting.export_checkpoint`
and :func:`hjepa_kit.evaluation.embedding.embed_images` themselves, under their library names: each
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
        A :class:`~hjepa_kit.training.state.TrainResult`: status, folders, checkpoint paths, final metrics.

    Raises:
        hjepa_kit.errors.UserError: for any mistake in the configuration, data or plugins.
    """
    source, name = _source(config)
    run_config = load_config(source, overrides)
    return Trainer(run_config, plugins=plugins, source=name, resume=resume, console=console).fit()


def _source(config: Any) -> tuple[Any, str]:
    """Resolve ``None`` and bundled config names to files (:func:`hjepa_kit.bundled.resolve_config_source`)."""
    from .bundled import resolve_config_source

    return resolve_config_source(config)
