"""Built-in datasets: ``cifar10``, ``cifar100``, ``stl10``, ``image_folder`` and ``synthetic``.

Every dataset hands a split to the core as one ``(N, 3, H, W)`` uint8 tensor in RAM
(:class:`~hjepa_kit.contracts.ImageData`); the core augments it a batch at a time
(:mod:`hjepa_kit.data.loader`). Beside the :class:`~hjepa_kit.contracts.Dataset` contract each dataset
offers ``estimate_bytes(split)`` (decoded size, without decoding) and, where streaming makes
sense (STL-10, image folders), ``open_stream(split)``: a map-style torch dataset of
``(uint8 (3, H, W), label)`` for data too big for RAM.

CIFAR and STL-10 are read from the official archives' extracted folders (``--data-path``), downloaded through torchvision when ``download: true``. Their md5 checksums are
taken from torchvision's dataset classes and checked by default. The CIFAR format is Python pickle,
which can run code: it is read with an unpickler that only rebuilds numpy arrays, lists, dicts and
bytes, and refuses anything else. A missing, damaged or foreign file is a
:class:`~hjepa_kit.errors.DataError` that names the file, what was expected and how to get it.

One module per dataset (:mod:`.cifar`, :mod:`.stl10`, :mod:`.image_folder`, :mod:`.synthetic`);
:mod:`.archives` finds, extracts, downloads and checks the official archives and holds the
restricted unpickler. Every public name is importable from this package.
"""

from __future__ import annotations

from collections.abc import Callable

from hjepa_kit import hookimpl

from .archives import safe_unpickle
from .cifar import Cifar10Params, Cifar100Params, CifarDataset, build_cifar10, build_cifar100
from .image_folder import (
    CLASS_LISTS, IMAGE_EXTENSIONS, ImageFolderDataset, ImageFolderParams, build_image_folder, decode_image, read_class_list,
)
from .stl10 import Stl10Dataset, Stl10Params, build_stl10
from .synthetic import SHAPES, SyntheticDataset, SyntheticParams, build_synthetic, render_shapes

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
    "IMAGE_EXTENSIONS",
    "decode_image",
    "CLASS_LISTS",
    "read_class_list",
]


#: name, factory, parameters, summary: one row per dataset.
_DATASETS = (
    ("cifar10", build_cifar10, Cifar10Params, "CIFAR-10 (50k/10k, 32x32, 10 classes) from the python archive, in RAM."),
    ("cifar100", build_cifar100, Cifar100Params, "CIFAR-100 (50k/10k, 32x32, 100 fine or 20 coarse classes), in RAM."),
    ("stl10", build_stl10, Stl10Params,
     "STL-10 (96x96; unlabeled 100k, train 5k, test 8k, train+unlabeled) from the binary archive."),
    ("image_folder", build_image_folder, ImageFolderParams,
     "ImageNet-style class folders decoded with PIL; in RAM when small, streamed otherwise."),
    ("synthetic", build_synthetic, SyntheticParams,
     "Embedded labelled shapes generated in memory (no files): smoke tests and quick runs."),
)


# Registered here, once: the entry point ``datasets`` names this package, and its modules carry no
# hook implementations of their own.
@hookimpl
def hjepa_register_datasets(register: Callable[..., None]) -> None:
    for name, factory, params, summary in _DATASETS:
        register(name, factory, params=params, summary=summary)
