"""Distributed data-parallel training under ``torchrun``: process group, ranks, agreement.

``torchrun --nproc_per_node=N -m hjepa_kit.cli train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; the trainer then joins a process group (gloo on CPU, NCCL on CUDA), wraps the
context encoder and predictor in ``DistributedDataParallel`` and lets rank 0 alone write logs,
TensorBoard and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs
import torch
import torch.distributed as dist

from ..errors import UserError

__all__ = [
    "DistInfo", "setup_distributed", "teardown_distributed", "wrap_ddp", "no_sync", "any_rank", "parameters_match",
    "rescale_position",
]

log = logging.getLogger("hjepa_kit")


@attrs.frozen
class DistInfo:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 writes the outputs).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        initialized_here: the trainer created the process group (and destroys it at the end).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


#: The process that started this one: under torchrun, the launcher.
_LAUNCHER = os.getppid()


def stop_with_the_launcher() -> None:
    """Under torchrun on Linux, have the kernel send this rank SIGTERM when the launcher dies.

    A launcher killed by SIGKILL cannot stop its ranks, which would train on unattended, holding
    the run folder's lock. With this they stop as on any SIGTERM: every rank after the same step,
    rank 0 writing ``interrupted.pth``. Best effort: nothing happens where ``prctl`` is missing.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != _LAUNCHER:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def setup_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns the info and this rank's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1 and not dist.is_initialized():
        return DistInfo(), device
    stop_with_the_launcher()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        created = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, initialized_here=created), device


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if the trainer created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: Any, device: torch.device) -> tuple[Any, Any]:
    """Wrap the model's context encoder and predictor in ``DistributedDataParallel``.

    DDP broadcasts rank 0's weights on construction; the EMA target encoder is broadcast here too,
    so that every rank starts from, and keeps, the same target encoder.

    Returns:
        (DDP context encoder, DDP predictor).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    for tensor in list(model.target_encoder.parameters()) + list(model.target_encoder.buffers()):
        dist.broadcast(tensor.data, src=0)
    return DDP(model.context_encoder, device_ids=ids), DDP(model.predictor, device_ids=ids)


def no_sync(wrapped: Sequence[Any], skip: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP: no gradient all-reduce on micro-batches that do not end an optimizer step.

    ``wrapped`` are the DDP modules of :func:`wrap_ddp` (None without DDP); the all-reduce is
    skipped while the returned context is open where ``skip`` is true.
    """
    if not skip or any(module is None for module in wrapped):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for module in wrapped:
        stack.enter_context(module.no_sync())
    return stack


def any_rank(*flags: bool, info: DistInfo, device: torch.device) -> tuple[bool, ...]:
    """Per flag, True on every rank when it is true on any rank; one all-reduce for all of them."""
    if not info.enabled:
        return tuple(bool(f) for f in flags)
    value = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in value.tolist())


def parameters_match(modules: list[torch.nn.Module], info: DistInfo, device: torch.device) -> tuple[bool, float]:
    """Whether every rank holds the same parameters (a float64 checksum per module, all-gathered).

    Returns:
        (identical, largest difference between ranks).
    """
    sums = torch.stack([
        torch.stack([p.detach().double().sum() for p in m.parameters()]).sum() if any(True for _ in m.parameters())
        else torch.zeros((), dtype=torch.float64)
        for m in modules
    ]).to(device)
    if not info.enabled:
        return True, 0.0
    gathered = [torch.zeros_like(sums) for _ in range(info.world_size)]
    dist.all_gather(gathered, sums)
    stacked = torch.stack(gathered)
    spread = float((stacked.max(dim=0).values - stacked.min(dim=0).values).abs().max())
    return spread == 0.0, spread


def rescale_position(step: int, batch_in_epoch: int, saved_world: int, world: int, accumulation: int = 1) -> tuple[int, int]:
    """A checkpoint's position written by ``saved_world`` processes, for a run of ``world`` processes.

    Steps and micro-batches count batches of all processes: rescaling them keeps the images seen,
    and so the position in the schedules and in the epoch. The rule where they do not divide
    evenly: the step is rounded down, and the micro-batch in the epoch is rounded down to an
    optimizer-step boundary of the new run (a multiple of ``accumulation``), so that every resumed
    step accumulates whole; the images between the two positions are trained on again, and the
    warning says how many.

    Returns:
        (optimizer step, micro-batch in the epoch).
    """
    if saved_world == world and batch_in_epoch % accumulation == 0:
        return step, batch_in_epoch
    if saved_world != world:
        step = step * saved_world // world
        log.info("resuming a %d-process checkpoint with %d processes: step rescaled to %d", saved_world, world, step)
    if batch_in_epoch:
        seen = batch_in_epoch * saved_world  # micro-batches of all processes
        rescaled = seen // world
        boundary = rescaled // accumulation * accumulation
        if boundary * world != seen:
            log.warning(
                "resuming mid-epoch at micro-batch %d of %d process(es) with %d process(es) and accumulation %d: "
                "the epoch resumes at micro-batch %d, an optimizer-step boundary; %d micro-batch(es) of %d process(es) "
                "are trained on again", batch_in_epoch, saved_world, world, accumulation, boundary,
                (seen - boundary * world + world - 1) // world, world,
            )
        batch_in_epoch = boundary
    return step, batch_in_epoch
    step = step * saved_world // world
    log.info("resuming a %d-process checkpoint with %d processes: step rescaled to %d", saved_world, world, step)
    if batch_in_epoch:
        seen = batch_in_epoch * saved_world
        batch_in_epoch = seen // world
        if seen % world:
            log.warning("resuming mid-epoch with %d processes instead of %d: the epoch position is rounded", world, saved_world)
    return step, batch_in_epoch
