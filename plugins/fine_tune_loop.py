"""The training loop of the ``fine_tune`` evaluator: layer-wise learning rates, the schedule, resumable progress.

:func:`fine_tune` trains an :class:`~hjepa_kit.contracts.EvalModel`'s encoder with a linear head
and scores the test split after every epoch; the recipe and its references are in
:mod:`hjepa_kit.plugins.fine_tune`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hjepa_kit.contracts import EvalModel, ImageData
from hjepa_kit.errors import UserError
from hjepa_kit.helpers import topk_accuracy, write_atomic
from hjepa_kit.plugins.linear_probe import _threads_for, confusion_matrix, fit_linear_classifier

__all__ = ["FineTuneResult", "layer_ids", "param_groups", "pooled", "lr_factor", "fine_tune", "PROGRESS_FILE"]

log = logging.getLogger("hjepa_kit")

#: The file of saved progress in :attr:`EvalModel.state_dir <hjepa_kit.contracts.EvalModel>`.
PROGRESS_FILE = "progress.pt"

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")

#: L2 penalty of the linear probe the head starts from (``head_init: probe``): the largest of the
#: linear probe's default grid, so that the head starts with moderate logits.
PROBE_WEIGHT_DECAY = 1e-2
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "dist_token")


@attrs.frozen
class FineTuneResult:
    """Outcome of :func:`fine_tune`.

    Attributes:
        top1, top5: test accuracies after the last epoch.
        history: one record per epoch: ``epoch``, ``train_loss``, ``train_top1``, ``test_top1``,
            ``lr`` (the head's at the epoch's last step), ``seconds``.
        confusion: ``(C, C)`` test counts after the last epoch.
        labels_per_class: labelled train images per class trained on (the mean when all are used).
        resumed_from: epochs read from saved progress (0: started afresh).
        notes: what the report should say (resumed, no blocks found ...).
    """

    top1: float
    top5: float
    history: list[dict[str, float]]
    confusion: Any
    labels_per_class: float
    resumed_from: int = 0
    notes: tuple[str, ...] = ()


def layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Each trainable parameter's layer for layer-wise decay, and the number of blocks ``L``.

    A parameter of ``blocks.<i>.`` is layer ``i + 1``; one named before the first block (the patch
    embedding) layer 0; one after the blocks (the final norm) layer ``L + 1``, with the head. With
    no ``blocks.<i>.`` parameter, every parameter is layer ``L + 1 = 1``: one learning rate.
    """
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    blocks = {n: int(m.group(1)) for n in names if (m := _BLOCK.search(n))}
    depth = max(blocks.values()) + 1 if blocks else 0
    ids: dict[str, int] = {}
    seen_block = False
    for name in names:
        if name in blocks:
            seen_block = True
            ids[name] = blocks[name] + 1
        else:
            ids[name] = depth + 1 if seen_block or not blocks else 0
    return ids, depth


def param_groups(encoder: nn.Module, head: nn.Module, layer_decay: float, weight_decay: float) -> tuple[list[dict[str, Any]], int]:
    """AdamW parameter groups, one per (layer, decayed or not), each with its ``lr_scale``; and ``L``.

    Weight decay applies to parameters of two or more dimensions (weight matrices, convolutions),
    except position embeddings and class / mask tokens.
    """
    ids, depth = layer_ids(encoder)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    named = [(n, p, ids[n]) for n, p in encoder.named_parameters() if p.requires_grad]
    named += [(f"head.{n}", p, depth + 1) for n, p in head.named_parameters()]
    for name, p, layer in named:
        decayed = p.ndim >= 2 and not name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0, "lr_scale": layer_decay ** (depth + 1 - layer),
        })  # fmt: skip
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)], depth


