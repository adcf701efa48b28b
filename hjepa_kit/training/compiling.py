"""``training.compile``: the encoders and the predictor compiled in place, where it pays.

``Module.compile`` keeps parameter names and checkpoints unchanged. The context encoder and the
predictor see as many tokens as the step's masks keep: compiled for dynamic shapes from the
start, unless the masker declares ``static_shapes`` (then for those fixed shapes alone).

``auto``, ``true`` and ``false`` are resolved by :func:`hjepa_kit.runtime.should_compile`
(re-exported here for the trainer): ``auto`` compiles where the work is large enough to repay
the compile time and a C++ compiler exists (the CPU backend generates C++); on a GPU ``auto``
leaves things eager (not measured here). ``evaluation.compile`` is
:mod:`hjepa_kit.evaluation.compiled`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..runtime import should_compile

__all__ = ["AUTO_TRAIN_MIN_STEPS", "should_compile", "compile_for_training", "eager"]

#: Training compiles (auto) from this many optimizer steps: compiling delays the first steps by
#: minutes, which shorter runs do not win back (docs/performance.md, "Compiling").
AUTO_TRAIN_MIN_STEPS = 2_000


def compile_for_training(model: Any, *, static_shapes: bool = False) -> None:
    """Compile the target encoder, the context encoder and the predictor of ``model`` in place.

    ``Module.compile`` keeps each module's parameters and ``state_dict`` keys, so checkpoints,
    EMA and DDP see the same modules. The context encoder and the predictor receive as many
    tokens as the masks of the step keep, different every step: they are compiled with dynamic
    shapes from the first call instead of recompiling at the second size, unless the masker
    declares ``static_shapes`` (every batch of a size has the same shapes): then they are compiled
    for those shapes alone.
    """
    model.target_encoder.compile()
    model.context_encoder.compile(dynamic=not static_shapes)
    model.predictor.compile(dynamic=not static_shapes)


def eager(enabled: bool = True) -> Any:
    """A context that runs compiled modules eagerly (``torch.compiler.set_stance("force_eager")``).

    The trainer's online evaluation encodes batches of other sizes than training does; eager,
    it costs no recompilation. ``enabled=False`` gives a no-op context.
    """
    return torch.compiler.set_stance("force_eager") if enabled else contextlib.nullcontext()
