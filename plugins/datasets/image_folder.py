"""Dataset ``image_folder``: ImageNet-style class folders decoded with PIL, in RAM or streamed.

``classes`` or ``classes_file`` restrict it to a subset of the class folders, in a given order
(ImageNet-100: ``classes_file: imagenet100``, the list shipped beside this module).
"""

from __future__ import annotations

import difflib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.errors import ConfigError, DataError
from hjepa_kit.helpers import IMAGE_EXTENSIONS, decode_image, physical_cores
from hjepa_kit.params import param

__all__ = [
    "IMAGE_EXTENSIONS", "CLASS_LISTS", "ImageFolderParams", "ImageFolderDataset", "build_image_folder", "decode_image",
    "read_class_list",
]

#: Class lists shipped with the package, by the name ``classes_file`` accepts (files beside this module).
CLASS_LISTS = {"imagenet100": "imagenet100.txt"}


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
    classes: tuple[str, ...] | None = param(
        None, help="Read only these class subfolders, in this order (labels 0, 1, ...); null: every subfolder, sorted."
    )
    classes_file: str | None = param(
        None,
        help="A file with one class subfolder (synset) per line, '#' comments allowed, read as classes is; "
        "or the name of a shipped list: imagenet100 (CMC, Tian et al. 2019). Not together with classes.",
    )


def read_class_list(source: str) -> tuple[str, ...]:
    """The class names of a ``classes_file``: a path, or the name of a shipped list (:data:`CLASS_LISTS`).

    One name per line; blank lines and everything after a ``#`` are ignored.

    Raises:
        DataError: the file does not exist or lists no class.
    """
    path = Path(source).expanduser()
    if not path.is_file() and source.removesuffix(".txt") in CLASS_LISTS:
        path = Path(__file__).with_name(CLASS_LISTS[source.removesuffix(".txt")])
    if not path.is_file():
        raise DataError(f"{path}: classes_file not found; give a file with one class per line, "
                        f"or a shipped list: {', '.join(CLASS_LISTS)}")
    names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: classes_file lists no class (one class subfolder name per line)")
    return tuple(names)


def _select_classes(wanted: tuple[str, ...], present: list[str], folder: Path, key: str) -> tuple[str, ...]:
    """``wanted`` checked against the class subfolders ``present`` in ``folder``: each exists, none twice."""
    repeated = sorted({n for n in wanted if wanted.count(n) > 1})
    if repeated:
        raise DataError(f"{key}: classes given more than once: {', '.join(repeated)}")
    existing = set(present)
    unknown = [n for n in wanted if n not in existing]
    if unknown:
        lines = []
        for name in unknown[:5]:
            near = difflib.get_close_matches(name, present, n=3, cutoff=0.6)
            lines.append(f"{name!r} (nearest: {', '.join(near)})" if near else f"{name!r} (no similar folder)")
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(
            f"{folder}: {len(unknown)} of the {len(wanted)} classes of {key} have no subfolder here: "
            f"{'; '.join(lines)}{more}. The folder has {len(present)} class subfolders"
        )
    return wanted


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
    be among them. With ``classes`` or ``classes_file`` only those subfolders are read, in the
    order given (label ``i`` is the ``i``-th name); the others, in either split, are skipped.
    Small folders are held in RAM; large ones stream (``open_stream``).
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
        present = sorted(p.name for p in self._dirs["train"].iterdir() if p.is_dir() and not p.name.startswith("."))
        self.subset = params.classes is not None or params.classes_file is not None
        wanted, key = (), ""
        if params.classes is not None:
            wanted, key = tuple(params.classes), "data.dataset.params.classes"
        elif params.classes_file is not None:
            wanted, key = read_class_list(params.classes_file), f"classes_file {params.classes_file}"
        self.classes = _select_classes(wanted, present, self._dirs["train"], key) if self.subset else tuple(present)
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
            class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if self.subset:  # only the chosen classes, in their order; the test split may lack some
                by_name = {p.name: p for p in class_dirs}
                class_dirs = [by_name[name] for name in self.classes if name in by_name]
            for class_dir in class_dirs:
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
    if params.classes is not None and params.classes_file is not None:
        raise ConfigError("data.dataset.params: give classes or classes_file, not both")
    if params.classes is not None and not params.classes:
        raise ConfigError("data.dataset.params.classes: an empty list selects no class; give names, or null for every subfolder")
    size = params.image_size or getattr(ctx, "image_size", None) or 224
    return ImageFolderDataset(params, int(size))