def pooled(tokens: Tensor, pool: str) -> Tensor:
    """``(B, D)`` from ``(B, N, D)`` tokens: their mean, or (``max``) the per-channel maximum of the
    tokens each standardised over its ``D`` values (a LayerNorm without affine), as the built-in
    hierarchical predictor's ``level0`` with ``feature_pool: max``."""
    if pool == "mean":
        return tokens.mean(dim=1)
    return F.layer_norm(tokens, (tokens.shape[-1],)).amax(dim=1)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (order matters)."""
    seed = 0x5EED
    for v in values:
        seed = (seed * 1_000_003 + int(v) + 0x9E37) % (2**63 - 1)
    return seed


@contextlib.contextmanager
def _global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators seeded with ``seed`` inside the block (stochastic depth, dropout), restored after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _labelled_rows(data: ImageData, num_classes: int, per_class: int | None, seed: int) -> Tensor:
    """All train rows, or ``per_class`` seeded rows of each class (sorted)."""
    labels = data.labels
    if per_class is None:
        return torch.arange(len(data))
    generator = torch.Generator().manual_seed(_mix(seed, 1))
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    short = {c: len(m) for c, m in enumerate(members) if len(m) < per_class}
    if short:
        listed = ", ".join(f"class {c}: {n}" for c, n in sorted(short.items())[:10])
        raise UserError(f"evaluator fine_tune: labels_per_class={per_class}, but the train split has fewer for "
                        f"{len(short)} class(es) ({listed}); lower labels_per_class or set it to null (all)")  # fmt: skip
    return torch.cat([m[torch.randperm(len(m), generator=generator)[:per_class]] for m in members]).sort().values


def _train_epoch(model: EvalModel, head: nn.Module, optimizer: torch.optim.Optimizer, rows: Tensor, epoch: int,
                 step: tuple[int, int, int], batch_size: int, lr: float, label_smoothing: float, augment: bool,
                 pool: str, seed: int) -> tuple[float, float, int, float]:
    """One epoch over ``rows`` in a seeded order; ``step`` is ``(first step, total steps, warmup steps)``.

    A last batch of one image is left out (the head's batch normalisation needs two).

    Returns:
        ``(sum of the batch losses x batch sizes, correct predictions, images seen, the last step's lr factor)``.
    """
    encoder, device = model.encoder, torch.device(model.device)
    encoder.train()
    generator = torch.Generator().manual_seed(_mix(seed, 2, epoch))  # the order, then every batch's augmentation
    order = rows[torch.randperm(len(rows), generator=generator)]
    labels = model.train.labels.to(torch.int64)
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    first, total, warmup = step
    factor, seen = 1.0, 0
    with _global_rng(_mix(seed, 3, epoch), device):
        for b, start in enumerate(range(0, len(order), batch_size)):
            index = order[start : start + batch_size]
            if len(index) < 2:
                continue
            seen += len(index)
            images = model.train.images[index].to(device, non_blocking=True)
            x = model.augment(images, generator) if augment else model.transform(images)
            y = labels[index].to(device, non_blocking=True)
            factor = lr_factor(first + b, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"] * factor
            with torch.autocast(device.type, dtype=model.autocast_dtype or torch.bfloat16, enabled=model.autocast_dtype is not None):
                out = head(pooled(encoder(x).tokens, pool))
            loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            correct += (out.detach().argmax(1) == y).sum()
    return float(loss_sum), float(correct), seen, factor


@torch.no_grad()
def _probe_head(encoder: nn.Module, head: nn.Sequential, model: EvalModel, rows: Tensor, batch_size: int, pool: str,
                augment: bool, seed: int) -> None:
    """Start ``head`` as a linear probe of the frozen encoder's pooled train features (LP-FT).

    The features of ``rows`` (augmented once, as the fine-tuning will see them, when ``augment``)
    are standardised with their own statistics,
    which become the head's batch-norm running statistics, and a softmax regression fitted to them
    by L-BFGS (:func:`~hjepa_kit.plugins.linear_probe.fit_linear_classifier`) becomes its linear layer.
    """
    encoder.eval()
    generator = torch.Generator().manual_seed(_mix(seed, 4))
    parts = []
    for start in range(0, len(rows), batch_size):
        images = model.train.images[rows[start : start + batch_size]].to(model.device, non_blocking=True)
        images = model.augment(images, generator) if augment else model.transform(images)
        with torch.autocast(model.device.type, dtype=model.autocast_dtype or torch.bfloat16, enabled=model.autocast_dtype is not None):
            parts.append(pooled(encoder(images).tokens, pool).float().cpu())
    probe = fit_linear_classifier(torch.cat(parts), model.train.labels[rows], head[1].out_features,
                                  weight_decay=PROBE_WEIGHT_DECAY, max_iter=100)  # fmt: skip
    norm, linear = head[0], head[1]
    norm.running_mean.copy_(probe.mean)
    norm.running_var.copy_(probe.std.square() - norm.eps).clamp_(min=0.0)
    linear.weight.copy_(probe.weight)
    linear.bias.copy_(probe.bias)


@torch.no_grad()
def _test_logits(encoder: nn.Module, head: nn.Module, model: EvalModel, batch_size: int, pool: str) -> Tensor:
    """``(N_test, C)`` float32 logits on the CPU, with the evaluation transform."""
    encoder.eval()
    parts = []
    for start in range(0, len(model.test), batch_size):
        images = model.transform(model.test.images[start : start + batch_size].to(model.device, non_blocking=True))
        with torch.autocast(model.device.type, dtype=model.autocast_dtype or torch.bfloat16, enabled=model.autocast_dtype is not None):
            parts.append(head(pooled(encoder(images).tokens, pool)).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, head[-1].out_features)


def _load_progress(path: Path | None, key: str, notes: list[str]) -> dict[str, Any] | None:
    """Saved progress for the same settings, or None (a note says why other progress is set aside)."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file must not stop the evaluation: start afresh
        notes.append(f"{path}: unreadable ({type(exc).__name__}), started afresh")
        log.warning("fine_tune: %s", notes[-1])
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        notes.append(f"{path}: saved for another checkpoint, overrides or parameters; started afresh")
        log.warning("fine_tune: %s", notes[-1])
        return None
    return state


def fine_tune(
    model: EvalModel,
    num_classes: int,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    layer_decay: float = 0.75,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    warmup_epochs: float = 1.0,
    augment: bool = True,
    pool: str = "mean",
    head_init: str = "probe",
    labels_per_class: int | None = None,
    eval_batch_size: int = 256,
    seed: int = 0,
    resume: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FineTuneResult:
    """Fine-tune ``model.encoder`` (in place) with a linear head; score the test split after every epoch.

    Args:
        model: the encoder copy, images and transforms ``hjepa evaluate`` hands over.
        num_classes: ``C``.
        epochs ... resume: see :class:`~hjepa_kit.plugins.fine_tune.FineTuneParams`.
        on_epoch: called with each epoch's record after its progress is saved.

    Raises:
        UserError: unlabelled images, or fewer train images of a class than ``labels_per_class``.
    """
    train, device = model.train, torch.device(model.device)
    if train.labels is None or model.test.labels is None:
        raise UserError("evaluator fine_tune: needs labelled train and test images")
    rows = _labelled_rows(train, num_classes, labels_per_class, seed)
    encoder = model.encoder
    dim = int(encoder.embed_dim)
    generator = torch.Generator().manual_seed(_mix(seed, 0))
    # Each pooled dimension standardised over the batch (MAE's linear-probe head: BatchNorm without affine), then the classifier.
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    with torch.no_grad():
        head[1].weight.copy_(torch.randn(num_classes, dim, generator=generator) * 2e-5)
        head[1].bias.zero_()
    head.to(device)
    groups, depth = param_groups(encoder, head, layer_decay, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    notes: list[str] = [] if depth else ["no blocks.<i> parameters found: one learning rate for the whole encoder"]
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, layer_decay=layer_decay, weight_decay=weight_decay,
                    label_smoothing=label_smoothing, warmup_epochs=warmup_epochs, augment=augment, pool=pool, head_init=head_init,
                    labels_per_class=labels_per_class, seed=seed)  # fmt: skip
    key = json.dumps({"fingerprint": model.fingerprint, "settings": settings, "classes": num_classes,
                      "train": len(train), "test": len(model.test)}, sort_keys=True)  # fmt: skip
    path = model.state_dir / PROGRESS_FILE if model.state_dir is not None else None
    state = _load_progress(path, key, notes) if resume else None
    history: list[dict[str, float]] = []
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        notes.append(f"resumed after epoch {len(history)} of {epochs} from {path}")
        log.info("fine_tune: %s", notes[-1])
    resumed_from = len(history)
    grid = getattr(encoder, "grid_size", (1, 1))
    prod_grid = int(grid[0]) * int(grid[1])
    if not history and head_init == "probe":
        with _threads_for(batch_size * prod_grid * dim):
            _probe_head(encoder, head, model, rows, eval_batch_size, pool, augment, seed)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total = epochs * steps_per_epoch
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    logits = None
    # A small model steps in hundreds of tiny operations: one thread for it, as the linear probe does.
    with _threads_for(batch_size * prod_grid * dim):
        for epoch in range(len(history), epochs):
            started = time.perf_counter()
            step = (epoch * steps_per_epoch, total, warmup)
            loss_sum, correct, seen, factor = _train_epoch(model, head, optimizer, rows, epoch, step, batch_size, lr, label_smoothing,
                                                     augment, pool, seed)  # fmt: skip
            logits = _test_logits(encoder, head, model, eval_batch_size, pool)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(1, seen),
                "train_top1": correct / max(1, seen),
                "test_top1": topk_accuracy(logits, model.test.labels, (1,))[1],
                "lr": lr * factor,
                "seconds": time.perf_counter() - started,
            }
            history.append(record)
            log.info("fine_tune epoch %d/%d: train loss %.4f, train top-1 %.4f, test top-1 %.4f (%.1fs)", record["epoch"], epochs,
                     record["train_loss"], record["train_top1"], record["test_top1"], record["seconds"])  # fmt: skip
            if path is not None:
                progress = {"key": key, "encoder": encoder.state_dict(), "head": head.state_dict(),
                            "optimizer": optimizer.state_dict(), "history": history}  # fmt: skip
                write_atomic(path, lambda handle: torch.save(progress, handle), what="fine-tuning progress")
            if on_epoch is not None:
                on_epoch(record)
        if logits is None:  # every epoch was read from saved progress: score the saved weights
            logits = _test_logits(encoder, head, model, eval_batch_size, pool)
    targets = model.test.labels.to(torch.int64)
    accuracy = topk_accuracy(logits, targets, (1, 5))
    return FineTuneResult(
        top1=accuracy[1], top5=accuracy[5], history=history, confusion=confusion_matrix(logits.argmax(1), targets, num_classes),
        labels_per_class=len(rows) / num_classes, resumed_from=resumed_from, notes=tuple(notes),
    )  # fmt: skip
