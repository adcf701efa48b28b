"""Evaluate a checkpoint from the file alone: rebuild, extract features once, run evaluators."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..build import build_dataset, build_model
from ..checkpoint_file import load_checkpoint
from ..config import load_config
from ..contracts import BuildContext, EvalModel, Grade, ImageData, needs_model, needs_tokens
from ..data.augment import BatchAugment, eval_transform
from ..errors import CheckpointError, UserError
from .compiled import AUTO_EVAL_MIN_IMAGES, FeatureFunction
from .features import check_representation, extract_features_and_tokens, feature_sets
from .selection import EVAL_TYPE_EVALUATORS, select_evaluators
from ..registry import Registry
from ..runtime import autocast_dtype, resolve_device, should_compile
from ..threads import configure_threads

__all__ = ["run_evaluation", "EVAL_TYPE_EVALUATORS"]

log = logging.getLogger("hjepa_kit")


def _default_output_dir(checkpoint: Path, run_name: str) -> Path:
    parent = checkpoint.resolve().parent
    if parent.parent.name == "checkpoints":
        return parent.parent.parent / "eval" / run_name
    return parent / "eval"


def run_evaluation(
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

    This is the library's ``hjepa_kit.evaluate`` and the command ``hjepa evaluate``.

    Args:
        checkpoint: a checkpoint written by :func:`~hjepa_kit.api.train` (holds its resolved
            configuration).
        dataset: evaluate on this dataset component instead of the training one.
        data_path: the dataset folder (sets ``data.dataset.params.root``).
        eval_types: ``all``, ``linear_probe``, ``knn``, ``feature_quality``, ``hierarchy``,
            ``few_shot``, ``attentive_probe``, ``fine_tune`` or any registered evaluator name.
        device: ``auto``, ``cpu`` or ``cuda``.
        output_dir: where ``results.json``, ``report.md`` and the figures go (and, under
            ``state/<evaluator>``, the resumable progress of evaluators that train the encoder).
        overrides: ``KEY=VALUE`` overrides applied to the checkpoint's configuration.
        plugins: extra plugins for this evaluation only.
        write_report: write the report files (``False``: figures only in the returned dict).

    Returns:
        ``{"metrics": {name: value}, "paths": {file: path}, "timings": {stage: seconds}, "artifacts": {...},
        "grades": {name: Grade}, "features_compiled": bool}``: ``grades`` are the
        :class:`~hjepa_kit.contracts.Grade` the evaluators declared for their figures;
        ``features_compiled`` says whether feature extraction ran compiled (see ``evaluation.compile``).
    """
    started = time.perf_counter()
    path = Path(checkpoint)
    state = load_checkpoint(path)
    extra = []
    if dataset:
        extra.append(f"data.dataset={json.dumps({'name': dataset, 'params': {}})}")
    if data_path is not None:
        extra.append(f"data.dataset.params.root={json.dumps(str(data_path))}")
    extra += list(overrides)  # last, so that they refine --dataset and --data-path
    try:
        config = load_config(state["config"], extra)
    except UserError as exc:
        raise CheckpointError(f"{path}: its configuration does not load: {exc}") from None
    registry = Registry(plugins)
    eval_specs = select_evaluators(eval_types, list(config.evaluation.evaluators), registry)
    resolved = registry.resolve(config, f"{path} (configuration)")
    if write_report or output_dir is not None:
        from .outputs import check_output_folder

        check_output_folder(Path(output_dir) if output_dir else _default_output_dir(path, config.name))  # before the long work
    threads = configure_threads(config.training.threads)
    run_device = resolve_device(device)
    amp = autocast_dtype(config.training.precision, run_device)
    build = state.get("build", {})
    ctx = BuildContext(image_size=int(build.get("image_size") or config.data.image_size or 0), in_chans=int(build.get("in_chans", 3)), device=run_device)
    data = build_dataset(resolved, ctx)
    built = build_model(resolved, ctx)
    try:
        built.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not match the model its configuration builds: {str(exc).splitlines()[0]}") from None
    missing = [s for s in ("train", "test") if s not in data.splits]
    if missing or data.num_classes is None:
        raise UserError(
            f"dataset '{config.data.dataset.name}' cannot be evaluated: evaluation needs labelled train and test splits; "
            f"it has {', '.join(data.splits)}{'' if data.num_classes else ' (unlabelled)'}"
        )
    t0 = time.perf_counter()
    train_split: ImageData = data.load("train")
    test_split: ImageData = data.load("test")
    timings = {"load_data_s": time.perf_counter() - t0}
    images = len(train_split) + len(test_split)
    evaluators = _build_evaluators(registry, eval_specs, ctx)
    tokens = [spec.name for spec, evaluator in evaluators if needs_tokens(evaluator)]
    # Tokens come from the target encoder called directly (eager): the compiled feature
    # function returns pooled features only.
    compiled = not tokens and should_compile(config.evaluation.compile, run_device,
                                             large_enough=images >= AUTO_EVAL_MIN_IMAGES, key="evaluation.compile")
    grid = built.ctx.grid_size
    features = FeatureFunction(built.model, compile=compiled, tokens_per_image=grid[0] * grid[1])
    kwargs = dict(image_size=ctx.image_size, batch_size=config.data.eval_batch_size, mean=config.data.augmentation.mean,
                  std=config.data.augmentation.std, device=run_device, autocast_dtype=amp, features=features)
    t0 = time.perf_counter()
    train_features, train_tokens = extract_features_and_tokens(built.model, train_split, tokens=bool(tokens), **kwargs)
    test_features, test_tokens = extract_features_and_tokens(built.model, test_split, tokens=bool(tokens), **kwargs)
    timings["features_s"] = time.perf_counter() - t0
    log.info("features of %d images in %.1fs (%s%s)", images, timings["features_s"],
             "compiled, frozen weights" if features.compiled else "uncompiled",
             f"; patch tokens for {', '.join(tokens)}" if tokens else "")
    sets = feature_sets(train_features, train_split.labels, test_features, test_split.labels, int(data.num_classes),
                        train_tokens=train_tokens, test_tokens=test_tokens)
    representation = check_representation(config.evaluation.representation, sets)
    out = Path(output_dir) if output_dir else _default_output_dir(path, config.name)
    files = write_report or output_dir is not None  # where an evaluator that trains the encoder may keep its progress
    fingerprint = _fingerprint(path, extra)
    metrics: dict[str, float] = {}
    artifacts: dict[str, dict[str, Any]] = {}
    grades: dict[str, Grade] = {}
    for spec, evaluator in evaluators:
        t0 = time.perf_counter()
        if needs_model(evaluator):
            model = _eval_model(built.model.target_encoder, train_split, test_split, config, ctx.image_size, run_device, amp,
                                state_dir=out / "state" / spec.name if files else None, fingerprint=fingerprint)  # fmt: skip
            result = evaluator(sets, representation, model=model)
        else:
            result = evaluator(sets, representation)
        timings[f"{spec.name}_s"] = time.perf_counter() - t0
        figures = {k: float(v) for k, v in getattr(result, "metrics", result).items()}
        metrics.update(figures)
        for name in figures:  # a later evaluator's figure of the same name replaces the grade as well
            grades.pop(name, None)
        grades.update({k: g for k, g in (getattr(result, "grades", None) or {}).items() if k in figures})
        if getattr(result, "artifacts", None):
            artifacts[spec.name] = dict(result.artifacts)
            if "confusion_matrix" in artifacts[spec.name] and train_split.classes:
                artifacts[spec.name].setdefault("classes", list(train_split.classes))
    timings["total_s"] = time.perf_counter() - started
    paths: dict[str, str] = {}
    if write_report:
        from .report import write_report as _write

        training_log = config.log_dir / "metrics.jsonl"
        written = _write(
            out, metrics, artifacts, grades=grades, checkpoint=str(path), config=state["config"], timings=timings,
            training_log=training_log if training_log.is_file() else None,
            mask_examples=_mask_examples(built, test_split),
        )
        paths = {Path(p).name: str(p) for p in written.values()}
        from ..atomic import atomic_folder
        from .tensorboard_writer import write_tensorboard

        with atomic_folder(out / "tensorboard") as records:  # whole or not at all; it replaces an earlier evaluation's
            write_tensorboard(
                records, metrics, {k: str(v) for k, v in written.items()},
                embeddings=(sets[representation].test, test_split.labels), step=int(state.get("step", 0)),
                series=_epoch_series(artifacts),
            )
        paths["tensorboard"] = str(out / "tensorboard")
    registry.hook.hjepa_evaluation_end(trainer=None, results=metrics)
    log.info("evaluation of %s done in %.1fs (%d threads)", path, timings["total_s"], threads)
    return {"metrics": metrics, "paths": paths, "timings": timings, "artifacts": artifacts, "grades": grades,
            "features_compiled": features.compiled}


