"""Contract-check failures that name the component, its plugin and what is wrong."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..registry import Component


class _Check:
    """Failure messages that name the component and its plugin."""

    def __init__(self, kind: str, name: str, component: Component) -> None:
        self.kind = kind
        self.label = f"{kind} '{name}' from plugin {component.origin}"

    def fail(self, problem: str) -> None:
        raise AssertionError(f"{self.label} does not meet the {self.kind} contract: {problem}")

    def that(self, condition: bool, problem: str) -> None:
        if not condition:
            self.fail(problem)

    def call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{self.label}: {what} raised {type(exc).__name__}: {exc}") from exc


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
