"""Write ``plugins/digits.npz``, the embedded real image set of the ``digits`` dataset.

Run once by a maintainer (it needs scikit-learn, which hjepa-kit does not depend on):

    pip install scikit-learn && python scripts/make_digits_data.py

The file holds the 1,797 8x8 images (integer pixels 0..16) and labels of the UCI "Optical
Recognition of Handwritten Digits" set as scikit-learn ships it (``sklearn.datasets.load_digits``):
E. Alpaydin and C. Kaynak, 1998, https://doi.org/10.24432/C50P49, licensed CC BY 4.0.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    if not np.array_equal(images, digits.images) or images.max() > 16:
        raise SystemExit("load_digits() returned pixels outside the integers 0..16")
    labels = digits.target.astype(np.uint8)
    target = Path(__file__).resolve().parent.parent / "plugins" / "digits.npz"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    target.write_bytes(buffer.getvalue())
    print(f"wrote {target} ({target.stat().st_size} bytes): images {images.shape}, labels {np.bincount(labels)}")


if __name__ == "__main__":
    main()
