"""Features of every image of a folder or a dataset, from a checkpoint: ``hjepa embed``.

Images are decoded and normalised exactly as evaluation sees them (the run's image size and
mean / std), encoded a batch at a time by the target encoder, and the chosen representation (by
default the run's evaluated one, ``evaluation.representation``: what its evaluation graded) is
written as ``.npy`` (the features alone) or ``.npz`` (features with paths or splits, labels and
class names). The file appears whole or not at all.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import attrs
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..data.augment import eval_transform
from ..data.loader import choose_in_memory, iter_eval_batches
from ..errors import DataError, UserError
from ..data.images import IMAGE_EXTENSIONS, decode_image
from .outputs import atomic_file, check_new_file
from .pretrained import Pretrained, load_pretrained
from ..runtime import autocast_dtype, resolve_device
from ..threads import configure_threads, physical_cores

__all__ = ["EmbedResult", "embed_images", "find_images"]

_SUFFIXES = (".npy", ".npz")


@attrs.frozen
class EmbedResult:
    """What :func:`embed_images` wrote.

    Attributes:
        path: the ``.npy`` or ``.npz`` file.
        count: images embedded (rows of ``features``).
        feature_dim: width ``D`` of each feature.
        representation: the representation written (``encoder``, ``level0`` ...).
        skipped: images that could not be read and were skipped (``skip_bad``), as given.
        seconds: wall time of decoding and encoding.
        device: where the model ran.
        evaluated_representation: the run's ``evaluation.representation`` (the default), for comparison.
    """

    path: Path
    count: int
    feature_dim: int
    representation: str
    skipped: tuple[str, ...]
    seconds: float
    device: str
    evaluated_representation: str = ""


def find_images(folder: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Every image file under ``folder`` (recursively, hidden names skipped), in sorted order.

    Raises:
        DataError: ``folder`` is not a folder, or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--images {root}: not a folder ({'a file' if root.exists() else 'nothing is there'}); "
                        "name the folder that holds the images")
    endings = tuple(e.lower() for e in extensions)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(endings):
                found.append(Path(dirpath) / name)
    if not found:
        raise DataError(f"--images {root}: no images (file endings {', '.join(endings)}) in it or its subfolders")
    return found


class _Progress:
    """Progress of an embedding on stderr, or nowhere unless ``enabled``.

    On a terminal a tqdm bar; elsewhere (a log file, a pipe) a plain line
    ``embedding: 512/1000 images, 85 images/s`` per ~10% and at the end, so logs get no redraws.
    """

    def __init__(self, total: int | None, enabled: bool, stream: IO[str] | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.perf_counter()
        self.next_line = 0.0
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc="embedding", unit=" images", file=self.stream, dynamic_ncols=True) if enabled and tty else None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        if not self.enabled:
            return
        fraction = self.done / self.total if self.total else 0.0
        if fraction >= self.next_line or self.done == self.total:
            self.next_line = fraction + 0.1
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            of = f"/{self.total}" if self.total else ""
            print(f"embedding: {self.done}{of} images, {rate:.0f} images/s", file=self.stream, flush=True)


def embed_images(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    data_path: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
    representation: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    skip_bad: bool = False,
    force: bool = False,
    overrides: Sequence[str] = (),
    plugins: Iterable[Any] = (),
    progress: bool = False,
) -> EmbedResult:
    """Write the features of every image of a folder or a dataset.

    This is the library's ``hjepa_kit.embed`` and the command ``hjepa embed``.

    Args:
        checkpoint: a checkpoint written by :func:`~hjepa_kit.api.train`.
        out: a ``.npy`` file (the ``(N, D)`` float32 features) or ``.npz`` (``features``, ``labels``,
            ``classes``, ``representation``, and ``paths`` + ``skipped`` for a folder or ``split`` +
            ``index`` + ``dataset`` for a dataset). It must not exist unless ``force``.
        images: a folder of image files, searched recursively; each is decoded to the model's
            image size (shorter side, centre crop). Its label is its top-level subfolder's index
            in ``classes`` (``-1`` directly in the folder).
        dataset: instead of ``images``, a dataset component (``cifar10``, ``image_folder`` ...); the
            run's own dataset keeps the run's parameters, another starts from its defaults.
        data_path: the dataset folder (sets ``data.dataset.params.root``).
        splits: the dataset's splits to embed, in order (default: all it has).
        representation: ``encoder`` or a hierarchy level (``level0``, ``level1`` ...); ``None``
            (default): the run's evaluated representation, ``evaluation.representation`` in the
            checkpoint, i.e. the features its evaluation graded (``result.representation`` says which).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per batch (default: the run's ``data.eval_batch_size``).
        precision: ``fp32`` (default, exact), ``bf16`` or ``auto`` (bf16 where it is fast).
        skip_bad: skip images that cannot be read (listed in the result) instead of failing.
        force: replace ``out`` when it exists.
        overrides: ``KEY=VALUE`` overrides applied to the checkpoint's configuration.
        plugins: extra plugins whose components the configuration names.
        progress: report progress on stderr: a bar on a terminal, a line per ~10% elsewhere.

    Returns:
        An :class:`~hjepa_kit.evaluation.embedding.EmbedResult`: path, count, feature width, the
        representation written, skipped files.

    Raises:
        hjepa_kit.errors.UserError: a foreign checkpoint, an unknown representation or split, an
            unreadable image (without ``skip_bad``; the message names the file), an existing or
            unwritable ``out``. Nothing is written when it fails.
    """
    out = Path(out)
    if (images is None) == (dataset is None):
        raise UserError("hjepa embed: give exactly one of --images FOLDER or --dataset NAME")
    if images is not None and (data_path is not None or splits):
        raise UserError("--data-path and --split select a dataset's files; with --images the folder is the input")
    if out.suffix.lower() not in _SUFFIXES:
        raise UserError(f"--out {out}: name a .npy file (the features alone) or a .npz file (features with labels, paths ...)")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if precision not in ("fp32", "bf16", "auto"):
        raise UserError(f"--precision {precision!r}: allowed: fp32, bf16, auto")
    check_new_file(out, force=force)  # before the long work
    files = find_images(images) if images is not None else None
    run_device = resolve_device(device)
    pretrained = load_pretrained(checkpoint, device=run_device, dataset=dataset, data_path=data_path, overrides=overrides, plugins=plugins)
    representation = pretrained.choose_representation(representation)  # None: the run's evaluated one
    configure_threads(pretrained.config.training.threads)
    amp = autocast_dtype(precision, run_device)
    size = int(batch_size or pretrained.config.data.eval_batch_size)
    started = time.perf_counter()
    with atomic_file(out, force=force) as tmp:
        if files is not None:
            arrays, skipped = _embed_folder(pretrained, Path(images), files, representation, size, amp, skip_bad, progress)  # type: ignore[arg-type]
        else:
            arrays, skipped = _embed_dataset(pretrained, splits, representation, size, amp, progress), ()
        with open(tmp, "wb") as handle:
            if out.suffix.lower() == ".npy":
                np.save(handle, arrays["features"])
            else:
                np.savez(handle, **arrays)
    features = arrays["features"]
    return EmbedResult(
        path=out, count=int(features.shape[0]), feature_dim=int(features.shape[1]), representation=representation,
        skipped=tuple(skipped), seconds=time.perf_counter() - started, device=str(run_device),
        evaluated_representation=pretrained.evaluated_representation,
    )


def _encode(pretrained: Pretrained, batch: Tensor, representation: str, amp: torch.dtype | None) -> np.ndarray:
    device = batch.device
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        features = pretrained.model.features(batch)[representation]
    return features.float().cpu().numpy()


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=str) if len(values) else np.zeros((0,), dtype="<U1")


def _embed_folder(
    pretrained: Pretrained, root: Path, files: list[Path], representation: str, batch_size: int,
    amp: torch.dtype | None, skip_bad: bool, progress: bool,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode and encode ``files``; labels are the top-level subfolder under ``root`` (-1 directly in it)."""
    image_size, channels = int(pretrained.ctx.image_size), int(pretrained.ctx.in_chans)
    if channels not in (1, 3):
        raise UserError(f"--images: the model takes {channels}-channel images; only 1 (grey) and 3 (RGB) can be decoded from files")
    device = pretrained.ctx.device
    top = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    classes = sorted({t for t in top if t is not None})
    index = {name: i for i, name in enumerate(classes)}
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []

    def decode(i: int) -> Tensor | DataError:
        try:
            return decode_image(files[i], image_size, channels)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(8, physical_cores()))) as pool, _Progress(len(files), progress) as meter:
        for start in range(0, len(files), batch_size):
            positions = list(range(start, min(start + batch_size, len(files))))
            decoded = list(pool.map(decode, positions))
            good = []
            for position, item in zip(positions, decoded):
                if isinstance(item, DataError):
                    if not skip_bad:
                        raise DataError(f"{item}, or pass --skip-bad to skip unreadable images")
                    skipped.append(str(files[position]))
                else:
                    good.append((position, item))
            if good:
                batch = torch.stack([item for _, item in good]).to(device, non_blocking=True)
                chunks.append(_encode(pretrained, eval_transform(batch, image_size, pretrained.mean, pretrained.std), representation, amp))
                kept += [position for position, _ in good]
            meter.update(len(positions))
    if not kept:
        raise DataError(f"--images {root}: none of its {len(files)} images could be read ({skipped[0]} ...)")
    labels = np.array([index[top[i]] if top[i] is not None else -1 for i in kept], dtype=np.int64)
    arrays = {
        "features": np.concatenate(chunks),
        "paths": _strings([str(files[i]) for i in kept]),
        "labels": labels,
        "classes": _strings(classes),
        "skipped": _strings(skipped),
        "representation": np.array(representation),
    }
    return arrays, skipped


