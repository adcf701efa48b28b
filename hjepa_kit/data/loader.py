"""Images into batches: uint8 in RAM -> batched augmentation -> normalised float.

The training step sees ``(B, 3, S, S)`` float32 images, already augmented. How they get there:

* **In RAM** (CIFAR, STL-10, small image folders, the synthetic set): the dataset plugin decodes a
  split once into a ``(N, 3, H, W)`` uint8 tensor (CIFAR-10 train: 150 MB). A batch is an index
  gather followed by :class:`BatchAugment`, a handful of vectorised tensor operations in the
  training process. No worker processes, no per-sample Python: on a 2-core machine loader workers
  would fight the compute threads for the same cores.
* **Streamed** (large image folders): a torch ``DataLoader`` with ``data.num_workers`` workers
  decodes samples one by one into fixed-size uint8 tensors; the same batched augmentation then runs
  in the main process.

``data.in_memory: auto`` picks RAM when the dataset's decoded size is at most
``data.memory_limit_mb`` (``always`` / ``never`` override it).

Augmentation and the evaluation transform are in :mod:`hjepa_kit.data.augment`.

Order and randomness: each epoch's order is a permutation drawn from ``(seed, epoch)``, the same on
every rank; rank ``r`` of ``W`` takes every ``W``-th index from position ``r``. Each batch's
augmentation draws from a generator seeded from ``(seed, epoch, rank, batch index)``, so a run
resumed inside an epoch (:meth:`TrainLoader.skip` or :meth:`TrainLoader.load_state_dict`) sees
exactly the images an uninterrupted run would.

Optional dataset extras read here (beyond :class:`~hjepa_kit.contracts.Dataset`):

* ``estimate_bytes(split) -> int | None``: decoded uint8 size of a split, without decoding it.
* ``open_stream(split) -> torch.utils.data.Dataset``: map-style, item ``i`` is
  ``(uint8 (C, H, W) tensor, int label)`` (label ``-1`` when unlabelled), all items one size;
  safe to use from loader worker processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..contracts import Dataset, ImageData
from ..errors import DataError
from .augment import BatchAugment, eval_transform

__all__ = [
    "iter_eval_batches",
    "estimate_bytes",
    "choose_in_memory",
    "TrainLoader",
    "InMemoryTrainLoader",
    "StreamingTrainLoader",
    "build_train_loader",
]

# Domain-separation tags so the order and the augmentation draw from unrelated streams.
_ORDER_TAG = 0x0DE5
_AUGMENT_TAG = 0xA065


# --- evaluation batches -----------------------------------------------------------------------


def _collate(items: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack streamed ``(uint8 (C, H, W), label)`` items into ``(B, C, H, W)`` and ``(B,)``."""
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([int(item[1]) for item in items], dtype=torch.int64)
    return images, labels


def iter_eval_batches(
    data: ImageData | torch.utils.data.Dataset,
    *,
    image_size: int,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """All images of a split in order, resized and normalised, a batch at a time (no augmentation).

    Args:
        data: a split in RAM, or a stream (see the module docstring) for data too big for RAM.
        image_size: side ``S`` the encoder sees.
        batch_size: images per batch; the last batch may be smaller.
        device: where the images go (uint8 moves first, then the transform runs there).
        num_workers: loader workers, streams only.

    Yields:
        ``(images, labels)``: ``(B, C, S, S)`` float32 on ``device``, and ``(B,)`` int64 labels on
        the CPU, or ``None`` when the split is unlabelled.
    """
    target = torch.device(device) if device is not None else None
    if isinstance(data, ImageData):
        for start in range(0, len(data), batch_size):
            images = data.images[start : start + batch_size]
            if target is not None:
                images = images.to(target, non_blocking=True)
            labels = None if data.labels is None else data.labels[start : start + batch_size]
            yield eval_transform(images, image_size, mean, std), labels
        return
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate,
        pin_memory=target is not None and target.type == "cuda",
    )
    for images, labels in loader:
        if target is not None:
            images = images.to(target, non_blocking=True)
        yield eval_transform(images, image_size, mean, std), (None if bool((labels < 0).any()) else labels)


# --- choosing RAM or streaming ----------------------------------------------------------------


def estimate_bytes(dataset: Dataset, split: str) -> int | None:
    """The decoded uint8 size of ``split``, when the dataset can tell without decoding it."""
    estimate = getattr(dataset, "estimate_bytes", None)
    if not callable(estimate):
        return None
    value = estimate(split)
    return None if value is None else int(value)


