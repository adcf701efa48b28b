"""Built-in datasets: ``cifar10``, ``cifar100``, ``stl10``, ``image_folder`` and ``synthetic``.

Every dataset hands a split to the core as one ``(N, 3, H, W)`` uint8 tensor in RAM
(:class:`~hjepa_kit.contracts.ImageData`); the core augments it a batch at a time
(:mod:`hjepa_kit.data.loader`). Beside the :class:`~hjepa_kit.contracts.Dataset` contract each dataset
offers ``estimate_bytes(split)`` (decoded size, without decoding) and, where streaming makes
sense (STL-10, image folders), ``open_stream(split)``: a map-style torch dataset of
``(uint8 (3, H, W), label)`` for data too big for RAM.

CIFAR and STL-10 are read from the official archives' extracted folders (the plan's
``--data-path``), downloaded through torchvision when ``download: true``. Their md5 checksums are
taken from torchvision's dataset classes and checked by default. The CIFAR format is Python pickle,
which can run code: it is read with an unpickler that only rebuilds numpy arrays, lists, dicts and
bytes, and refuses anything else. A missing, damaged or foreign file is a
:class:`~hjepa_kit.errors.DataError` that names the file, what was expected and how to get it.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib
import math
import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.errors import DataError
from hjepa_kit.data.images import decode_square
from hjepa_kit.params import param
from hjepa_kit.threads import physical_cores

__all__ = [
    "Cifar10Params",
    "Cifar100Params",
    "Stl10Params",
    "ImageFolderParams",
    "SyntheticParams",
    "CifarDataset",
    "Stl10Dataset",
    "ImageFolderDataset",
    "SyntheticDataset",
    "SHAPES",
    "build_cifar10",
    "build_cifar100",
    "build_stl10",
    "build_image_folder",
    "build_synthetic",
    "render_shapes",
    "safe_unpickle",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


# --- parameters -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Cifar10Params:
    """Parameters of ``cifar10``."""

    root: str = param(
        "./data/cifar10",
        help="Folder holding cifar-10-batches-py (the extracted cifar-10-python.tar.gz), or that folder itself.",
    )
    download: bool = param(False, help="Download and extract the archive through torchvision when files are missing.")
    verify: bool = param(True, help="Verify the md5 checksum of every file read against the official archive's.")


@attrs.frozen(kw_only=True)
class Cifar100Params:
    """Parameters of ``cifar100``."""

    root: str = param(
        "./data/cifar100",
        help="Folder holding cifar-100-python (the extracted cifar-100-python.tar.gz), or that folder itself.",
    )
    download: bool = param(False, help="Download and extract the archive through torchvision when files are missing.")
    verify: bool = param(True, help="Verify the md5 checksum of every file read against the official archive's.")
    labels: str = param("fine", choices=("fine", "coarse"), help="Label set: the 100 fine classes or the 20 coarse superclasses.")


@attrs.frozen(kw_only=True)
class Stl10Params:
    """Parameters of ``stl10``."""

    root: str = param(
        "./data/stl10",
        help="Folder holding stl10_binary (the extracted stl10_binary.tar.gz), or that folder itself.",
    )
    download: bool = param(False, help="Download (2.6 GB) and extract the archive through torchvision when files are missing.")
    verify: bool = param(True, help="Verify the md5 checksum of every file read against the official archive's.")


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


@attrs.frozen(kw_only=True)
class SyntheticParams:
    """Parameters of ``synthetic``."""

    num_train: int = param(5000, ge=1, help="Images in the train split.")
    num_test: int = param(1000, ge=1, help="Images in the test split.")
    image_size: int = param(32, ge=16, le=512, help="Side of the square images.")
    num_classes: int = param(10, ge=2, le=10, help="Number of shape classes (the first N of disc, square, triangle, ...).")
    noise: float = param(0.08, ge=0.0, le=1.0, help="Largest std of the per-pixel noise (each image draws its own in [0, noise]).")
    seed: int = param(0, help="Seed of the generated images (the same seed gives the same images).")


# --- common helpers ---------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torchvision_class(name: str) -> Any:
    """A torchvision dataset class, for its file lists, md5s and URLs (imported only when needed)."""
    return getattr(importlib.import_module("torchvision.datasets"), name)


def _compact_names(names: Sequence[str]) -> str:
    """``data_batch_1, ..., data_batch_5, x`` -> ``data_batch_1..5,x`` for messages."""
    out: list[str] = []
    i = 0
    while i < len(names):
        stem = names[i].rstrip("0123456789")
        j = i
        while j + 1 < len(names) and names[j + 1].rstrip("0123456789") == stem and stem != names[j + 1]:
            j += 1
        if j > i and stem != names[i]:
            out.append(f"{names[i]}..{names[j][len(stem):]}")
        else:
            out.append(names[i])
        i = j + 1
    return ",".join(out)


@attrs.frozen
class _Archive:
    """How an official archive is laid out, for lookups and messages."""

    title: str  # "CIFAR-10"
    page: str  # where people get it by hand
    url: str
    filename: str  # the archive's file name
    md5: str
    folder: str  # the folder the archive extracts to
    files: tuple[str, ...]  # every file the dataset needs inside ``folder``
    checksums: dict[str, str]

    def missing_message(self, path: Path, root: Path) -> str:
        return (
            f"{path}: missing. Expected the extracted {self.title} archive {self.filename} ({self.page}) with folder "
            f"layout {root}/{self.folder}/{{{_compact_names(self.files)}}}; download it and run "
            f"`tar xzf {self.filename} -C {root}`, or set data.dataset.params.download: true"
        )


def _resolve_folder(root: Path, folder: str, marker: str) -> Path:
    """The archive's folder: ``root/folder``, or ``root`` itself when it is that folder."""
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (root / marker).is_file():
        return root
    return root / folder


