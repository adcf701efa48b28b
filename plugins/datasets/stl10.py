"""Dataset ``stl10``: the official binary archive's folder ``stl10_binary``, in RAM or streamed."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.errors import DataError
from hjepa_kit.params import param

from .archives import Archive, ArchiveParams, FileChecker, download_root, prepare_folder, torchvision_class

__all__ = ["Stl10Params", "Stl10Dataset", "build_stl10"]


@attrs.frozen(kw_only=True)
class Stl10Params(ArchiveParams):
    """Parameters of ``stl10`` (its archive is 2.6 GB)."""

    root: str = param("./data/stl10", help="Folder holding stl10_binary (the extracted 2.6 GB stl10_binary.tar.gz), or that folder itself.")


_STL_SIDE = 96
_STL_BYTES = 3 * _STL_SIDE * _STL_SIDE
_STL_PAGE = "https://cs.stanford.edu/~acoates/stl10/"
_STL_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
# split -> [(images file, labels file or None)]
_STL_PARTS: dict[str, list[tuple[str, str | None]]] = {
    "train": [("train_X.bin", "train_y.bin")],
    "test": [("test_X.bin", "test_y.bin")],
    "unlabeled": [("unlabeled_X.bin", None)],
    "train+unlabeled": [("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None)],
}


class _Stl10Stream(torch.utils.data.Dataset):
    """STL-10 images read one at a time from memory-mapped binary files.

    Item ``i`` is ``(uint8 (3, 96, 96), label)``, label ``-1`` for unlabelled images. The files are
    mapped lazily in each process, so the object is cheap to send to loader workers.
    """

    def __init__(self, parts: list[tuple[Path, np.ndarray | None, int]], labelled: bool) -> None:
        self.parts = parts
        self.labelled = labelled
        self._offsets = np.cumsum([0] + [count for _, _, count in parts])
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self._maps is None:
            self._maps = [
                np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, _STL_SIDE, _STL_SIDE)) for path, _, count in self.parts
            ]
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        local = index - int(self._offsets[part])
        labels = self.parts[part][1]
        image = torch.from_numpy(np.ascontiguousarray(self._maps[part][local].transpose(0, 2, 1)))
        return image, (-1 if labels is None else int(labels[local]))


class Stl10Dataset:
    """STL-10 from the official binary archive's folder ``stl10_binary``.

    Splits: ``train`` (5,000 labelled), ``test`` (8,000 labelled), ``unlabeled`` (100,000) and
    ``train+unlabeled`` (105,000, no labels). Native 96 x 96. Memory: the unlabelled split is
    2.76 GB decoded (100,000 x 27,648 bytes), read in chunks so the peak stays near that.
    """

    image_size = _STL_SIDE
    splits = ("train", "test", "unlabeled", "train+unlabeled")
    num_classes: int | None = 10

    def __init__(self, root: str, *, download: bool, verify: bool) -> None:
        cls = torchvision_class("STL10")
        checksums = {name: md5 for name, md5 in cls.train_list + cls.test_list}
        self.archive = Archive(
            title="STL-10", page=_STL_PAGE, url=cls.url, filename=cls.filename, md5=cls.tgz_md5,
            folder=cls.base_folder, files=tuple(checksums), checksums=checksums,
        )
        self.root = Path(root).expanduser()
        self.folder = prepare_folder(self.archive, self.root, "train_X.bin", download, verify)
        shown_root = download_root(self.root, self.archive.folder)
        self._files = FileChecker(self.archive, self.folder, shown_root, verify)
        self._files.check_all_present()
        self._hint = f"Download and extract {self.archive.filename} again ({_STL_PAGE}) into {shown_root}."
        self._cache: dict[str, ImageData] = {}

    def _count(self, path: Path) -> int:
        size = path.stat().st_size
        if size == 0 or size % _STL_BYTES:
            raise DataError(
                f"{path}: {size} bytes is not a whole number of 3 x 96 x 96 images ({_STL_BYTES} bytes each); "
                f"the file is truncated or damaged. {self._hint}"
            )
        return size // _STL_BYTES

    def _labels(self, name: str, count: int) -> np.ndarray:
        path = self._files.path(name)
        labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
        if labels.shape != (count,) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
            raise DataError(f"{path}: expected {count} labels, bytes in 1..10, one per image; got {labels.size} bytes. {self._hint}")
        return labels

    def _parts(self, split: str) -> list[tuple[Path, np.ndarray | None, int]]:
        if split not in self.splits:
            raise DataError(f"STL-10 has no split {split!r}; it has {', '.join(self.splits)}")
        parts = []
        for images_name, labels_name in _STL_PARTS[split]:
            path = self._files.path(images_name)
            count = self._count(path)
            parts.append((path, None if labels_name is None else self._labels(labels_name, count), count))
        return parts

    def estimate_bytes(self, split: str) -> int:
        """Decoded size of ``split``, from the file sizes."""
        return sum((self.folder / name).stat().st_size for name, _ in _STL_PARTS[split])

    @functools.cached_property
    def classes(self) -> tuple[str, ...]:
        """Class names: ``class_names.txt`` of the archive, else the official names."""
        names_file = self.folder / "class_names.txt"
        if names_file.is_file():
            names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
            if len(names) == 10:
                return names
        return _STL_CLASSES

    def load(self, split: str) -> ImageData:
        """Read ``split`` into RAM as ``(N, 3, 96, 96)`` uint8 (labels ``None`` for unlabelled splits)."""
        if split in self._cache:
            return self._cache[split]
        parts = self._parts(split)
        images = torch.empty((sum(c for _, _, c in parts), 3, _STL_SIDE, _STL_SIDE), dtype=torch.uint8)
        start = 0
        chunk = 4096
        for path, _, count in parts:
            with open(path, "rb") as file:
                for offset in range(0, count, chunk):
                    n = min(chunk, count - offset)
                    raw = np.fromfile(file, dtype=np.uint8, count=n * _STL_BYTES)
                    # Stored column-major per channel: swap H and W.
                    block = torch.from_numpy(raw.reshape(n, 3, _STL_SIDE, _STL_SIDE))
                    images[start + offset : start + offset + n] = block.transpose(2, 3)
            start += count
        labelled = all(labels is not None for _, labels, _ in parts)
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts])) if labelled else None  # type: ignore[misc]
        data = ImageData(images=images, labels=labels, classes=self.classes if labelled else ())
        self._cache[split] = data
        return data

    def open_stream(self, split: str) -> _Stl10Stream:
        """Stream ``split`` from memory-mapped files (see :class:`_Stl10Stream`)."""
        parts = self._parts(split)
        return _Stl10Stream(parts, labelled=all(labels is not None for _, labels, _ in parts))


def build_stl10(params: Stl10Params, ctx: BuildContext) -> Stl10Dataset:
    """The ``stl10`` dataset."""
    return Stl10Dataset(params.root, download=params.download, verify=params.verify)