def choose_in_memory(dataset: Dataset, split: str, mode: str, memory_limit_mb: int) -> bool:
    """Whether to hold ``split`` in RAM (``True``) or stream it.

    ``always`` holds it in RAM; ``never`` streams it; ``auto`` holds it in RAM when its decoded
    size is known and at most ``memory_limit_mb``. A dataset without ``open_stream`` is always held
    in RAM (with a warning when ``never`` or the size limit asked otherwise).
    """
    can_stream = callable(getattr(dataset, "open_stream", None))
    if mode == "always":
        return True
    if mode == "never":
        if not can_stream:
            warnings.warn(
                f"{type(dataset).__name__} cannot stream: holding split {split!r} in RAM despite data.in_memory: never",
                stacklevel=2,
            )
        return not can_stream
    size = estimate_bytes(dataset, split)
    if not can_stream:
        if size is not None and size > memory_limit_mb * 2**20:
            warnings.warn(
                f"{type(dataset).__name__} split {split!r} is {size / 2**20:.0f} MB decoded, above "
                f"data.memory_limit_mb={memory_limit_mb}, but this dataset cannot stream: holding it in RAM",
                stacklevel=2,
            )
        return True
    return size is not None and size <= memory_limit_mb * 2**20


# --- training loaders -------------------------------------------------------------------------


