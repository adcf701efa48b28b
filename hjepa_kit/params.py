"""Typed, documented parameter classes and a strict structurer for them.

Every configuration section and every plugin's parameters are frozen, keyword-only attrs classes
whose fields are declared with :func:`param`. The help text, the allowed range and the choices live
in the field's metadata, so one declaration drives validation, error messages, ``hjepa plugins
--params`` and the generated documentation.

:func:`structure` turns plain YAML data into such a class. It is strict where YAML loaders and
cattrs are lenient: ``3.7`` is not an int, ``"false"`` is not a bool, unknown keys are errors. The
one leniency is that a string such as ``"1e-3"`` is accepted where a float is expected, because
PyYAML reads exponent notation without a dot as a string. All problems of one document are
collected and reported together, each with its key path (``model.encoder.params.patch_size``).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import attrs

__all__ = [
    "param",
    "structure",
    "unstructure",
    "describe",
    "ParamInfo",
    "type_name",
    "suggest",
]

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def param(
    default: Any = attrs.NOTHING,
    *,
    help: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    factory: Any = None,
) -> Any:
    """Declare a parameter field: default, help text and allowed values in one place.

    Args:
        default: the default value; omit for a required parameter.
        help: one sentence shown by ``hjepa plugins --params`` and in the docs.
        ge: lower bound, inclusive (applied to every element of a tuple or list).
        gt: lower bound, exclusive.
        le: upper bound, inclusive.
        lt: upper bound, exclusive.
        choices: the allowed values.
        factory: a callable making the default (for mutable defaults).
    """
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}

    def _validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        problem = _check_constraints(attribute, value)
        if problem:
            raise ValueError(f"{attribute.name}: {problem}")

    kwargs: dict[str, Any] = {"metadata": metadata, "validator": _validate}
    if factory is not None:
        kwargs["factory"] = factory
    else:
        kwargs["default"] = default
    return attrs.field(**kwargs)


def _constraint_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{op} {meta[key]}")
    if meta.get("choices") is not None:
        parts.append("one of " + ", ".join(repr(c) for c in meta["choices"]))
    return ", ".join(parts)


def _check_constraints(attribute: attrs.Attribute, value: Any) -> str | None:
    meta = attribute.metadata or {}
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            return f"must be {_constraint_text({'choices': meta['choices']})}, got {v!r}"
        if not isinstance(v, (int, float)):
            continue
        bad = (
            (meta.get("ge") is not None and v < meta["ge"])
            or (meta.get("gt") is not None and v <= meta["gt"])
            or (meta.get("le") is not None and v > meta["le"])
            or (meta.get("lt") is not None and v >= meta["lt"])
        )
        if bad:
            return f"must be {_constraint_text(meta)}, got {v!r}"
    return None


def suggest(word: str, options: typing.Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(word, list(options), n=2, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    """A short, readable name for a type annotation (``int``, ``tuple[float, float]``, ``str | None``)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (tuple, list, dict):
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if tp is Any:
        return "any"
    if attrs.has(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def structure(cls: type, data: Any, path: str = "", errors: list[str] | None = None) -> Any:
    """Build ``cls`` (an attrs class) from plain data, strictly.

    Args:
        cls: the attrs class to build.
        data: a mapping (``None`` means all defaults).
        path: the key path of ``data`` in its document, used in messages.
        errors: a list to collect problems into. When omitted, problems raise ``ValueError``
            with one line per problem.

    Returns:
        The instance, or ``None`` when problems were collected into ``errors``.
    """
    own = errors is None
    problems: list[str] = [] if own else errors  # type: ignore[assignment]
    before = len(problems)
    value = _structure_attrs(cls, data, path, problems)
    if own and len(problems) > before:
        raise ValueError("\n".join(problems))
    return value if len(problems) == before else None


def _where(path: str) -> str:
    return path if path else "(top level)"


def _structure_attrs(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    if data is None:
        data = {}
    if attrs.has(cls) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        problems.append(f"{_where(path)}: expected a mapping of keys, got {_describe_value(data)}")
        return None
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    hints = _hints(cls)
    start = len(problems)
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields) or "(none)"
            problems.append(
                f"{_join(path, str(key))}: unknown key{suggest(str(key), fields)}; allowed keys: {allowed}"
            )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key_path = _join(path, name)
        if name not in data:
            if field.default is attrs.NOTHING:
                problems.append(f"{key_path}: required key is missing ({field.metadata.get('help', '')})")
            continue
        n = len(problems)
        value = _convert(hints[name], data[name], key_path, problems)
        if len(problems) > n:
            continue
        problem = _check_constraints(field, value)
        if problem:
            problems.append(f"{key_path}: {problem}")
            continue
        kwargs[name] = value
    if len(problems) > start:
        return None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.append(f"{_where(path)}: {exc}")
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad(expected: str) -> None:
        problems.append(f"{path}: expected {expected}, got {_describe_value(value)}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            trial: list[str] = []
            result = _convert(option, value, path, trial)
            if not trial:
                return result
        if len(options) == 1:
            return _convert(options[0], value, path, problems)
        bad(type_name(tp))
        return None
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        bad("one of " + ", ".join(repr(a) for a in args))
        return None
    if attrs.has(tp):
        return _structure_attrs(tp, value, path, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        bad("true or false")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        bad("an integer")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        bad("a number")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        bad("a string")
        return None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            bad(f"a list ({type_name(tp)})")
            return None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                bad(f"a list of {len(args)} items ({type_name(tp)})")
                return None
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        items = [_convert(t, v, f"{path}[{i}]", problems) for i, (t, v) in enumerate(zip(item_types, value))]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            bad("a mapping")
            return None
        return dict(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    bad(type_name(tp))
    return None


def unstructure(obj: Any) -> Any:
    """Turn an attrs instance (recursively) into plain YAML-safe data: dicts, lists, scalars."""
    if attrs.has(type(obj)):
        return {f.name: unstructure(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
    if isinstance(obj, Mapping):
        return {str(k): unstructure(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    return obj


@attrs.frozen
class ParamInfo:
    """One row of a parameter table."""

    name: str
    type: str
    default: Any
    required: bool
    help: str
    allowed: str


def describe(cls: type) -> list[ParamInfo]:
    """The parameter table of an attrs parameter class, read from its fields."""
    hints = _hints(cls)
    rows = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        default: Any = field.default
        required = default is attrs.NOTHING
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[union-attr]
        rows.append(
            ParamInfo(
                name=field.name,
                type=type_name(hints[field.name]),
                default=None if required else unstructure(default),
                required=required,
                help=(field.metadata or {}).get("help", ""),
                allowed=_constraint_text(field.metadata or {}),
            )
        )
    return rows
