"""The schema of a run and its loading: a YAML file or a mapping plus ``--set`` overrides (:mod:`hjepa_kit.overrides`).

A run configuration is a tree of frozen attrs classes (:class:`RunConfig` at the top). Components
are selected by name: ``{name: vit_tiny, params: {...}}``. Their ``params`` stay a plain mapping
here and are structured into the component's own parameter class by
:func:`hjepa_kit.registry.Registry.resolve`, once the plugins are known (two-stage structuring).

Errors name the file and the key path, the value given and what is allowed; every problem of one
document is reported in one message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml

from .errors import ConfigError
from .overrides import apply_overrides, read_yaml, split_path
from .params import param, structure, unstructure

__all__ = [
    "ComponentSpec",
    "AugmentationConfig",
    "DataConfig",
    "ModelConfig",
    "TrainingConfig",
    "ExtensionConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "EvaluationConfig",
    "RunConfig",
    "load_config",
    "read_yaml",
    "apply_overrides",
    "dump_config",
]


def _spec(name: str, **params: Any) -> Any:
    return attrs.Factory(lambda: ComponentSpec(name=name, params=dict(params)))


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """A component chosen by name, with the parameters of its own parameter class.

    In YAML either ``{name: vit_tiny, params: {patch_size: 4}}`` or just ``vit_tiny``.
    """

    name: str = param(help="Registered name of the component (see `hjepa plugins`).")
    params: dict[str, Any] = param(factory=dict, help="Parameters of the component (see `hjepa plugins --params NAME`).")


@attrs.frozen(kw_only=True)
class AugmentationConfig:
    """Batched augmentation applied to every training batch (I-JEPA: random resized crop + flip)."""

    crop_scale: tuple[float, float] = param((0.3, 1.0), help="Area fraction range of the random resized crop.", gt=0.0, le=1.0)
    crop_ratio: tuple[float, float] = param((0.75, 1.3333333), help="Aspect ratio range of the random resized crop.", gt=0.0)
    hflip: bool = param(True, help="Flip each image horizontally with probability 0.5.")
    color_jitter: float = param(
        0.0, ge=0.0, le=1.0,
        help="Colour jitter strength s: brightness, contrast and saturation each scaled by a factor drawn in "
        "[1 - s, 1 + s] (SimCLR's jitter without hue); 0: off.",
    )
    color_jitter_prob: float = param(0.8, ge=0.0, le=1.0, help="Probability that an image is colour-jittered (with color_jitter > 0).")
    grayscale_prob: float = param(0.0, ge=0.0, le=1.0, help="Probability that an image is turned to grey (ITU-R 601 luma); 0: never.")
    nearest_prob: float = param(
        0.0, ge=0.0, le=1.0,
        help="Probability that an image's crop is resized with nearest-neighbour sampling (sharp, blocky) instead of "
        "the antialiased bilinear kernel (smooth); 0: always bilinear.",
    )
    blur_prob: float = param(
        0.0, ge=0.0, le=1.0,
        help="Probability that an image is blurred with a Gaussian after its crop (SimCLR's and BYOL's blur); 0: never.",
    )
    blur_sigma: tuple[float, float] = param(
        (0.1, 2.0), ge=0.0, help="Range of the blur's std, in pixels of the output image (drawn uniformly per image)."
    )
    noise_prob: float = param(
        0.0, ge=0.0, le=1.0,
        help="Probability that an image gets Gaussian pixel noise added after its other augmentations; 0: never.",
    )
    noise_std: tuple[float, float] = param(
        (0.0, 0.1), ge=0.0, help="Range of the added noise's std, in pixel values of [0, 1] (drawn uniformly per image)."
    )
    mean: tuple[float, float, float] = param((0.485, 0.456, 0.406), help="Per-channel mean used to normalise images.")
    std: tuple[float, float, float] = param((0.229, 0.224, 0.225), help="Per-channel std used to normalise images.", gt=0.0)

    def __attrs_post_init__(self) -> None:
        for key in ("crop_scale", "crop_ratio", "blur_sigma", "noise_std"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key}: lower bound {low} is above upper bound {high}")


@attrs.frozen(kw_only=True)
class DataConfig:
    """Where images come from and how they are batched."""

    dataset: ComponentSpec = param(_spec("synthetic"), help="The dataset component (`synthetic`, `cifar10`, ...).")
    image_size: int | None = param(None, help="Side of the square images the encoder sees; null: the dataset's native size.", ge=8)
    batch_size: int = param(64, help="Images per micro-batch (per process).", ge=1)
    views: int = param(
        1,
        help="Augmented views of each image per micro-batch: 1 (I-JEPA) or more, for a cross-view level of the "
        "predictor; the step then sees views x batch_size images, view after view.",
        ge=1,
    )
    eval_batch_size: int = param(256, help="Images per batch when extracting features for evaluation.", ge=1)
    num_workers: int = param(0, help="Loader worker processes for streamed datasets (in-RAM data never uses workers).", ge=0)
    in_memory: Literal["auto", "always", "never"] = param(
        "auto", help="Hold the decoded dataset in RAM as uint8: auto decides by size (see `memory_limit_mb`)."
    )
    memory_limit_mb: int = param(4096, help="With in_memory: auto, the largest dataset (decoded, uint8) held in RAM.", ge=0)
    train_split: str = param("train", help="Split used for pretraining.")
    augmentation: AugmentationConfig = param(attrs.Factory(AugmentationConfig), help="Training augmentation.")


@attrs.frozen(kw_only=True)
class ModelConfig:
    """The components of the H-JEPA model."""

    encoder: ComponentSpec = param(_spec("vit_tiny", patch_size=4), help="The context encoder; the target encoder is its EMA copy.")
    masker: ComponentSpec = param(_spec("multiblock"), help="Chooses context and target patches for each sample.")
    predictor: ComponentSpec = param(_spec("hierarchical"), help="Predicts every hierarchy level's targets from the context.")


def _compile_switch(help: str) -> Any:
    """A ``true`` / ``false`` / ``auto`` (default) switch of ``torch.compile`` (resolved by :func:`hjepa_kit.runtime.should_compile`)."""
    return param("auto", help=help, choices=("auto", True, False))


@attrs.frozen(kw_only=True)
class EarlyStoppingConfig:
    """Stop when a figure logged per epoch has not improved for ``patience`` epochs."""

    metric: str = param(
        "auto",
        help="The figure watched: `auto`, `knn`, `rankme`, `loss` or any figure's name, as checkpoint.best_metric.",
    )
    mode: Literal["auto", "max", "min"] = param(
        "auto", help="Whether larger or smaller is better; auto: smaller for figures named *loss*, larger otherwise.",
        choices=("auto", "max", "min"),
    )
    patience: int = param(5, help="Epochs without an improvement of at least min_delta before the run stops.", ge=1)
    min_delta: float = param(0.0, help="The smallest change that counts as an improvement.", ge=0.0)


@attrs.frozen(kw_only=True)
class ExtensionConfig:
    """One extension of a finished run (written by ``hjepa train --resume auto --extend-epochs N``).

    Its schedules span epochs ``from_epoch`` to ``from_epoch + epochs`` and start from the values
    the run had reached there, so they are continuous where the run ended: ``tail`` decays the
    learning rate by a new cosine from its current value; ``restart`` warms it up linearly to
    ``lr[1]`` over ``warmup_epochs``, then decays it by a cosine. Weight decay follows a cosine and
    the EMA momentum a line from their current values to their ends.
    """

    from_epoch: int = param(help="Epochs done when the run was extended: the extension's first epoch is from_epoch + 1.", ge=1)
    epochs: int = param(help="Epochs the extension adds.", ge=1)
    mode: Literal["tail", "restart"] = param(
        help="tail: a new cosine from the current learning rate; restart: a warmup to lr[1], then a cosine.",
        choices=("tail", "restart"),
    )
    warmup_epochs: float = param(0.0, help="Epochs of linear warmup at the start of a restart (0 for a tail).", ge=0.0)
    lr: tuple[float, float, float] = param(help="Learning rate at the junction, at the end of the warmup, at the end.", ge=0.0)
    weight_decay: tuple[float, float] = param(help="Weight decay at the junction and at the end (cosine).", ge=0.0)
    ema_momentum: tuple[float, float] = param(help="EMA momentum at the junction and at the end (linear).", ge=0.0, le=1.0)

    def __attrs_post_init__(self) -> None:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} leaves no epoch of the {self.epochs} extended ones to decay")


@attrs.frozen(kw_only=True)
class TrainingConfig:
    """Optimisation: schedules, accumulation, precision, threads."""

    epochs: int = param(20, help="Number of passes over the training split.", ge=1)
    max_steps: int | None = param(None, help="Stop after this many optimizer steps (smoke runs); null: no limit.", ge=1)
    accumulation_steps: int = param(1, help="Micro-batches per optimizer step (effective batch = batch_size x this x processes).", ge=1)
    lr: float = param(1.0e-3, help="Peak learning rate, reached after warmup.", gt=0.0)
    min_lr: float = param(1.0e-6, help="Learning rate at the end of the cosine schedule.", ge=0.0)
    start_lr: float = param(0.0, help="Learning rate at the first step of warmup.", ge=0.0)
    warmup_epochs: float = param(2.0, help="Epochs of linear warmup (fractions allowed).", ge=0.0)
    weight_decay: float = param(0.04, help="AdamW weight decay at the start (biases and norms never decay).", ge=0.0)
    final_weight_decay: float = param(0.4, help="Weight decay at the end (cosine schedule from weight_decay).", ge=0.0)
    betas: tuple[float, float] = param((0.9, 0.999), help="AdamW betas.", ge=0.0, lt=1.0)
    ema_momentum: tuple[float, float] = param((0.996, 1.0), help="EMA momentum of the target encoder: start, end (linear per optimizer step).", ge=0.0, le=1.0)
    grad_clip: float | None = param(3.0, help="Clip the gradient norm to this value; null: no clipping.", gt=0.0)
    max_skipped_steps: int = param(
        0, help="Optimizer steps with a non-finite loss or gradient norm that are skipped (no update) before the run "
        "stops; 0: stop at the first. Found when the next log line is written (the step never waits for the device).", ge=0
    )
    precision: Literal["fp32", "bf16", "auto"] = param(
        "auto", help="Autocast dtype: bf16 where the device supports it fast (auto), or fp32."
    )
    threads: int | None = param(None, help="Intra-op threads; null: the physical cores available to this process.", ge=1)
    early_stopping: EarlyStoppingConfig | None = param(
        None, help="Stop early when a figure stops improving (metric, mode, patience, min_delta); null: never."
    )
    on_collapse: Literal["warn", "stop"] = param(
        "warn",
        help="When the collapse monitor fires (logging.collapse_*): `warn` logs the remedies and goes on; `stop` ends "
        "the run, keeps the last healthy checkpoint (latest.pth is not overwritten) and prints the remedies as commands.",
        choices=("warn", "stop"),
    )
    compile: bool | Literal["auto"] = _compile_switch(
        "torch.compile the encoders and the predictor (same weights and checkpoints): `auto` does so on the CPU "
        "for runs of at least 2,000 optimizer steps when a C++ compiler exists (compiling delays the first steps "
        "by minutes; see the performance page for the gain); `true` always; `false` never."
    )
    ddp_check_every_steps: int = param(
        0, help="Under torchrun, verify every N steps that all ranks hold identical parameters (0: never).", ge=0
    )
    memory_budget_gb: float | None = param(
        11.0, help="Refuse to start when the estimated peak memory exceeds this (11 GB: a 16 GB laptop with room for the rest); null: no check.", gt=0.0
    )
    release_memory_every_steps: int = param(
        10,
        help="Every N optimizer steps give the allocator's free pages back to the operating system (glibc malloc_trim), "
        "so resident memory stays flat while the masks change tensor sizes every step; 0: never.",
        ge=0,
    )
    extensions: list[ExtensionConfig] = param(
        factory=list,
        help="The run's extensions, written by `hjepa train --resume auto --extend-epochs N` (see the CIFAR-10 page): "
        "each a mapping of from_epoch, epochs, mode (tail or restart), warmup_epochs and the lr [junction, peak, end], "
        "weight_decay [junction, end] and ema_momentum [junction, end] of its schedules. The first starts where "
        "the original schedules end, each next one where the previous ends, and the last ends at `epochs`.",
    )

    def __attrs_post_init__(self) -> None:
        end = None
        for i, ext in enumerate(self.extensions):
            if end is not None and ext.from_epoch != end:
                raise ValueError(f"extensions[{i}].from_epoch is {ext.from_epoch}, but extensions[{i - 1}] ends at epoch {end}")
            end = ext.from_epoch + ext.epochs
        if end is not None and end != self.epochs:
            raise ValueError(
                f"epochs is {self.epochs}, but training.extensions plans {end} epochs (its last extension ends there): "
                "to train an extended run longer, resume it once it has finished with --extend-epochs N; a new run "
                "from this configuration needs training.extensions=[] or the same epochs"
            )


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    """When and what to save."""

    every_epochs: int = param(5, help="Keep a numbered checkpoint every N epochs (latest.pth is written every epoch).", ge=1)
    best_metric: str = param(
        "auto",
        help="Criterion of best_model.pth: `auto` (online k-NN accuracy when the data has labels, else the label-free "
        "RankMe of the evaluated representation's pooled embeddings), `knn`, `rankme`, `loss`, or the name of any "
        "figure logged per epoch (`health/rankme/level1`, `online/knn/top1@20`); figures named *loss* are minimised, "
        "the others maximised.",
    )
    save_final: bool = param(True, help="Write final.pth when the run ends.")


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """training.log, metrics.jsonl, TensorBoard and collapse monitoring."""

    interval_steps: int = param(10, help="Write a line to training.log every N optimizer steps.", ge=1)
    feature_stats_every_steps: int = param(50, help="Measure feature std and effective rank of the target features every N steps.", ge=1)
    collapse_std_threshold: float = param(0.01, help="Warn of collapse when the mean feature std falls below this.", ge=0.0)
    collapse_rank_fraction: float = param(
        0.05, help="Collapse when the effective rank (of the target tokens, or RankMe of a pooled representation) / width "
        "falls below this.", ge=0.0, le=1.0)
    health_samples: int = param(
        1024,
        help="Pooled training embeddings (of the forward pass the step runs anyway) whose RankMe is logged per "
        "representation at each epoch's end as health/rankme/<name>; 0: off.",
        ge=0,
    )


@attrs.frozen(kw_only=True)
class EvaluationConfig:
    """Online evaluation during training and the evaluators of `hjepa evaluate`."""

    evaluators: list[ComponentSpec] = param(
        attrs.Factory(lambda: [ComponentSpec(name=n) for n in ("knn_faiss", "linear_probe", "feature_quality", "hierarchy")]),
        help="Evaluators run by `hjepa evaluate --eval-type all`.",
    )
    online: ComponentSpec | None = param(_spec("knn_faiss"), help="Evaluator run during training (its parameters default to its own); null: none.")
    online_every_epochs: int = param(1, help="Run the online evaluator every N epochs (0: never).", ge=0)
    online_train_samples: int = param(5000, help="Labelled training images used by the online evaluator.", ge=1)
    online_test_samples: int = param(1000, help="Test images used by the online evaluator.", ge=1)
    representation: str = param(
        "encoder",
        help="The default representation of evaluators and of best_model.pth: `encoder` (the target encoder's "
        "patch tokens, average-pooled) or a hierarchy level's features (`level0`, `level1`, ...).",
    )
    compile: bool | Literal["auto"] = _compile_switch(
        "Compile the feature extractor of `hjepa evaluate` with torch.compile and frozen weights: `auto` does "
        "so on the CPU from 10,000 images when a C++ compiler exists (seconds of compiling, then faster extraction; "
        "see the performance page); `true` always (falls back with a warning where compiling fails); `false` never."
    )


@attrs.frozen(kw_only=True)
class RunConfig:
    """A whole run: data, model, loss, optimisation, outputs."""

    name: str = param("quickstart", help="Run name: outputs go to <output_dir>/logs/<name> and <output_dir>/checkpoints/<name>.")
    output_dir: str = param("results", help="Root folder of logs and checkpoints.")
    device: Literal["auto", "cpu", "cuda"] = param("auto", help="Where to train: auto picks cuda when available.")
    seed: int = param(0, help="Seed of every random draw (data order, augmentation, masks, init).")
    data: DataConfig = param(attrs.Factory(DataConfig), help="Data.")
    model: ModelConfig = param(attrs.Factory(ModelConfig), help="Model components.")
    loss: ComponentSpec = param(_spec("smooth_l1"), help="The prediction loss.")
    training: TrainingConfig = param(attrs.Factory(TrainingConfig), help="Optimisation.")
    checkpoint: CheckpointConfig = param(attrs.Factory(CheckpointConfig), help="Checkpoints.")
    logging: LoggingConfig = param(attrs.Factory(LoggingConfig), help="Logging.")
    evaluation: EvaluationConfig = param(attrs.Factory(EvaluationConfig), help="Evaluation.")
    callbacks: list[ComponentSpec] = param(
        attrs.Factory(lambda: [ComponentSpec(name="tensorboard"), ComponentSpec(name="progress_bar")]),
        help="Run-scoped callback components (`tensorboard`, `progress_bar`, ...).",
    )

    @property
    def log_dir(self) -> Path:
        """``<output_dir>/logs/<name>``: training.log, metrics.jsonl, TensorBoard, config.yaml."""
        return Path(self.output_dir) / "logs" / self.name

    @property
    def checkpoint_dir(self) -> Path:
        """``<output_dir>/checkpoints/<name>``."""
        return Path(self.output_dir) / "checkpoints" / self.name

    def component_specs(self) -> list[tuple[str, str, ComponentSpec]]:
        """Every selected component as ``(kind, key path, spec)``, in build order."""
        specs = [
            ("dataset", "data.dataset", self.data.dataset),
            ("encoder", "model.encoder", self.model.encoder),
            ("masker", "model.masker", self.model.masker),
            ("predictor", "model.predictor", self.model.predictor),
            ("loss", "loss", self.loss),
        ]
        specs += [("evaluator", f"evaluation.evaluators[{i}]", s) for i, s in enumerate(self.evaluation.evaluators)]
        if self.evaluation.online is not None:
            specs.append(("evaluator", "evaluation.online", self.evaluation.online))
        specs += [("callback", f"callbacks[{i}]", s) for i, s in enumerate(self.callbacks)]
        return specs


def _normalise_specs(data: Any) -> Any:
    """Accept the shorthand ``encoder: vit_tiny`` for ``encoder: {name: vit_tiny}`` everywhere."""
    spec_keys = {("data", "dataset"), ("model", "encoder"), ("model", "masker"), ("model", "predictor"), ("loss",), ("evaluation", "online")}
    list_keys = {("evaluation", "evaluators"), ("callbacks",)}

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if path in spec_keys and isinstance(node, str):
            return {"name": node}
        if path in list_keys and isinstance(node, list):
            return [{"name": item} if isinstance(item, str) else item for item in node]
        if isinstance(node, Mapping):
            return {k: walk(v, path + (str(k),)) for k, v in node.items()}
        return node

    return walk(data, ())


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | RunConfig | None = None,
    overrides: Iterable[str] = (),
) -> RunConfig:
    """Load a run configuration.

    Args:
        source: a YAML file path, a mapping of plain data, a :class:`RunConfig`, or ``None`` for
            the built-in :class:`RunConfig` defaults (the CLI and :func:`hjepa_kit.train` run the bundled quickstart instead).
        overrides: ``KEY=VALUE`` strings applied on top (dotted key paths, YAML-typed values).

    Returns:
        The validated :class:`RunConfig`. Component parameters are checked later, against the
        plugins, by :meth:`hjepa_kit.registry.Registry.resolve`.

    Raises:
        ConfigError: naming the file, each bad key path, the value and what is allowed.
    """
    overrides = list(overrides)
    if isinstance(source, RunConfig):
        if not overrides:
            return source
        data: Any = unstructure(source)
        name = "<config>"
    elif source is None:
        data, name = {}, "<defaults>"
    elif isinstance(source, Mapping):
        data, name = dict(source), "<mapping>"
    else:
        name = str(source)
        data = read_yaml(source)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"the top level must be a mapping of sections, got {type(data).__name__}", name)
    data = apply_overrides(_normalise_specs(data), overrides, unstructure(RunConfig()))
    data = _normalise_specs(data)
    problems: list[str] = []
    config = structure(RunConfig, data, "", problems)
    if problems:
        raise ConfigError(problems, name)
    return config


def dump_config(config: RunConfig, resolved_params: Mapping[str, Any] | None = None) -> str:
    """The configuration as YAML, with each component's parameters filled in when given.

    Args:
        config: the run configuration.
        resolved_params: key path (``model.encoder``) -> parameter instance, as returned by
            :meth:`hjepa_kit.registry.Registry.resolve`.
    """
    data = unstructure(config)
    for path, params in (resolved_params or {}).items():
        node = data
        for part in split_path(path)[:-1]:
            node = node[part]
        node[split_path(path)[-1]]["params"] = unstructure(params)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
