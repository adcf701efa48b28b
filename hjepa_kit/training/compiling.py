"""``torch.compile`` where it pays, and a clean fallback where it cannot run.

Two uses, each behind a configuration key with the values ``auto``, ``true`` and ``false``:

* ``evaluation.compile``: the feature extractor of ``hjepa evaluate`` is compiled with frozen
  weights (inductor's ``freezing``: weights become constants, oneDNN linear layers are pre-packed
  and fused with their element-wise neighbours; docs/performance.md, "Compiling", has the gain).
  Frozen weights are only correct while the weights do not change, so this is used for one
  evaluation, never in training.
* ``training.compile``: the encoders and the predictor are compiled in place
  (``Module.compile``; parameter names and checkpoints are unchanged). The context encoder and
  the predictor see as many tokens as the step's masks keep: compiled for dynamic shapes from
  the start, unless the masker declares ``static_shapes`` (then for those fixed shapes alone).

``auto`` compiles where the work is large enough to repay the compile time and a C++ compiler
exists (the CPU backend generates C++); on a GPU ``auto`` leaves things eager (not measured
here). When compiling fails at the first call, the run goes on eagerly with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["cpp_compiler", "should_compile", "FeatureFunction", "compile_for_training", "eager"]

log = logging.getLogger("hjepa_kit")

#: Evaluation compiles (auto) from this many images to encode: compiling costs ~15 s, which
#: 10,000 images at ~100 extra images/s repay.
AUTO_EVAL_MIN_IMAGES = 10_000

#: Training compiles (auto) from this many optimizer steps: compiling costs 1-2 minutes.
AUTO_TRAIN_MIN_STEPS = 2_000

#: Tokens per call of a compiled feature function: a batch is cut into fixed slices of about this
#: many tokens (the last one padded), so one compiled graph serves every batch and the slice's
#: activations stay in the CPU's cache.
COMPILED_CHUNK_TOKENS = 8192


def cpp_compiler() -> str | None:
    """Path of the C++ compiler inductor's CPU backend would use (``$CXX``, g++, c++, clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (found := shutil.which(name)):
            return found
    return None


def should_compile(choice: bool | str, device: torch.device, *, large_enough: bool, key: str) -> bool:
    """Resolve ``choice`` (``"auto"``, True or False) of configuration key ``key`` for ``device``.

    The configuration has checked ``choice`` already. True on a CPU without a C++ compiler warns
    and returns False (the run goes on eagerly).
    """
    if choice is False or (choice == "auto" and (device.type != "cpu" or not large_enough)):
        return False
    if device.type == "cpu" and cpp_compiler() is None:
        if choice is True:
            warnings.warn(f"{key}: true, but no C++ compiler (g++, c++, clang++ or $CXX) was found; running uncompiled",
                          stacklevel=2)
        return False
    return True


class FeatureFunction:
    """``model.features`` for evaluation, compiled with frozen weights when ``compile`` is True.

    Compiled, a batch is encoded in fixed slices of ``slice_images`` images, the last one padded
    with zeros (every image is encoded independently, so the padding changes nothing), so a
    single graph is compiled whatever the batch sizes. The first call compiles; if that fails,
    a warning names the error and every call runs eagerly.

    Args:
        model: an :class:`~hjepa_kit.model.HJEPA` whose weights stay as they are while this is used.
        compile: compile (True) or call ``model.features`` as it is.
        tokens_per_image: patches per image (to size the slices).
    """

    def __init__(self, model: Any, *, compile: bool, tokens_per_image: int) -> None:
        self.model = model
        self.compiled = compile
        self.slice_images = max(1, COMPILED_CHUNK_TOKENS // max(1, tokens_per_image))
        self._compiled_fn = torch.compile(model.features, dynamic=False, options={"freezing": True}) if compile else None
        self._first_call = True

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        if not self.compiled:
            return self.model.features(images)
        parts = [self._call_slice(images[start : start + self.slice_images]) for start in range(0, images.shape[0], self.slice_images)]
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def _call_slice(self, images: Tensor) -> dict[str, Tensor]:
        if not self.compiled:  # compiling failed on an earlier slice of this batch
            return self.model.features(images)
        count = images.shape[0]
        if count < self.slice_images:
            images = torch.cat([images, images.new_zeros((self.slice_images - count, *images.shape[1:]))])
        try:
            out = self._compiled_fn(images)
        except Exception as exc:  # a compiler or backend failure: fall back, never lose the evaluation
            if not self._first_call:
                raise  # compiled once already: an error now is not the compiler's
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"evaluation.compile: compiling the feature extractor failed ({type(exc).__name__}: "
                          f"{first[:300]}); running uncompiled", stacklevel=3)
            self.compiled = False
            return self.model.features(images[:count])
        self._first_call = False
        return {name: value[:count] for name, value in out.items()}


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