def _download_root(root: Path, folder: str) -> Path:
    return root.parent if root.name == folder else root


def _safe_extract(archive_path: Path, dest: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``dest`` or are not plain."""
    try:
        with tarfile.open(archive_path) as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive_path}: refused to extract {member.name!r} (outside the folder or not a plain file)")
            tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive_path}: cannot be extracted ({exc}); download it again") from None


class _FileChecker:
    """Checks an archive's files: present, and (when ``verify``) the official checksum, once each."""

    def __init__(self, archive: _Archive, folder: Path, root: Path, verify: bool) -> None:
        self.archive = archive
        self.folder = folder
        self.root = root
        self.verify = verify
        self._verified: set[str] = set()

    def path(self, name: str) -> Path:
        """The path of ``name``, checked (raises :class:`DataError` when missing or damaged)."""
        path = self.folder / name
        if not path.is_file():
            raise DataError(self.archive.missing_message(path, self.root))
        if self.verify and name not in self._verified:
            expected = self.archive.checksums.get(name)
            if expected is not None:
                actual = _md5(path)
                if actual != expected:
                    raise DataError(
                        f"{path}: checksum mismatch (md5 {actual}; the official {self.archive.title} file has "
                        f"{expected}): the file is damaged or not the official one. Download {self.archive.filename} "
                        f"again ({self.archive.page}) and extract it into {self.root}, or set "
                        f"data.dataset.params.verify: false to skip the check"
                    )
            self._verified.add(name)
        return path

    def check_all_present(self) -> None:
        for name in self.archive.files:
            path = self.folder / name
            if not path.is_file():
                raise DataError(self.archive.missing_message(path, self.root))


def _prepare_folder(archive: _Archive, root: Path, marker: str, download: bool, verify: bool) -> Path:
    """Find (or download, or extract an archive found in ``root``) the folder of ``archive``."""
    folder = _resolve_folder(root, archive.folder, marker)
    if all((folder / name).is_file() for name in archive.files):
        return folder
    dest = _download_root(root, archive.folder)
    local_archive = dest / archive.filename
    if local_archive.is_file():  # the archive was downloaded by hand but not extracted
        if verify and _md5(local_archive) != archive.md5:
            raise DataError(
                f"{local_archive}: checksum mismatch with the official {archive.title} archive: download it again "
                f"({archive.page}), or set data.dataset.params.verify: false"
            )
        _safe_extract(local_archive, dest)
        return dest / archive.folder
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(archive.url, str(dest), filename=archive.filename, md5=archive.md5 if verify else None)
        except Exception as exc:  # no network, proxy, disk full, damaged download: all the same advice
            raise DataError(
                f"downloading {archive.url} into {dest} failed ({type(exc).__name__}: {exc}). Without network access, "
                f"download {archive.filename} on another machine ({archive.page}), copy it into {dest} and run "
                f"`tar xzf {archive.filename} -C {dest}` (or leave the archive there: it is extracted on first use), "
                f"then set data.dataset.params.download: false"
            ) from None
        return dest / archive.folder
    return folder


# --- restricted unpickling (CIFAR) --------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy array reconstruction and bytes decoding."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):  # files pickled under numpy 1 and numpy 2
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"): a pure function.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: Any, path: Path, hint: str) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._hint = hint

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _numpy_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refused to unpickle {module}.{name}: a dataset file of this format holds only numpy "
                f"arrays, lists and bytes, so this file is not the official one and may run code if loaded "
                f"carelessly. Nothing was executed. {self._hint}"
            ) from None


