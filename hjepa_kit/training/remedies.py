"""What a stopped run tells its user to try next: commands that resume it with one change each.

:class:`SkippedSteps` answers the optimizer steps skipped for a non-finite loss or gradient norm: a
warning for each new one, a stop with these commands past ``training.max_skipped_steps``.

The core's own remedies are a lower learning rate and a slower EMA. A loss component may add its
own as parameter overrides through an optional ``collapse_remedies()`` method (the built-in
prediction losses suggest VICReg on the tokens); the core prefixes them with ``loss.params.`` and
names no plugin parameter itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TrainingStopped

__all__ = ["fallback_commands", "loss_remedies", "non_finite_message", "describe_skipped", "collapse_message", "SkippedSteps"]

log = logging.getLogger("hjepa_kit")


def loss_remedies(loss: Any) -> list[dict[str, Any]]:
    """The loss component's suggested parameter changes (``[]`` when it declares none or fails to)."""
    declare = getattr(loss, "collapse_remedies", None)
    if not callable(declare):
        return []
    try:
        remedies = list(declare())
    except Exception:  # a remedy must never hide the error it accompanies
        return []
    return [dict(r) for r in remedies if isinstance(r, Mapping) and r]


def _value(value: Any) -> str:
    """``value`` as a ``--set`` takes it (YAML), without quotes a shell would need."""
    if isinstance(value, str) and value.replace("_", "").isalnum():
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value).replace(" ", "")


def fallback_commands(config_file: Path, checkpoint: Path | None, lr: float,
                      loss_overrides: Sequence[Mapping[str, Any]] = ()) -> str:
    """One ``hjepa train`` line per remedy, each resuming ``checkpoint`` from the run's resolved ``config_file``."""
    resume = f" --resume {checkpoint}" if checkpoint else ""
    base = f"hjepa train --config {config_file}"
    changes = [[f"training.lr={lr / 5:.2g}"], ["training.ema_momentum=[0.999,1.0]"]]
    changes += [[f"loss.params.{key}={_value(value)}" for key, value in remedy.items()] for remedy in loss_overrides]
    return "\n".join(f"  {base} " + " ".join(f"--set {c}" for c in change) + resume for change in changes)


def non_finite_message(bad: Any, *, steps_per_epoch: int, last: Path | None, commands: str) -> str:
    """Why a run stopped on a NaN or infinite loss or gradient norm, what was kept, and what to try.

    ``bad`` is the step's :class:`~hjepa_kit.training.step.NonFinite` record.
    """
    epoch = (bad.step - 1) // max(steps_per_epoch, 1) + 1
    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in bad.terms.items())
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    count = f" ({bad.skipped} non-finite steps skipped; training.max_skipped_steps allows fewer)" if bad.skipped > 1 else ""
    return (f"training stopped at epoch {epoch}, step {bad.step}: the {bad.what} is {bad.value}"
            + (f" ({detail})" if detail else "") + count + f"; {kept}. Try one of:\n" + commands)


def describe_skipped(bad: Any) -> str:
    """One line on the steps skipped so far for a non-finite loss or gradient norm."""
    return (f"{bad.skipped} optimizer step(s) skipped so far for a non-finite loss or gradient norm "
            f"(the first: step {bad.step}, the {bad.what} was {bad.value})")


def collapse_message(reason: str, *, epoch: int, step: int, last: Path | None, commands: str) -> str:
    """What collapsed, the last healthy checkpoint (kept), and what to try."""
    kept = (f"the last healthy checkpoint is {last} (it is kept: latest.pth is not overwritten)" if last
            else "no healthy checkpoint was written (the collapse came in the first epoch)")
    return f"representation collapse at epoch {epoch}, step {step}: {reason}; {kept}. Try one of:\n" + commands


class SkippedSteps:
    """The run's answer to optimizer steps skipped for a non-finite loss or gradient norm.

    Args:
        limit: ``training.max_skipped_steps``: more skipped steps than this stop the run.
        steps_per_epoch: optimizer steps per epoch (the stop names the epoch).
    """

    def __init__(self, limit: int, steps_per_epoch: int) -> None:
        self.limit, self.steps_per_epoch, self.seen = limit, steps_per_epoch, 0

    def answer(self, bad: Any, *, last: Callable[[], Path | None], commands: Callable[[Path | None], str]) -> dict[str, float]:
        """``{"skipped_steps": n}`` once any step was skipped (``{}`` before), warning once for each new one.

        Args:
            bad: the step's :class:`~hjepa_kit.training.step.NonFinite` record.
            last: the last good checkpoint (asked for only when the run stops).
            commands: the fallback commands resuming from a checkpoint.

        Raises:
            TrainingStopped: more than ``limit`` steps were skipped; the message names the last
                good checkpoint and the commands.
        """
        if bad.skipped > self.limit:
            checkpoint = last()
            raise TrainingStopped(non_finite_message(bad, steps_per_epoch=self.steps_per_epoch, last=checkpoint,
                                                     commands=commands(checkpoint)))
        if not bad.skipped:
            return {}
        if bad.skipped > self.seen:
            log.warning("%s; training.max_skipped_steps=%d", describe_skipped(bad), self.limit)
            self.seen = bad.skipped
        return {"skipped_steps": float(bad.skipped)}
