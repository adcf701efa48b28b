"""Which evaluators an evaluation runs: ``--eval-type`` / ``eval_types``.

Imports no torch, so the command line can name the choices in its help without loading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..config import ComponentSpec
from ..errors import UserError

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["EVAL_TYPE_EVALUATORS", "EVAL_TYPES", "select_evaluators"]

#: ``--eval-type`` shorthands -> evaluator component names.
EVAL_TYPE_EVALUATORS = {
    "knn": "knn_faiss",
    "linear_probe": "linear_probe",
    "feature_quality": "feature_quality",
    "hierarchy": "hierarchy",
    "few_shot": "few_shot",
    "attentive_probe": "attentive_probe",
    "fine_tune": "fine_tune",
}

#: The ``--eval-type`` choices besides any registered evaluator name: ``all`` and the shorthands.
EVAL_TYPES: tuple[str, ...] = ("all", *EVAL_TYPE_EVALUATORS)


def select_evaluators(eval_types: Sequence[str], configured: Sequence[ComponentSpec], registry: Registry) -> list[ComponentSpec]:
    """The evaluator specs to run, in the order asked for, each once.

    ``all`` is every evaluator of the configuration; a shorthand or a registered evaluator name
    uses its configured parameters when the configuration lists it, its defaults otherwise.

    Raises:
        UserError: an unknown name (the message lists the allowed ones).
    """
    chosen: list[ComponentSpec] = []
    for item in eval_types:
        if item == "all":
            chosen += [s for s in configured if s not in chosen]
            continue
        name = EVAL_TYPE_EVALUATORS.get(item, item)
        if name not in registry.components["evaluator"]:
            known = registry.names("evaluator")  # one sorted list, each name once: shorthands and component names
            shorthands = [short for short, target in EVAL_TYPE_EVALUATORS.items() if target in known]
            allowed = ", ".join(sorted({"all", *shorthands, *known}))
            raise UserError(f"--eval-type {item!r}: unknown evaluation; allowed: {allowed}")
        spec = next((s for s in configured if s.name == name), ComponentSpec(name=name))
        if spec not in chosen:
            chosen.append(spec)
    return chosen
