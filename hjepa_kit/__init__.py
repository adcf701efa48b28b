"""hjepa-kit: hierarchical JEPA self-supervised pretraining with plugins."""

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
