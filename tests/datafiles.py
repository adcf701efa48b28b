"""Writers of the real dataset formats, for tests: CIFAR pickles, STL-10 binaries, PNG folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _pickle(path: Path, obj: object, protocol: int) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 20, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A CIFAR-10 python folder: 5 data batches + test batch + batches.meta, as the official pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        _pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                b"filenames": [b"x.png"] * per_batch}, protocol)
        written[name] = (data, labels)
    _pickle(folder / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol)
    return written


def write_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> dict[str, dict[bytes, object]]:
    """A CIFAR-100 python folder (train, test, meta) pickled at the highest protocol."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(x) for x in rng.integers(0, 100, size=n)]
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine]}
        _pickle(folder / name, batch, pickle.HIGHEST_PROTOCOL)
        written[name] = batch
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    _pickle(folder / "meta", meta, pickle.HIGHEST_PROTOCOL)
    return written


def write_stl10(root: Path, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """An stl10_binary folder; images are (N, 96, 96, 3) HWC, stored as STL does (channel planes, column-major)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for split, n in counts.items():
        images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # (N, C, W, H)
        written[f"{split}_X"] = images
        if split != "unlabeled":
            labels = rng.integers(1, 11, size=n, dtype=np.uint8)
            labels.tofile(folder / f"{split}_y.bin")
            written[f"{split}_y"] = labels
    return written


def write_image_folder(root: Path) -> None:
    """root/train/{cat,dog}/*.png (3 each, 40x30) and root/val/{cat,dog}/*.png (1 each)."""
    for split, count in (("train", 3), ("val", 1)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                array = np.zeros((30, 40, 3), dtype=np.uint8)
                array[..., 0] = 200 * label + i  # class in red, index in red too
                array[..., 1] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
                Image.fromarray(array).save(folder / f"{i}.png")
