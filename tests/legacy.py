"""Shrink a checkpoint to its structure and fill it again (the legacy-checkpoint test's fixture)."""

from __future__ import annotations

from typing import Any

import torch

KEEP_NUMEL = 64  # float tensors up to this size are kept as they are (scalars, step counters)


def shrink(state: Any) -> Any:
    """``state`` with every float tensor above ``KEEP_NUMEL`` elements replaced by a fill marker."""
    counter = iter(range(10**9))

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel() > KEEP_NUMEL:
                return {"__fill__": next(counter), "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                        "positive": key == "exp_avg_sq"}
            return value
        if isinstance(value, dict):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v, key) for v in value)
        return value

    return walk(state)


def fill(state: Any) -> Any:
    """The inverse of :func:`shrink`: each marker becomes ``0.02 * N(0, 1)`` values seeded by its index (absolute for second moments)."""
    if isinstance(state, dict) and "__fill__" in state:
        generator = torch.Generator().manual_seed(int(state["__fill__"]))
        values = 0.02 * torch.randn(state["shape"], generator=generator)
        if state.get("positive"):
            values = values.abs()  # AdamW's second moments
        return values.to(getattr(torch, state["dtype"]))
    if isinstance(state, dict):
        return {k: fill(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(fill(v) for v in state)
    return state
