"""The contract checks of what a run uses around the model: evaluators, datasets and callbacks.

Each check takes the built component, the build context and the options of
:func:`~hjepa_kit.testing.check_component`, fails with an ``AssertionError`` that names the
component and its plugin (:mod:`hjepa_kit.testing.failure`), and returns the component.
"""

from __future__ import annotations

import tempfile
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import Tensor

from .. import hookspecs
from ..contracts import BuildContext, EvalResult, Grade, ImageData
from ..plugin_checks import hook_problems
from .failure import _Check, _shape
from .standins import random_feature_sets, stand_in_model

#: Lifecycle hooks a callback may implement (registration hooks are for plugins, not callbacks).
LIFECYCLE_HOOKS = (
    "hjepa_fit_start",
    "hjepa_step_end",
    "hjepa_epoch_end",
    "hjepa_checkpoint_saved",
    "hjepa_evaluation_end",
    "hjepa_fit_end",
)


def _check_evaluator(check: _Check, evaluator: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    check.that(callable(evaluator), f"the factory returned {type(evaluator).__name__}, which is not callable")
    wants = getattr(evaluator, "needs_tokens", False)
    check.that(isinstance(wants, bool), f"its needs_tokens attribute must be True or False, got {wants!r}")
    trains = getattr(evaluator, "needs_model", False)
    check.that(isinstance(trains, bool), f"its needs_model attribute must be True or False, got {trains!r}")
    # As in a run: patch tokens (on ``encoder`` only) exactly when the evaluator declares it needs them.
    features = random_feature_sets(tokens=8 if wants else 0)
    what = "evaluating small random features" + (" with patch tokens" if wants else "")
    if not trains:
        result = check.call(what, evaluator, features, "encoder")
    else:  # as in a run: its own encoder copy and images, and a folder for its progress
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a stand-in model is tiny: a second thread costs more than it gives
        try:
            with tempfile.TemporaryDirectory(prefix="hjepa-evaluator-check-") as folder:
                model = stand_in_model(features, encoder=options.get("encoder"), image_size=ctx.image_size,
                                       state_dir=Path(folder) / "state")  # fmt: skip
                result = check.call(what + " with a stand-in encoder and images", evaluator, features, "encoder", model=model)
        finally:
            torch.set_num_threads(threads)
    metrics = result.metrics if isinstance(result, EvalResult) else result
    check.that(isinstance(metrics, Mapping), f"it returned {type(result).__name__}, not a mapping of figures or an EvalResult")
    check.that(len(metrics) > 0, "it returned no figures")
    for key, value in metrics.items():
        check.that(isinstance(key, str), f"figure name {key!r} is not a string")
        try:
            float(value)
        except (TypeError, ValueError):
            check.fail(f"figure {key!r} is {value!r}, not a number")
    if isinstance(result, EvalResult):
        check.that(isinstance(result.artifacts, Mapping), f"artifacts must be a mapping, got {type(result.artifacts).__name__}")
        _check_grades(check, result.grades, metrics)
        headline = result.headline
        check.that(headline is None or headline in metrics,
                   f"its headline {headline!r} is not among the figures it returns ({', '.join(sorted(metrics))})")
    return evaluator


def _check_grades(check: _Check, grades: Any, metrics: Mapping[str, Any]) -> None:
    """``EvalResult.grades``, if any: figure names the result returns -> :class:`~hjepa_kit.contracts.Grade`."""
    if grades is None:
        return
    check.that(isinstance(grades, Mapping), f"grades must be a mapping of figure names to Grade, got {type(grades).__name__}")
    for name, grade in grades.items():
        check.that(name in metrics, f"grades names figure {name!r}, which it does not return (its figures: {', '.join(sorted(metrics))})")
        check.that(isinstance(grade, Grade), f"grades[{name!r}] is {type(grade).__name__}, not a Grade")


def _check_dataset(check: _Check, dataset: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    splits = getattr(dataset, "splits", None)
    check.that(isinstance(splits, (tuple, list)) and len(splits) > 0 and all(isinstance(s, str) for s in splits),
               f"splits must be a non-empty tuple of names, got {splits!r}")
    size = getattr(dataset, "image_size", None)
    check.that(isinstance(size, int) and size >= 1, f"image_size must be a positive int, got {size!r}")
    classes = getattr(dataset, "num_classes", "missing")
    check.that(classes is None or (isinstance(classes, int) and classes >= 1), f"num_classes must be None or a positive int, got {classes!r}")
    check.that(callable(getattr(dataset, "load", None)), "it has no load(split) method")
    load_splits = options["load_splits"]
    for split in splits if load_splits is None else load_splits:
        check.that(split in splits, f"split {split!r} was asked for but the dataset offers {tuple(splits)}")
        data = check.call(f"loading split {split!r}", dataset.load, split)
        check.that(isinstance(data, ImageData), f"load({split!r}) returned {type(data).__name__}, not ImageData")
        images = data.images
        check.that(isinstance(images, Tensor) and images.dtype == torch.uint8 and images.ndim == 4,
                   f"split {split!r}: images must be uint8 (N, C, H, W), got {getattr(images, 'dtype', None)} {_shape(images)}")
        check.that(images.shape[0] >= 1, f"split {split!r} is empty")
        if data.labels is not None:
            labels = data.labels
            check.that(labels.dtype == torch.int64 and tuple(labels.shape) == (images.shape[0],),
                       f"split {split!r}: labels must be int64 (N,) = ({images.shape[0]},), got {labels.dtype} {_shape(labels)}")
            if classes is not None and labels.numel():
                low, high = int(labels.min()), int(labels.max())
                check.that(0 <= low and high < classes, f"split {split!r}: labels span {low}..{high}, outside 0..{classes - 1}")
        _check_dataset_extras(check, dataset, split, data)
    return dataset


def _check_dataset_extras(check: _Check, dataset: Any, split: str, data: ImageData) -> None:
    """The optional ``estimate_bytes`` and ``open_stream`` (see ``SizedDataset``, ``StreamingDataset``)."""
    if callable(getattr(dataset, "estimate_bytes", None)):
        size = check.call(f"estimate_bytes({split!r})", dataset.estimate_bytes, split)
        check.that(size is None or (isinstance(size, int) and size >= 0),
                   f"estimate_bytes({split!r}) must be a byte count or None, got {size!r}")
    if callable(getattr(dataset, "open_stream", None)):
        stream = check.call(f"open_stream({split!r})", dataset.open_stream, split)
        check.that(len(stream) == len(data), f"open_stream({split!r}) has {len(stream)} items but load({split!r}) {len(data)} images")
        image, label = check.call(f"open_stream({split!r})[0]", stream.__getitem__, 0)
        check.that(isinstance(image, Tensor) and image.dtype == torch.uint8 and tuple(image.shape) == tuple(data.images.shape[1:]),
                   f"open_stream({split!r})[0] image must be uint8 {tuple(data.images.shape[1:])} like load's, got "
                   f"{getattr(image, 'dtype', None)} {_shape(image)}")
        check.that(isinstance(label, int), f"open_stream({split!r})[0] label must be an int (-1 when unlabelled), got {label!r}")


def _check_callback(check: _Check, callback: Any, ctx: BuildContext, options: Mapping[str, Any]) -> Any:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    problems = hook_problems(manager, callback)
    if problems:
        check.fail("its hook implementations do not match the hook specs: " + "; ".join(problems))
    try:
        manager.register(callback, name=check.label)
        manager.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        check.fail(f"its hook implementations do not match the hook specs: {exc}")
    implemented = [h for h in LIFECYCLE_HOOKS if any(i.plugin is callback for i in getattr(manager.hook, h).get_hookimpls())]
    check.that(bool(implemented), f"it implements no lifecycle hook (@hookimpl methods named {', '.join(LIFECYCLE_HOOKS)})")
    with tempfile.TemporaryDirectory(prefix="hjepa-callback-check-") as folder:
        trainer = _stand_in_trainer(Path(folder))
        hook = manager.hook
        check.call("hjepa_fit_start", hook.hjepa_fit_start, trainer=trainer)
        metrics = {"loss": 0.5, "loss/level0": 0.4, "loss/level1": 0.2, "lr": 1e-3, "wd": 0.04, "momentum": 0.996,
                   "grad_norm": 1.0, "images_per_s": 100.0, "eta_s": 10.0, "features/std": 0.5, "features/effective_rank": 10.0}
        trainer.step = 1
        check.call("hjepa_step_end", hook.hjepa_step_end, trainer=trainer, step=1, metrics=metrics)
        check.call("hjepa_evaluation_end", hook.hjepa_evaluation_end, trainer=trainer, results={"online/probe/top1": 0.3})  # no built-in named
        check.call("hjepa_checkpoint_saved", hook.hjepa_checkpoint_saved, trainer=trainer, path=str(Path(folder) / "latest.pth"), reason="latest")
        trainer.epoch = 1
        check.call("hjepa_epoch_end", hook.hjepa_epoch_end, trainer=trainer, epoch=1, metrics={"loss": 0.5, "online/probe/top1": 0.3})
        check.call("hjepa_fit_end", hook.hjepa_fit_end, trainer=trainer, status="completed")
        manager.unregister(callback)
    return callback


def _stand_in_trainer(folder: Path) -> Any:
    """What callbacks may read from the trainer, without a model to train."""
    from ..config import RunConfig

    config = RunConfig(name="callback-check", output_dir=str(folder))
    for sub in (config.log_dir, config.checkpoint_dir):
        sub.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(
        config=config,
        log_dir=config.log_dir,
        checkpoint_dir=config.checkpoint_dir,
        model=None,
        step=0,
        epoch=0,
        steps_per_epoch=1,
        total_steps=1,
        device=torch.device("cpu"),
        last_metrics={},
    )


#: Kind -> its check.
RUN_CHECKS = {
    "evaluator": _check_evaluator,
    "dataset": _check_dataset,
    "callback": _check_callback,
}