def _build_evaluators(registry: Registry, specs: Sequence[Any], ctx: BuildContext) -> list[tuple[Any, Any]]:
    """``(spec, evaluator)`` of each selected evaluator, built before the features are extracted
    (so that what they declare, e.g. ``needs_tokens``, decides what is extracted, and a bad
    parameter fails before any long work)."""
    from ..params import structure

    built = []
    for spec in specs:
        component = registry.get("evaluator", spec.name)
        problems: list[str] = []
        params = structure(component.params, spec.params, f"evaluation.evaluators[{spec.name}].params", problems)
        if problems:
            raise UserError("\n".join(problems))
        built.append((spec, component.build(params, ctx)))
    return built


def _epoch_series(artifacts: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard series ``<evaluator>/epoch/<series>`` -> ``(epoch, value)`` of every ``epoch_accuracy`` artifact."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, items in artifacts.items():
        entry = items.get("epoch_accuracy")
        if isinstance(entry, dict):
            for label, values in (entry.get("series") or {}).items():
                out[f"{name}/epoch/{label}"] = list(zip(entry.get("epochs") or (), values))
    return out


def _fingerprint(checkpoint: Path, overrides: Sequence[str]) -> str:
    """A digest that changes with the checkpoint file (its path, size, modification time) and the overrides."""
    stat = checkpoint.stat()
    key = {"checkpoint": str(checkpoint.resolve()), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns, "overrides": list(overrides)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _eval_model(encoder: torch.nn.Module, train: ImageData, test: ImageData, config: Any, image_size: int, device: torch.device,
                amp: torch.dtype | None, *, state_dir: Path | None, fingerprint: str) -> EvalModel:
    """What an evaluator that declared ``needs_model`` is given: its own trainable copy of the target encoder, the images, the run's transforms."""
    aug = config.data.augmentation
    return EvalModel(
        encoder=copy.deepcopy(encoder).requires_grad_(True), train=train, test=test, image_size=image_size,
        augment=BatchAugment(aug, image_size), transform=functools.partial(eval_transform, image_size=image_size, mean=aug.mean, std=aug.std),
        device=device, autocast_dtype=amp, state_dir=state_dir, fingerprint=fingerprint,
    )  # fmt: skip


def _mask_examples(built: Any, data: ImageData, count: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]] | None:
    """A few test images with one drawn mask each, for the report's mask figure."""
    try:
        generator = torch.Generator().manual_seed(0)
        masks = built.masker(count, generator)
        return data.images[:count], masks.context, masks.targets, tuple(built.ctx.grid_size)
    except Exception:  # the figure is optional; a masker that needs more context must not fail evaluation
        return None