def safe_unpickle(path: Path, hint: str) -> Any:
    """Read a pickle file that may contain only dicts, lists, bytes, numbers and numpy arrays.

    Args:
        path: the file.
        hint: what to do about a bad file (appended to error messages).

    Raises:
        DataError: the file names any other global (nothing is executed), or is truncated/damaged.
    """
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(file, path, hint).load()
    except DataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError ...: all mean a damaged file
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is truncated or damaged. {hint}") from None


# --- CIFAR-10 / CIFAR-100 ---------------------------------------------------------------------


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


def _cifar_archive(fmt: _CifarFormat) -> tuple[_Archive, dict[str, tuple[str, ...]], str]:
    """The archive layout, the files of each split and the meta file, read from torchvision."""
    cls = _torchvision_class(fmt.torchvision_class)
    train = tuple(name for name, _ in cls.train_list)
    test = tuple(name for name, _ in cls.test_list)
    meta = cls.meta["filename"]
    checksums = {name: md5 for name, md5 in cls.train_list + cls.test_list}
    checksums[meta] = cls.meta["md5"]
    archive = _Archive(
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
        self.folder = _prepare_folder(self.archive, self.root, self._meta, download, verify)
        shown_root = _download_root(self.root, self.archive.folder)
        self._files = _FileChecker(self.archive, self.folder, shown_root, verify)
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


# --- STL-10 -----------------------------------------------------------------------------------

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
        cls = _torchvision_class("STL10")
        checksums = {name: md5 for name, md5 in cls.train_list + cls.test_list}
        self.archive = _Archive(
            title="STL-10", page=_STL_PAGE, url=cls.url, filename=cls.filename, md5=cls.tgz_md5,
            folder=cls.base_folder, files=tuple(checksums), checksums=checksums,
        )
        self.root = Path(root).expanduser()
        self.folder = _prepare_folder(self.archive, self.root, "train_X.bin", download, verify)
        shown_root = _download_root(self.root, self.archive.folder)
        self._files = _FileChecker(self.archive, self.folder, shown_root, verify)
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


# --- image folders ----------------------------------------------------------------------------


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


# --- synthetic shapes -------------------------------------------------------------------------

#: The shape classes of ``synthetic``, in label order.
SHAPES = ("disc", "square", "triangle", "plus", "ring", "stripes", "diamond", "x", "frame", "checker")

_RENDER_CHUNK = 512  # images rendered at once: bounds the float working memory


def _plus_distance(a: Tensor, b: Tensor, r: Tensor) -> Tensor:
    arm = 0.3 * r
    return torch.minimum(torch.maximum(a.abs() - r, b.abs() - arm), torch.maximum(a.abs() - arm, b.abs() - r))


def _shape_distance(kind: int, u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) of shape ``kind`` of size ``r``.

    Args:
        u, v: ``(n, S, S)`` pixel offsets from each shape's centre (x right, y down).
        r: ``(n, 1, 1)`` half-size of each shape in pixels.
    """
    name = SHAPES[kind]
    box = torch.maximum(u.abs(), v.abs())
    if name == "disc":
        return torch.hypot(u, v) - r
    if name == "square":
        return box - 0.8 * r
    if name == "triangle":  # apex up at (0, -r), base at v = 0.75 r, half-width 0.95 r
        apex_v = v + r
        norm = math.hypot(1.75, 0.95)
        right = (1.75 * u - 0.95 * apex_v) / norm
        left = (-1.75 * u - 0.95 * apex_v) / norm
        return torch.maximum(torch.maximum(right, left), v - 0.75 * r)
    if name == "plus":
        return _plus_distance(u, v, r)
    if name == "ring":
        return (torch.hypot(u, v) - 0.72 * r).abs() - 0.24 * r
    if name == "stripes":  # a square of horizontal bars
        period = 0.6 * r
        bars = ((torch.remainder(v / period, 1.0) - 0.5).abs() - 0.25) * period
        return torch.maximum(box - 0.85 * r, bars)
    if name == "diamond":
        return (u.abs() + v.abs() - 1.05 * r) / math.sqrt(2.0)
    if name == "x":
        return _plus_distance((u + v) / math.sqrt(2.0), (u - v) / math.sqrt(2.0), r)
    if name == "frame":
        return (box - 0.72 * r).abs() - 0.2 * r
    if name == "checker":  # a 2 x 2 checkerboard: two diagonal squares
        cell = 0.85 * r
        parity = (torch.floor(u / cell) + torch.floor(v / cell)).remainder(2) == 0
        return torch.where(parity, box - cell, torch.full_like(box, 1e3))
    raise ValueError(f"unknown shape {kind}")


def _colours(count: int, light: Tensor, generator: torch.Generator) -> Tensor:
    """``(count, 3, 1, 1)`` colours: channels in [0.6, 1] where ``light``, else in [0, 0.4]."""
    base = torch.rand((count, 3), generator=generator) * 0.4
    return (base + 0.6 * light[:, None].to(base.dtype)).view(count, 3, 1, 1)


def render_shapes(labels: Tensor, size: int, *, noise: float, seed: int) -> Tensor:
    """Draw one shape per label on a gradient-and-noise background.

    Each image draws its own position, size, foreground colour, background gradient (two colours,
    a direction) and noise level; colours are independent of the class (the foreground is only
    kept on the other side of mid-grey from the background, for contrast), so the classes differ
    by shape alone. Work is vectorised over chunks of images; the result depends only on
    ``(labels, size, noise, seed)``.

    Args:
        labels: ``(N,)`` int64 shape indices into :data:`SHAPES`.
        size: image side ``S``.

    Returns:
        ``(N, 3, S, S)`` uint8.
    """
    count = labels.shape[0]
    generator = torch.Generator().manual_seed(seed)
    radius = size * (0.2 + 0.18 * torch.rand(count, generator=generator))
    centre = radius[:, None] + torch.rand((count, 2), generator=generator) * (size - 2 * radius[:, None])
    light_background = torch.rand(count, generator=generator) < 0.5
    background_a = _colours(count, light_background, generator)
    background_b = _colours(count, light_background, generator)
    foreground = _colours(count, ~light_background, generator)
    angle = torch.rand(count, generator=generator) * (2 * math.pi)
    noise_std = torch.rand(count, generator=generator) * noise

    out = torch.empty((count, 3, size, size), dtype=torch.uint8)
    pixel = torch.arange(size, dtype=torch.float32) + 0.5
    for start in range(0, count, _RENDER_CHUNK):
        part = slice(start, min(count, start + _RENDER_CHUNK))
        n = part.stop - part.start
        u = pixel.view(1, 1, size) - centre[part, 0].view(n, 1, 1)
        v = pixel.view(1, size, 1) - centre[part, 1].view(n, 1, 1)
        u, v = u.expand(n, size, size), v.expand(n, size, size)
        r = radius[part].view(n, 1, 1)
        distance = torch.empty((n, size, size))
        chunk_labels = labels[part]
        for kind in chunk_labels.unique().tolist():
            rows = (chunk_labels == kind).nonzero().squeeze(1)
            distance[rows] = _shape_distance(kind, u[rows], v[rows], r[rows])
        alpha = (0.5 - distance).clamp_(0.0, 1.0).unsqueeze(1)  # one-pixel antialiased edge
        cos, sin = torch.cos(angle[part]).view(n, 1, 1), torch.sin(angle[part]).view(n, 1, 1)
        ramp = (((u - size / 2) * cos + (v - size / 2) * sin) / size + 0.5).clamp_(0.0, 1.0).unsqueeze(1)
        background = background_a[part] + (background_b[part] - background_a[part]) * ramp
        image = background + (foreground[part] - background) * alpha
        chunk_noise = torch.Generator().manual_seed(seed * 1_000_003 + start)
        image += noise_std[part].view(n, 1, 1, 1) * torch.randn((n, 3, size, size), generator=chunk_noise)
        out[part] = image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out


class SyntheticDataset:
    """An embedded, labelled set of shapes, generated in memory (no files, no download).

    ``num_classes`` shapes (:data:`SHAPES`) in random colours, positions and sizes on
    gradient-and-noise backgrounds; exactly balanced classes. Deterministic in ``seed``; the train
    and test splits are drawn independently.
    """

    splits = ("train", "test")

    def __init__(self, params: SyntheticParams) -> None:
        self.params = params
        self.image_size = params.image_size
        self.num_classes: int | None = params.num_classes
        self.classes = SHAPES[: params.num_classes]
        self._cache: dict[str, ImageData] = {}

    def _count(self, split: str) -> int:
        if split not in self.splits:
            raise DataError(f"synthetic has no split {split!r}; it has {', '.join(self.splits)}")
        return self.params.num_train if split == "train" else self.params.num_test

    def estimate_bytes(self, split: str) -> int:
        """Decoded size of ``split``."""
        return self._count(split) * 3 * self.image_size**2

    def load(self, split: str) -> ImageData:
        """Generate ``split``: ``(N, 3, S, S)`` uint8 images and balanced ``(N,)`` int64 labels."""
        if split not in self._cache:
            count = self._count(split)
            split_seed = self.params.seed * 2 + self.splits.index(split)
            order = torch.Generator().manual_seed(split_seed)
            labels = (torch.arange(count) % self.params.num_classes)[torch.randperm(count, generator=order)]
            images = render_shapes(labels, self.image_size, noise=self.params.noise, seed=split_seed)
            self._cache[split] = ImageData(images=images, labels=labels, classes=self.classes)
        return self._cache[split]


def build_synthetic(params: SyntheticParams, ctx: BuildContext) -> SyntheticDataset:
    """The ``synthetic`` dataset."""
    return SyntheticDataset(params)


# --- registration -----------------------------------------------------------------------------


@hookimpl
def hjepa_register_datasets(register: Callable[..., None]) -> None:
    register(
        "cifar10", build_cifar10, params=Cifar10Params,
        summary="CIFAR-10 (50k/10k, 32x32, 10 classes) from the python archive, in RAM.",
    )
    register(
        "cifar100", build_cifar100, params=Cifar100Params,
        summary="CIFAR-100 (50k/10k, 32x32, 100 fine or 20 coarse classes), in RAM.",
    )
    register(
        "stl10", build_stl10, params=Stl10Params,
        summary="STL-10 (96x96; unlabeled 100k, train 5k, test 8k, train+unlabeled) from the binary archive.",
    )
    register(
        "image_folder", build_image_folder, params=ImageFolderParams,
        summary="ImageNet-style class folders decoded with PIL; in RAM when small, streamed otherwise.",
    )
    register(
        "synthetic", build_synthetic, params=SyntheticParams,
        summary="Embedded labelled shapes generated in memory (no files): smoke tests and quick runs.",
    )
