"""Dataset ``image_folder``: ImageNet-style class folders decoded with PIL, in RAM or streamed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.data.images import decode_square
from hjepa_kit.errors import DataError
from hjepa_kit.params import param
from hjepa_kit.threads import physical_cores

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderParams", "ImageFolderDataset", "build_image_folder", "decode_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@attrs.frozen(kw_only=True)
class ImageFolderParams:
    """Parameters of ``image_folder``."""

    root: str = param("./data/images", help="Folder with one subfolder per split, each with one subfolder per class.")
    train_dir: str = param("train", help="Subfolder of root holding the training split.")
    test_dir: str = param("val", help="Subfolder of root holding the test split.")
    image_size: int | None = param(
        None, ge=8, help="Side of the square images decoded (shorter side resized, centre crop); null: the run's image size."
    )
    extensions: tuple[str, ...] = param(IMAGE_EXTENSIONS, help="File name endings read as images (case-insensitive).")
    decode_threads: int = param(0, ge=0, help="Threads decoding images when a split is loaded into RAM; 0: the physical cores.")


def decode_image(path: Path, size: int) -> Tensor:
    """Decode an image file to ``(3, size, size)`` uint8: shorter side resized to ``size``, centre crop.

    Raises:
        DataError: the file cannot be decoded.
    """
    from PIL import Image

    try:
        array = decode_square(path, size, "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot be decoded as an image ({exc}); remove or replace the file") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class _ImageFolderStream(torch.utils.data.Dataset):
    """Image files decoded one at a time: item ``i`` is ``(uint8 (3, S, S), label)`` (``-1``: none)."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int, labelled: bool) -> None:
        self.files = files
        self.labels = labels
        self.size = size
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return decode_image(self.files[index], self.size), int(self.labels[index])


class ImageFolderDataset:
    """An ImageNet-style folder: ``root/<split dir>/<class>/<image>``, or unlabelled
    ``root/<split dir>/<image>`` when the train folder has no class subfolders.

    Images are decoded with PIL to ``image_size`` squares (shorter side, centre crop). Class names
    and label order come from the train folder's sorted subfolders; the test folder's classes must
    be among them. Small folders are held in RAM; large ones stream (``open_stream``).
    """

    def __init__(self, params: ImageFolderParams, image_size: int) -> None:
        self.root = Path(params.root).expanduser()
        self.image_size = image_size
        self.extensions = tuple(e.lower() for e in params.extensions)
        self.decode_threads = params.decode_threads
        layout = f"root/{params.train_dir}/<class>/<image>.jpg (and root/{params.test_dir}/<class>/... for the test split)"
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found. Expected the layout {layout}; set data.dataset.params.root")
        self._dirs = {"train": self.root / params.train_dir, "test": self.root / params.test_dir}
        if not self._dirs["train"].is_dir():
            raise DataError(
                f"{self._dirs['train']}: missing train folder. Expected the layout {layout}; "
                f"set data.dataset.params.train_dir to the right subfolder"
            )
        self.splits: tuple[str, ...] = tuple(s for s, d in self._dirs.items() if d.is_dir())
        self.classes = tuple(sorted(p.name for p in self._dirs["train"].iterdir() if p.is_dir() and not p.name.startswith(".")))
        self.num_classes: int | None = len(self.classes) or None
        self._files: dict[str, tuple[list[Path], np.ndarray]] = {}
        self._cache: dict[str, ImageData] = {}

    def _is_image(self, path: Path) -> bool:
        return path.suffix.lower() in self.extensions and path.is_file() and not path.name.startswith(".")

    def _walk(self, folder: Path) -> list[Path]:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames.sort()
            found.extend(p for p in (Path(dirpath) / f for f in sorted(filenames)) if self._is_image(p))
        return found

    def files(self, split: str) -> tuple[list[Path], np.ndarray]:
        """The image files of ``split`` in a fixed order and their labels (``-1`` when unlabelled)."""
        if split not in self._dirs or not self._dirs[split].is_dir():
            raise DataError(f"{self._dirs.get(split, self.root / split)}: missing {split} folder of the image folder {self.root}")
        if split in self._files:
            return self._files[split]
        folder = self._dirs[split]
        files: list[Path] = []
        labels: list[int] = []
        if self.num_classes is None:
            files = [p for p in sorted(folder.iterdir()) if self._is_image(p)]
            labels = [-1] * len(files)
        else:
            index = {name: i for i, name in enumerate(self.classes)}
            for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if class_dir.name not in index:
                    raise DataError(
                        f"{class_dir}: class {class_dir.name!r} is not a class of the train folder "
                        f"{self._dirs['train']} ({len(self.classes)} classes); rename or remove it"
                    )
                found = self._walk(class_dir)
                if not found and split == "train":
                    raise DataError(f"{class_dir}: no images (endings {', '.join(self.extensions)}); add images or remove the folder")
                files += found
                labels += [index[class_dir.name]] * len(found)
        if not files:
            raise DataError(f"{folder}: no images with endings {', '.join(self.extensions)}")
        self._files[split] = (files, np.asarray(labels, dtype=np.int64))
        return self._files[split]

    def estimate_bytes(self, split: str) -> int:
        """Decoded size of ``split`` at ``image_size`` (counts files, decodes nothing)."""
        return len(self.files(split)[0]) * 3 * self.image_size * self.image_size

    def load(self, split: str) -> ImageData:
        """Decode every image of ``split`` into RAM (threads: PIL releases the GIL while decoding)."""
        if split in self._cache:
            return self._cache[split]
        files, labels = self.files(split)
        images = torch.empty((len(files), 3, self.image_size, self.image_size), dtype=torch.uint8)

        def decode_into(i: int) -> None:
            images[i] = decode_image(files[i], self.image_size)

        threads = self.decode_threads or physical_cores()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(decode_into, range(len(files))))
        labelled = self.num_classes is not None
        data = ImageData(
            images=images, labels=torch.from_numpy(labels) if labelled else None, classes=self.classes if labelled else ()
        )
        self._cache[split] = data
        return data

    def open_stream(self, split: str) -> _ImageFolderStream:
        """Decode ``split`` one image at a time (see :class:`_ImageFolderStream`)."""
        files, labels = self.files(split)
        return _ImageFolderStream(files, labels, self.image_size, labelled=self.num_classes is not None)


def build_image_folder(params: ImageFolderParams, ctx: BuildContext) -> ImageFolderDataset:
    """The ``image_folder`` dataset; ``image_size: null`` decodes at the run's image size."""
    size = params.image_size or getattr(ctx, "image_size", None) or 224
    return ImageFolderDataset(params, int(size))
