"""Helpers for plugin authors: the parts of hjepa-kit's own machinery a plugin may use.

A plugin imports the public face of the package (:mod:`hjepa_kit`, :mod:`hjepa_kit.contracts`,
:mod:`hjepa_kit.hookspecs`, :mod:`hjepa_kit.params`, :mod:`hjepa_kit.errors`,
:mod:`hjepa_kit.config`) and this module, nothing below them: the built-in plugins do the same
(``tests/test_plugin_imports.py`` checks it), so everything they need is here. The names below keep
their signatures across releases, as the public face does.

- **Files written whole or not at all**: :func:`write_atomic`, :func:`atomic_file`,
  :func:`atomic_folder`. Each writes beside its destination, fsyncs and renames, so a run killed
  at any moment leaves the previous file intact and no temporary behind. A full disk or quota
  (``ENOSPC``, ``EDQUOT``) raises :class:`~hjepa_kit.errors.DiskFull`, naming the folder, the bytes
  needed and the bytes free. The checkpoints, the evaluation report, ``hjepa export`` and
  ``hjepa embed`` all write with these.
- **Images**: :func:`decode_image`, :data:`IMAGE_EXTENSIONS` and :func:`decode_square`, the one
  decoding of the ``image_folder`` dataset and ``hjepa embed --images``.
- **Representations**: :func:`choose_representation`, the one rule by which evaluators, ``hjepa
  evaluate``, ``export`` and ``embed`` pick features by name.
- **CPU threads**: :func:`physical_cores`.
- **Math on feature matrices** (from :mod:`hjepa_kit.evaluation.metrics`): accuracies, spectra,
  ranks, CKA, grades, and :func:`judge_collapse`, the one definition of representation collapse
  (the training monitor's).
"""

from __future__ import annotations

from .atomic import RUN_AGAIN, atomic_file, atomic_folder, format_bytes, fsync_path, write_atomic
from .data.images import IMAGE_EXTENSIONS, decode_image, decode_square
from .evaluation.metrics import (
    Collapse,
    cka_matrix,
    energy_rank_from_spectrum,
    feature_variance,
    grade,
    judge_collapse,
    mean_pairwise_cosine,
    rankme_from_spectrum,
    singular_values,
    topk_accuracy,
    topk_correct,
)
from .evaluation.representation import choose_representation
from .threads import physical_cores

__all__ = [
    "write_atomic",
    "atomic_file",
    "atomic_folder",
    "fsync_path",
    "format_bytes",
    "RUN_AGAIN",
    "IMAGE_EXTENSIONS",
    "decode_image",
    "decode_square",
    "choose_representation",
    "physical_cores",
    "topk_accuracy",
    "topk_correct",
    "singular_values",
    "rankme_from_spectrum",
    "energy_rank_from_spectrum",
    "feature_variance",
    "mean_pairwise_cosine",
    "cka_matrix",
    "grade",
    "judge_collapse",
    "Collapse",
]
