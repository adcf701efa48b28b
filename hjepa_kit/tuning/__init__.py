"""Hyperparameter search over a run's configuration: ``hjepa tune`` and :func:`hjepa_kit.tune`, on Optuna.

- :mod:`.space`: the search-space YAML file, checked against the run's configuration, and sampled.
- :mod:`.trial`: one trial: a sampled configuration validated, trained, pruned at epoch ends, classified.
- :mod:`.study`: the study: storage, resume, workers, :func:`tune`.
- :mod:`.report`: the trials table, ``best.yaml``, plots, TensorBoard hparams, ``report.md``.

Optuna is the optional extra ``tune`` (``pip install 'hjepa-kit[tune]'``); it is imported only when
a study runs.
"""

from __future__ import annotations

from .space import SearchSpace, load_space
from .study import TuneResult, tune

__all__ = ["tune", "TuneResult", "SearchSpace", "load_space"]