def _mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (any sign), for ``torch.Generator.manual_seed``."""
    state = np.random.SeedSequence([v % 2**64 for v in values]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


class TrainLoader:
    """Shuffled, sharded, augmented training batches; resumable inside an epoch.

    Iterating yields ``len(self)`` batches ``(images, labels)``: ``(V * B, 3, S, S)`` float32
    normalised images on ``device`` (``V`` augmented views of the same ``B`` images, view after view:
    rows ``v * B + i`` are views of image ``i``), and ``(B,)`` int64 labels on the CPU (``None`` when
    the split is unlabelled). Incomplete batches are dropped (every rank yields the same number of batches, as
    DDP needs). Iteration starts at the current position of the epoch: 0 after :meth:`set_epoch`,
    ``n`` after :meth:`skip` ``(n)``; iterating again after a completed pass repeats the epoch.

    Attributes:
        in_memory: whether the split is held in RAM (else streamed).
        num_samples: images in the split (all ranks).
        batch_size, image_size, seed, rank, world_size, views: as built.
        has_labels: whether batches carry labels.
        epoch: the current epoch (set with :meth:`set_epoch`).
    """

    in_memory: bool = True

    def __init__(
        self,
        *,
        num_samples: int,
        batch_size: int,
        augment: BatchAugment,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device | str | None,
        has_labels: bool,
        split: str,
        views: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        per_rank = num_samples // world_size
        if per_rank < batch_size:
            raise DataError(
                f"split {split!r} has {num_samples} images: fewer than data.batch_size={batch_size} per process "
                f"({world_size} process(es)), so an epoch has no full batch; lower data.batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.augment = augment
        self.image_size = augment.output_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.has_labels = has_labels
        self.split = split
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.views = int(views)
        self.epoch = 0
        self._num_batches = per_rank // batch_size
        self._position = 0

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return self._num_batches

    @property
    def position(self) -> int:
        """Batches of the current epoch already handed out."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``: a new order (the same on every rank), position 0."""
        self.epoch = int(epoch)
        self._position = 0

    def skip(self, num_batches: int) -> None:
        """Move ``num_batches`` forward in the current epoch without producing them (resuming)."""
        target = self._position + int(num_batches)
        if not 0 <= target <= len(self):
            raise ValueError(f"cannot skip to batch {target} of an epoch of {len(self)} batches")
        self._position = target

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: enough to resume with :meth:`load_state_dict` (plain ints)."""
        return {
            "epoch": self.epoch,
            "batches_done": self._position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where :meth:`state_dict` was taken (on any rank of the same world size).

        Raises:
            DataError: the saved loader had another seed, dataset size, batch size or world size,
                so its order cannot be reproduced.
        """
        for key in ("seed", "num_samples", "batch_size", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(
                    f"cannot resume the data order: the checkpoint's loader had {key}={state[key]}, this run has "
                    f"{getattr(self, key)}; resume with the same settings (seed, dataset, data.batch_size, number "
                    f"of processes), or start a new run from these weights"
                )
        self.set_epoch(int(state["epoch"]))
        self.skip(int(state["batches_done"]))

    def shard_indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices for ``epoch`` in order, ``(len(self) * batch_size,)`` int64.

        The permutation is drawn from ``(seed, epoch)`` alone, so all ranks agree on it; rank ``r``
        takes positions ``r, r + W, r + 2W, ...`` (disjoint shards covering the epoch).
        """
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, _ORDER_TAG))
        order = torch.randperm(self.num_samples, generator=generator)
        shard = order[self.rank :: self.world_size][: self.num_samples // self.world_size]
        return shard[: self._num_batches * self.batch_size]

    def batch_generator(self, batch_index: int, epoch: int | None = None) -> torch.Generator:
        """The generator of one batch's augmentation, seeded from ``(seed, epoch, rank, batch_index)``."""
        epoch = self.epoch if epoch is None else epoch
        return torch.Generator().manual_seed(_mix_seed(self.seed, epoch, self.rank, batch_index, _AUGMENT_TAG))

    def _uint8_batches(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor | None]]:
        """uint8 ``(B, C, H, W)`` images and labels of the given index batches, in order."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        start = self._position if self._position < len(self) else 0
        self._position = start
        batches = list(self.shard_indices().view(len(self), self.batch_size)[start:])
        for batch_index, (images, labels) in enumerate(self._uint8_batches(batches), start=start):
            images = images.to(self.device, non_blocking=True)
            generator = self.batch_generator(batch_index)
            augmented = self.augment(images, generator)
            if self.views > 1:  # each view draws its own crops and flips, one after the other
                augmented = torch.cat([augmented, *(self.augment(images, generator) for _ in range(self.views - 1))])
            # Counted before the yield: the batch is handed out, so a checkpoint taken while the
            # trainer works on it resumes after it.
            self._position = batch_index + 1
            yield augmented, labels


class InMemoryTrainLoader(TrainLoader):
    """Training batches gathered from a split held in RAM as uint8 (no worker processes)."""

    in_memory = True

    def __init__(self, data: ImageData, **kwargs: Any) -> None:
        super().__init__(num_samples=len(data), has_labels=data.labels is not None, **kwargs)
        self.data = data

    def _uint8_batches(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor | None]]:
        labels = self.data.labels
        for indices in batches:
            yield self.data.images.index_select(0, indices), (None if labels is None else labels.index_select(0, indices))


class StreamingTrainLoader(TrainLoader):
    """Training batches decoded sample by sample by a ``DataLoader`` (workers optional), then
    augmented in the main process exactly as in RAM."""

    in_memory = False

    def __init__(self, stream: torch.utils.data.Dataset, *, num_workers: int, has_labels: bool, **kwargs: Any) -> None:
        super().__init__(num_samples=len(stream), has_labels=has_labels, **kwargs)  # type: ignore[arg-type]
        # Streamed items carry label -1 when unlabelled; such a batch yields labels None.
        self.stream = stream
        self.num_workers = num_workers

    def _uint8_batches(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor | None]]:
        if not batches:
            return
        loader = torch.utils.data.DataLoader(
            self.stream,
            batch_sampler=[indices.tolist() for indices in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield images, (labels if self.has_labels and bool((labels >= 0).all()) else None)


def _check_split(dataset: Dataset, split: str) -> None:
    if split not in dataset.splits:
        raise DataError(
            f"{type(dataset).__name__} has no split {split!r} (data.train_split); it offers: {', '.join(dataset.splits)}"
        )


def _check_image_data(data: ImageData, dataset: Dataset, split: str, channels: int) -> None:
    images = data.images
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != channels:
        raise DataError(
            f"{type(dataset).__name__}.load({split!r}) returned images of dtype {images.dtype} and shape "
            f"{tuple(images.shape)}; expected uint8 (N, {channels}, H, W)"
        )
    if data.labels is not None and tuple(data.labels.shape) != (images.shape[0],):
        raise DataError(
            f"{type(dataset).__name__}.load({split!r}) returned {tuple(data.labels.shape)} labels for "
            f"{images.shape[0]} images; expected ({images.shape[0]},)"
        )


def build_train_loader(
    dataset: Dataset,
    data_cfg: DataConfig,
    *,
    image_size: int | None = None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
) -> TrainLoader:
    """The training loader of ``data_cfg.train_split``, in RAM or streamed (see the module docs).

    Args:
        dataset: the built dataset component.
        data_cfg: the ``data`` section (batch size, workers, in_memory, augmentation).
        image_size: side ``S`` of the augmented images; ``None``: ``data.image_size``, else the
            dataset's native size.
        seed: the run's seed (order and augmentation).
        rank, world_size: this process's place under DDP (each rank reads its own shard).
        device: where augmentation runs and images are yielded (uint8 moves there first).

    Raises:
        DataError: unknown split, or too few images for one batch per process.
    """
    split = data_cfg.train_split
    _check_split(dataset, split)
    size = image_size or data_cfg.image_size or dataset.image_size
    augmentation = data_cfg.augmentation
    common: dict[str, Any] = dict(
        batch_size=data_cfg.batch_size,
        augment=BatchAugment(augmentation, size),
        seed=seed,
        rank=rank,
        world_size=world_size,
        device=device,
        split=split,
        views=data_cfg.views,
    )
    if choose_in_memory(dataset, split, data_cfg.in_memory, data_cfg.memory_limit_mb):
        data = dataset.load(split)
        _check_image_data(data, dataset, split, len(augmentation.mean))
        return InMemoryTrainLoader(data, **common)
    stream = dataset.open_stream(split)  # type: ignore[attr-defined]
    has_labels = bool(getattr(stream, "labelled", dataset.num_classes is not None))
    return StreamingTrainLoader(stream, num_workers=data_cfg.num_workers, has_labels=has_labels, **common)
