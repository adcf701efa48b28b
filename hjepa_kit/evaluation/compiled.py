"""``evaluation.compile``: the feature extractor of ``hjepa evaluate``, compiled where it pays.

The extractor is compiled with frozen weights (inductor's ``freezing``: weights become constants,
oneDNN linear layers are pre-packed and fused with their element-wise neighbours;
docs/performance.md, "Compiling", has the gain). Frozen weights are only correct while the weights
do not change, so this is used for one evaluation, never in training. ``auto``, ``true`` and
``false`` are resolved by :func:`hjepa_kit.runtime.should_compile`; when compiling fails at the
first call, the evaluation goes on eagerly with one warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["AUTO_EVAL_MIN_IMAGES", "FeatureFunction"]

#: Evaluation compiles (auto) from this many images to encode: fewer do not repay the seconds of
#: compiling with the faster encoding (docs/performance.md, "Compiling", has the figures).
AUTO_EVAL_MIN_IMAGES = 10_000

#: Tokens per call of a compiled feature function: a batch is cut into fixed slices of about this
#: many tokens (the last one padded), so one compiled graph serves every batch and the slice's
#: activations stay in the CPU's cache.
COMPILED_CHUNK_TOKENS = 8192


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
