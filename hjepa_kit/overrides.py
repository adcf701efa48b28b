"""YAML reading that refuses duplicate keys, and ``--set KEY=VALUE`` overrides of a configuration tree.

Errors name the file, the key path, the value given and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["read_yaml", "apply_overrides", "split_path"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file safely; errors name the file, line and column."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found (current folder: {os.getcwd()})", str(file)) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a YAML file", str(file)) from None
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at line {line}, column {column}; "
                          "save the file as UTF-8", str(file)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", str(file)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no code from data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if "'\\t'" in problem:
            problem += " (a tab: YAML indents with spaces only)"
        raise ConfigError(f"YAML syntax error at {where}{problem}", str(file)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", str(file)) from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. training.epochs=5", "")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key must be a dotted path such as model.encoder.params.patch_size", "")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})", "") from None
    return key.split("."), value


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides (dotted key path, YAML-typed value) to plain config data.

    A list element is addressed by its index (``evaluation.evaluators.0.params.k=[10,20]``). A
    section the data does not have is copied from ``defaults`` first, so an override refines the
    default rather than replacing it. The strict structuring that follows rejects unknown keys.
    """
    result: dict[str, Any] = _deepcopy(dict(data))
    for text in overrides:
        parts, value = _parse_override(text)
        node: Any = result
        default: Any = defaults
        copied = False  # whether ``node`` was copied from the defaults by this override
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                index = _list_index(part, node, here, text)
                node = node[index]
                default = None
                continue
            default = default.get(part) if isinstance(default, Mapping) else None
            child = node.get(part)
            if child is None:
                child = _deepcopy(default) if isinstance(default, (Mapping, list)) else {}
                node[part] = child
                copied = isinstance(default, Mapping)
            elif isinstance(child, str):
                child = {"name": child}  # a shorthand spec being refined: encoder=vit -> encoder.params.x
                node[part] = child
            elif not isinstance(child, (dict, list)):
                raise ConfigError(f"--set {text!r}: {here} is a value ({child!r}), not a section", "")
            node = child
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, ".".join(parts), text)] = value
        else:
            if last == "name" and copied and "params" in node and node.get("name") != value:
                # Another component than the default: the default's parameters do not apply to it.
                node["params"] = {}
            node[last] = value
    return result


def _list_index(part: str, node: list, here: str, text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {text!r}: {here} needs a list index 0..{len(node) - 1}", "")
    return int(part)


def _deepcopy(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _deepcopy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_deepcopy(v) for v in node]
    return node


def split_path(path: str) -> list[Any]:
    parts: list[Any] = []
    for piece in path.split("."):
        if "[" in piece:
            key, _, index = piece.partition("[")
            parts += [key, int(index.rstrip("]"))]
        else:
            parts.append(piece)
    return parts