def _embed_dataset(
    pretrained: Pretrained, splits: Sequence[str] | None, representation: str, batch_size: int,
    amp: torch.dtype | None, progress: bool,
) -> dict[str, np.ndarray]:
    """Encode every image of the chosen splits (default: all the dataset has), in split order."""
    data = pretrained.build_dataset()
    available = tuple(data.splits)
    chosen = list(splits) if splits else list(available)
    for split in chosen:
        if split not in available:
            raise UserError(f"--split {split!r}: dataset '{pretrained.config.data.dataset.name}' has the splits {', '.join(available)}")
    config = pretrained.config.data
    sources = []
    for split in chosen:
        if choose_in_memory(data, split, config.in_memory, config.memory_limit_mb):
            sources.append((split, data.load(split)))
        else:
            sources.append((split, data.open_stream(split)))  # type: ignore[attr-defined]
    total = sum(len(source) for _, source in sources)
    chunks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    split_names: list[str] = []
    positions: list[np.ndarray] = []
    with _Progress(total, progress) as meter:
        for split, source in sources:
            start = 0
            for images, batch_labels in _batches(source, pretrained, batch_size):
                chunks.append(_encode(pretrained, images, representation, amp))
                count = images.shape[0]
                labels.append(batch_labels.numpy().astype(np.int64) if batch_labels is not None else np.full(count, -1, dtype=np.int64))
                split_names += [split] * count
                positions.append(np.arange(start, start + count, dtype=np.int64))
                start += count
                meter.update(count)
    classes = next((s.classes for _, s in sources if getattr(s, "classes", ())), getattr(data, "classes", None) or ())
    return {
        "features": np.concatenate(chunks) if chunks else np.zeros((0, int(pretrained.ctx.embed_dim or 0)), dtype=np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros((0,), dtype=np.int64),
        "split": _strings(split_names),
        "index": np.concatenate(positions) if positions else np.zeros((0,), dtype=np.int64),
        "classes": _strings([str(c) for c in classes]),
        "dataset": np.array(pretrained.config.data.dataset.name),
        "representation": np.array(representation),
    }


def _batches(source: Any, pretrained: Pretrained, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    return iter_eval_batches(
        source, image_size=int(pretrained.ctx.image_size), batch_size=batch_size, mean=pretrained.mean,
        std=pretrained.std, device=pretrained.ctx.device,
    )
