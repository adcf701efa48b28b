"""The library entry points: :func:`train`, :func:`evaluate`, :func:`export` and :func:`embed`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import RunConfig, load_config
from .trainer import Trainer, TrainResult

if TYPE_CHECKING:
    from .embedding import EmbedResult
    from .exporting import ExportResult

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
        A :class:`~hjepa_kit.trainer.TrainResult`: status, folders, checkpoint paths, final metrics.

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
    from .evaluation import run_evaluation

    return run_evaluation(
        checkpoint, dataset=dataset, data_path=data_path, eval_types=eval_types, device=device,
        output_dir=output_dir, overrides=overrides, plugins=plugins, write_report=write_report,
    )


def export(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("timm",),
    representation: str = "encoder",
    force: bool = False,
    verify: bool = True,
    plugins: Iterable[Any] = (),
) -> ExportResult:
    """Export a checkpoint's target encoder for use without hjepa-kit.

    The folder ``out`` receives ``config.json`` (architecture, representation and pooling,
    preprocessing, the exact timm call, the check's result) and, per format, ``model.safetensors``
    (``timm``: loadable by plain ``timm.create_model``) or ``model.onnx`` (``onnx``: images
    ``(B, C, S, S)`` -> features ``(B, D)``, dynamic batch). See the "Use your encoder" page.

    Args:
        checkpoint: a checkpoint written by :func:`train`.
        out: the export folder; it must not exist unless ``force``.
        formats: ``timm`` and/or ``onnx``. ONNX needs the ``onnx`` and ``onnxscript`` packages
            (``pip install 'hjepa-kit[export]'``).
        representation: what the exported model returns: ``encoder`` (the target encoder's final
            tokens, averaged; the only one timm can hold) or, for ONNX only, a hierarchy level
            (``level0``, ``level1`` ...).
        force: replace ``out`` when it holds an earlier export (never another folder).
        verify: load each export back (timm; ONNX with onnxruntime when installed) and require its
            features on a probe batch to match hjepa-kit's within
            :data:`~hjepa_kit.exporting.TOLERANCE`.
        plugins: extra plugins whose components the checkpoint's configuration names.

    Returns:
        An :class:`~hjepa_kit.exporting.ExportResult`: the folder, the written files, the config.

    Raises:
        hjepa_kit.errors.UserError: the checkpoint is not ours, the format or representation is
            unknown or not exportable in that format, ``out`` exists or cannot be written. Nothing
            is left under ``out`` when it fails.
    """
    from .exporting import export_checkpoint

    return export_checkpoint(
        checkpoint, out, formats=formats, representation=representation, force=force, verify=verify, plugins=plugins
    )


def embed(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    data_path: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
    representation: str = "encoder",
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    skip_bad: bool = False,
    force: bool = False,
    overrides: Sequence[str] = (),
    plugins: Iterable[Any] = (),
    progress: bool = False,
) -> EmbedResult:
    """Write the features of every image of a folder or a dataset.

    Args:
        checkpoint: a checkpoint written by :func:`train`.
        out: a ``.npy`` file (the ``(N, D)`` float32 features) or ``.npz`` (``features``, ``labels``,
            ``classes``, ``representation``, and ``paths`` + ``skipped`` for a folder or ``split`` +
            ``index`` + ``dataset`` for a dataset). It must not exist unless ``force``.
        images: a folder of image files, searched recursively; each is decoded to the model's
            image size (shorter side, centre crop). Its label is its top-level subfolder's index
            in ``classes`` (``-1`` directly in the folder).
        dataset: instead of ``images``, a dataset component (``cifar10``, ``image_folder`` ...); the
            run's own dataset keeps the run's parameters, another starts from its defaults.
        data_path: the dataset folder (sets ``data.dataset.params.root``).
        splits: the dataset's splits to embed, in order (default: all it has).
        representation: ``encoder`` or a hierarchy level (``level0``, ``level1`` ...).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per batch (default: the run's ``data.eval_batch_size``).
        precision: ``fp32`` (default, exact), ``bf16`` or ``auto`` (bf16 where it is fast).
        skip_bad: skip images that cannot be read (listed in the result) instead of failing.
        force: replace ``out`` when it exists.
        overrides: ``KEY=VALUE`` overrides applied to the checkpoint's configuration.
        plugins: extra plugins whose components the configuration names.
        progress: report progress on stderr.

    Returns:
        An :class:`~hjepa_kit.embedding.EmbedResult`: path, count, feature width, skipped files.

    Raises:
        hjepa_kit.errors.UserError: a foreign checkpoint, an unknown representation or split, an
            unreadable image (without ``skip_bad``; the message names the file), an existing or
            unwritable ``out``. Nothing is written when it fails.
    """
    from .embedding import embed_images

    return embed_images(
        checkpoint, out, images=images, dataset=dataset, data_path=data_path, splits=splits, representation=representation,
        device=device, batch_size=batch_size, precision=precision, skip_bad=skip_bad, force=force, overrides=overrides,
        plugins=plugins, progress=progress,
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
