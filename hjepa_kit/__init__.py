"""hjepa-kit: hierarchical JEPA self-supervised pretraining with plugins.

The public API::

    import hjepa_kit

    config = hjepa_kit.load_config("configs/quickstart.yaml", overrides=["training.epochs=2"])
    result = hjepa_kit.train(config, plugins=[my_plugin])
    figures = hjepa_kit.evaluate(result.checkpoints["final"], eval_types=["knn"])
    hjepa_kit.export(result.checkpoints["final"], "export")   # model.safetensors for plain timm

Plugins implement hooks marked with :data:`hookimpl` (see :mod:`hjepa_kit.hookspecs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "hookimpl",
    "load_config",
    "train",
    "evaluate",
    "export",
    "embed",
    "tune",
    "Trainer",
    "TrainResult",
    "Registry",
    "RunConfig",
    "ComponentSpec",
    "BuildContext",
    "Masks",
    "EncoderOutput",
    "LossOutput",
    "ImageData",
    "FeatureSet",
    "EvalResult",
    "Grade",
    "param",
    "UserError",
    "ConfigError",
    "PluginError",
    "DataError",
    "CheckpointError",
    "OutputError",
]

# Heavy modules (torch, the trainer) load on first use, so `import hjepa_kit` and `hjepa plugins`
# stay fast.
_LAZY = {
    "load_config": ".config",
    "RunConfig": ".config",
    "ComponentSpec": ".config",
    "train": ".api",
    "evaluate": ".api",
    "export": ".api",
    "embed": ".api",
    "tune": ".api",
    "Trainer": ".training.trainer",
    "TrainResult": ".training.state",
    "Registry": ".registry",
    "BuildContext": ".contracts",
    "Masks": ".contracts",
    "EncoderOutput": ".contracts",
    "LossOutput": ".contracts",
    "ImageData": ".contracts",
    "FeatureSet": ".contracts",
    "EvalResult": ".contracts",
    "Grade": ".contracts",
    "param": ".params",
    "UserError": ".errors",
    "ConfigError": ".errors",
    "PluginError": ".errors",
    "DataError": ".errors",
    "CheckpointError": ".errors",
    "OutputError": ".errors",
}

if TYPE_CHECKING:
    from .api import embed, evaluate, export, train, tune
    from .config import ComponentSpec, RunConfig, load_config
    from .contracts import BuildContext, EncoderOutput, EvalResult, FeatureSet, Grade, ImageData, LossOutput, Masks
    from .errors import CheckpointError, ConfigError, DataError, OutputError, PluginError, UserError
    from .params import param
    from .registry import Registry
    from .training.state import TrainResult
    from .training.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hjepa_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
