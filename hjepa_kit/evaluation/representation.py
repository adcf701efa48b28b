"""Choosing a representation by name: the one rule of evaluators, ``hjepa evaluate``, ``export`` and ``embed``."""

from __future__ import annotations

from collections.abc import Callable, Collection

from ..errors import UserError

__all__ = ["choose_representation"]

_EVALUATED = "the run's evaluated representation (evaluation.representation)"


def choose_representation(
    available: Collection[str], name: str | None = None, *, default: str | None = None, option: str = "representation",
    error: Callable[[str], UserError] = UserError,
) -> str:
    """The representation to use: ``name``, or ``default`` when ``name`` is ``None``; it must be among ``available``.

    An evaluator passes its ``representation`` parameter and the run's default (its second
    argument); ``hjepa export`` and ``embed`` pass ``--representation`` and the checkpoint's
    ``evaluation.representation``.

    Args:
        available: the representations the model produced (``encoder``, ``level0`` ...); a
            mapping of them works too.
        name: the representation asked for, or ``None`` for ``default``.
        default: the run's evaluated representation.
        option: what named it, for messages: ``--representation``, ``evaluation.representation``,
            ``the knn_faiss parameter representation``.
        error: the :class:`~hjepa_kit.errors.UserError` class raised.

    Raises:
        UserError: (``error``) the representation is not among ``available``; the message lists them.
    """
    names = ", ".join(available) or "(none)"
    if name is None:
        if default is None:
            raise error(f"{option}: no representation named and no default; this model has {names}")
        if default not in available:
            raise error(f"{option} defaults to {_EVALUATED} {default!r}, which this model does not have; "
                        f"pass {option} with one of {names}")
        return default
    if name not in available:
        raise error(f"{option} {name!r}: unknown representation; this model has {names}")
    return name
