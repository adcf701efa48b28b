"""Image files decoded to uint8 squares, one way for every reader.

The built-in ``image_folder`` dataset and ``hjepa embed --images`` both decode with
:func:`decode_square`, so a folder's images are seen by ``hjepa embed`` exactly as in training.
PIL is imported on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["decode_square", "decode_image", "IMAGE_EXTENSIONS"]


def decode_square(path: str | os.PathLike[str], size: int, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to ``(size, size, 3)`` (``mode="RGB"``) or ``(size, size)`` (``"L"``) uint8.

    The shorter side is resized to ``size`` (bilinear), then the centre square is cut out. A JPEG
    much larger than ``size`` is decoded at a reduced scale, which is fast.

    Raises:
        OSError: the file cannot be read or decoded. PIL may raise ``ValueError``, ``SyntaxError``,
            ``EOFError`` or ``PIL.Image.DecompressionBombError`` instead. All pass through
            unchanged: the caller names the file in its own error.
    """
    from PIL import Image

    with Image.open(path) as image:
        image.draft(mode, (size, size))
        image = image.convert(mode)
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


#: File name endings read as images (case-insensitive): by ``hjepa embed --images`` and, by default, ``image_folder``.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def decode_image(path: str | os.PathLike[str], size: int, channels: int = 3) -> Tensor:
    """Decode an image file to ``(channels, size, size)`` uint8: shorter side resized to ``size`` (bilinear), centre crop.

    Args:
        path: the image file.
        size: side of the square.
        channels: 3 (RGB) or 1 (grey).

    Raises:
        DataError: the file cannot be read or decoded; the message names it.
        ValueError: ``channels`` is neither 1 nor 3.
    """
    import torch
    from PIL import Image

    mode = {3: "RGB", 1: "L"}.get(channels)
    if mode is None:
        raise ValueError(f"only 1 (grey) and 3 (RGB) channel images can be decoded, not {channels}")
    try:
        array = decode_square(path, size, mode)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot be decoded as an image ({exc}); remove or replace the file") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
