"""Dataset ``digits``: real handwritten digits carried in the package (no download, no files).

The 1,797 8x8 greyscale images of the UCI "Optical Recognition of Handwritten Digits" set, as
scikit-learn ships them (``sklearn.datasets.load_digits``): 43 writers' digits 0-9, each pixel the
count (0..16) of ink pixels in a 4x4 block of a 32x32 bitmap. Source: E. Alpaydin and C. Kaynak,
1998, UCI Machine Learning Repository, https://doi.org/10.24432/C50P49, licence CC BY 4.0.

The images travel inside the package as ``digits.npz`` (45 kB, written by
``scripts/make_digits_data.py``) rather than through a scikit-learn dependency: scikit-learn would
add scipy and joblib (about 100 MB) to every install for 115 kB of pixels.

Splits are fixed and stratified: per class, a seeded permutation puts the first 70% in ``train``
(1,257 images) and the rest in ``test`` (540). Pixels are scaled to 0..255, resized to the run's
image size (bilinear with antialiasing by default, or nearest) and repeated over 3 channels.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.errors import DataError
from hjepa_kit.hookspecs import Register
from hjepa_kit.params import param

__all__ = ["DigitsParams", "DigitsDataset", "build_digits", "load_raw_digits", "digits_split_indices"]

#: Fraction of each class in the train split.
TRAIN_FRACTION = 0.7
#: Seed of the fixed split (not a run setting: every run and every paper sees the same split).
SPLIT_SEED = 20_240_101
_FILE = "digits.npz"


@attrs.frozen(kw_only=True)
class DigitsParams:
    """Parameters of ``digits``."""

    image_size: int | None = param(
        None, help="Side the 8x8 digits are resized to; null = data.image_size, or 32 when that is unset.", ge=8, le=512
    )
    interpolation: Literal["bilinear", "nearest"] = param(
        "bilinear",
        help="Resizing: bilinear (smooth strokes, antialiased) or nearest (each source pixel a solid square).",
        choices=("bilinear", "nearest"),
    )


def load_raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """The embedded set: ``(1797, 8, 8)`` uint8 pixels in 0..16 and ``(1797,)`` int64 labels."""
    source = resources.files("hjepa_kit.plugins").joinpath(_FILE)
    try:
        with source.open("rb") as handle, np.load(handle, allow_pickle=False) as data:
            images, labels = np.asarray(data["images"]), np.asarray(data["labels"]).astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{source}: the embedded digits file is missing or damaged ({exc}); reinstall hjepa-kit"
        ) from exc
    return images, labels


def digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split`` (``train`` or ``test``): stratified, fixed by :data:`SPLIT_SEED`."""
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = int(round(TRAIN_FRACTION * len(members)))
        chosen.append(members[:cut] if split == "train" else members[cut:])
    return np.sort(np.concatenate(chosen))


class DigitsDataset:
    """The embedded handwritten digits, resized to ``image_size``: ``train`` and ``test`` splits."""

    splits = ("train", "test")
    num_classes: int | None = 10
    classes = tuple(str(d) for d in range(10))

    def __init__(self, image_size: int, interpolation: str = "bilinear") -> None:
        self.image_size = int(image_size)
        self.interpolation = interpolation
        self._cache: dict[str, ImageData] = {}

    def estimate_bytes(self, split: str) -> int:
        """Decoded size of ``split``."""
        _, labels = load_raw_digits()
        return len(self._indices(labels, split)) * 3 * self.image_size**2

    def _indices(self, labels: np.ndarray, split: str) -> np.ndarray:
        if split not in self.splits:
            raise DataError(f"digits has no split {split!r}; it has {', '.join(self.splits)}")
        return digits_split_indices(labels, split)

    def load(self, split: str) -> ImageData:
        """``split`` as ``(N, 3, S, S)`` uint8 images and ``(N,)`` int64 labels."""
        if split not in self._cache:
            images, labels = load_raw_digits()
            index = self._indices(labels, split)
            pixels = torch.from_numpy(images[index]).float().mul_(255.0 / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
            if self.image_size != pixels.shape[-1]:
                if self.interpolation == "nearest":
                    pixels = F.interpolate(pixels, size=self.image_size, mode="nearest")
                else:
                    pixels = F.interpolate(pixels, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
            out = pixels.clamp_(0, 255).round_().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
            self._cache[split] = ImageData(images=out, labels=torch.from_numpy(labels[index]), classes=self.classes)
        return self._cache[split]


def build_digits(params: DigitsParams, ctx: BuildContext) -> DigitsDataset:
    """The ``digits`` dataset at ``params.image_size``, else the run's image size, else 32."""
    return DigitsDataset(params.image_size or ctx.image_size or 32, params.interpolation)


@hookimpl
def hjepa_register_datasets(register: Register) -> None:
    register(
        "digits", build_digits, params=DigitsParams,
        summary="Real handwritten digits embedded in the package (UCI, 1,797 8x8 images, 10 classes), resized; offline.",
    )
