"""Image files decoded to uint8 squares, one way for every reader.

The built-in ``image_folder`` dataset and ``hjepa embed --images`` both decode with
:func:`decode_square`, so a folder's images are seen by ``hjepa embed`` exactly as in training.
PIL is imported on first use.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["decode_square"]


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
