"""Datasets ``cifar10`` and ``cifar100``: the official python archives' folders, held in RAM.

The batch files are Python pickles, read with :func:`~.archives.safe_unpickle` (numpy arrays,
lists, dicts and bytes only); file lists, md5 checksums and URLs are torchvision's.
"""

from __future__ import annotations

import functools
from pathlib import Path

import attrs
import numpy as np
import torch

from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.errors import DataError
from hjepa_kit.params import param

from .archives import Archive, ArchiveParams, FileChecker, download_root, prepare_folder, safe_unpickle, torchvision_class

__all__ = ["Cifar10Params", "Cifar100Params", "CifarDataset", "build_cifar10", "build_cifar100"]


@attrs.frozen(kw_only=True)
class Cifar10Params(ArchiveParams):
    """Parameters of ``cifar10``."""

    root: str = param("./data/cifar10", help="Folder holding cifar-10-batches-py (the extracted cifar-10-python.tar.gz), or that folder itself.")


@attrs.frozen(kw_only=True)
class Cifar100Params(ArchiveParams):
    """Parameters of ``cifar100``."""

    root: str = param("./data/cifar100", help="Folder holding cifar-100-python (the extracted cifar-100-python.tar.gz), or that folder itself.")
    labels: str = param("fine", choices=("fine", "coarse"), help="Label set: the 100 fine classes or the 20 coarse superclasses.")


@attrs.frozen
class _CifarFormat:
    title: str
    torchvision_class: str
    page: str
    label_key: bytes
    names_key: bytes
    num_classes: int


_CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_FORMAT = _CifarFormat("CIFAR-10", "CIFAR10", _CIFAR_PAGE, b"labels", b"label_names", 10)
CIFAR100_FORMAT = _CifarFormat("CIFAR-100", "CIFAR100", _CIFAR_PAGE, b"fine_labels", b"fine_label_names", 100)
CIFAR100_COARSE_FORMAT = attrs.evolve(CIFAR100_FORMAT, label_key=b"coarse_labels", names_key=b"coarse_label_names", num_classes=20)


def _cifar_archive(fmt: _CifarFormat) -> tuple[Archive, dict[str, tuple[str, ...]], str]:
    """The archive layout, the files of each split and the meta file, read from torchvision."""
    cls = torchvision_class(fmt.torchvision_class)
    train = tuple(name for name, _ in cls.train_list)
    test = tuple(name for name, _ in cls.test_list)
    meta = cls.meta["filename"]
    checksums = {name: md5 for name, md5 in cls.train_list + cls.test_list}
    checksums[meta] = cls.meta["md5"]
    archive = Archive(
        title=fmt.title, page=fmt.page, url=cls.url, filename=cls.filename, md5=cls.tgz_md5,
        folder=cls.base_folder, files=train + test + (meta,), checksums=checksums,
    )
    return archive, {"train": train, "test": test}, meta


class CifarDataset:
    """CIFAR-10 or CIFAR-100 read from the official python archive's folder, held in RAM.

    Attributes:
        splits: ``("train", "test")``.
        image_size: 32.
        num_classes: 10, 100 (fine) or 20 (coarse).
        folder: the folder holding the batch files.
    """

    image_size = 32
    splits = ("train", "test")

    def __init__(self, fmt: _CifarFormat, root: str, *, download: bool, verify: bool) -> None:
        self.format = fmt
        self.num_classes: int | None = fmt.num_classes
        self.root = Path(root).expanduser()
        self.archive, self._split_files, self._meta = _cifar_archive(fmt)
        self.folder = prepare_folder(self.archive, self.root, self._meta, download, verify)
        shown_root = download_root(self.root, self.archive.folder)
        self._files = FileChecker(self.archive, self.folder, shown_root, verify)
        self._files.check_all_present()
        self._hint = f"Download and extract {self.archive.filename} again ({fmt.page}) into {shown_root}."
        self._cache: dict[str, ImageData] = {}

    def estimate_bytes(self, split: str) -> int:
        """Decoded size of ``split``: 50,000 or 10,000 images of 3 x 32 x 32 bytes."""
        return {"train": 50_000, "test": 10_000}[split] * 3 * 32 * 32

    @functools.cached_property
    def classes(self) -> tuple[str, ...]:
        """Class names from the meta file, index-aligned with labels."""
        meta = safe_unpickle(self._files.path(self._meta), self._hint)
        names = meta.get(self.format.names_key) if isinstance(meta, dict) else None
        if not isinstance(names, list) or len(names) != self.format.num_classes:
            raise DataError(
                f"{self.folder / self._meta}: expected a dict with {self.format.names_key!r}: a list of "
                f"{self.format.num_classes} class names. {self._hint}"
            )
        return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)

    def _read_batch(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._files.path(name)
        batch = safe_unpickle(path, self._hint)
        data = batch.get(b"data") if isinstance(batch, dict) else None
        labels = batch.get(self.format.label_key) if isinstance(batch, dict) else None
        expected = (
            f"expected a dict with b'data': uint8 array (N, 3072) and {self.format.label_key!r}: "
            f"N labels in [0, {self.format.num_classes})"
        )
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
            raise DataError(f"{path}: b'data' is {shape}; {expected}. {self._hint}")
        try:
            labels = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError):
            labels = np.zeros(0, np.int64) - 1
        if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= self.format.num_classes:
            raise DataError(f"{path}: the labels do not match the images; {expected}. {self._hint}")
        return data.reshape(-1, 3, 32, 32), labels

    def load(self, split: str) -> ImageData:
        """Read ``split`` into RAM: ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` int64 labels."""
        if split not in self.splits:
            raise DataError(f"{self.format.title} has no split {split!r}; it has {', '.join(self.splits)}")
        if split not in self._cache:
            parts = [self._read_batch(name) for name in self._split_files[split]]
            images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
            labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
            self._cache[split] = ImageData(images=images, labels=labels, classes=self.classes)
        return self._cache[split]


def build_cifar10(params: Cifar10Params, ctx: BuildContext) -> CifarDataset:
    """The ``cifar10`` dataset."""
    return CifarDataset(CIFAR10_FORMAT, params.root, download=params.download, verify=params.verify)


def build_cifar100(params: Cifar100Params, ctx: BuildContext) -> CifarDataset:
    """The ``cifar100`` dataset (fine or coarse labels)."""
    fmt = CIFAR100_FORMAT if params.labels == "fine" else CIFAR100_COARSE_FORMAT
    return CifarDataset(fmt, params.root, download=params.download, verify=params.verify)
