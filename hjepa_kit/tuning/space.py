"""The search space of ``hjepa tune``: a YAML file read, checked against the run's configuration, and sampled.

The file has one required section and two optional ones::

    params:                                   # configuration key (dotted, as for --set) -> distribution
      training.lr: {type: float, low: 5.0e-5, high: 1.0e-3, log: true}
      training.ema_momentum.0: {type: float, low: 0.95, high: 0.999}
      model.predictor.params.depth: {type: int, low: 1, high: 3}
      loss.params.regularise: [tokens, pooled]          # a list: categorical choices
    sampler: {name: tpe, seed: 0, startup_trials: 10}   # tpe (default) or random
    pruner: {name: median, startup_trials: 5, warmup_epochs: 1}   # median, hyperband, threshold or none

It is checked like a configuration, before any trial trains: an unknown section or field gets a
did-you-mean, every key must exist in the run's resolved configuration (a did-you-mean over all its
keys otherwise), and each end of a range and each choice is put into the configuration and validated
as ``--set`` would be, so a bad range or a value of the wrong type is found with the file and key
named. Each sampled configuration is validated again before its trial trains (:mod:`.trial`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml

from ..errors import ConfigError, UserError
from ..overrides import read_yaml
from ..params import param, structure, suggest

__all__ = ["ParamSpec", "SamplerSpec", "PrunerSpec", "SearchSpace", "load_space", "config_keys", "yaml_value"]

_SCALAR = (type(None), bool, int, float, str)


@attrs.frozen(kw_only=True)
class ParamSpec:
    """One searched configuration key: a float or int range, or categorical choices."""

    type: Literal["float", "int", "categorical"] | None = param(
        None, help="float, int or categorical; may be left out for categorical `choices`.",
        choices=("float", "int", "categorical", None))
    low: int | float | None = param(None, help="Lower end of the range (included).")
    high: int | float | None = param(None, help="Upper end of the range (included).")
    log: bool = param(False, help="Sample the range on a log scale (low must be > 0).")
    step: int | float | None = param(None, help="Sample only low, low + step, ... (not with log).", gt=0)
    choices: list[Any] | None = param(None, help="The values of a categorical key (scalars, or lists and mappings).")

    def __attrs_post_init__(self) -> None:
        kind = self.kind
        if kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical key needs a non-empty list of choices")
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if extra:
                raise ValueError(f"a categorical key takes only choices, not {', '.join(extra)}")
            texts = [yaml_value(c) for c in self.choices]
            if len(set(texts)) < len(texts):
                raise ValueError(f"the choices repeat a value: {', '.join(texts)}")
            return
        if self.choices is not None:
            raise ValueError(f"a {kind} range takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"a {kind} range needs both low and high")
        if kind == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError(f"an int range needs whole numbers, got low={self.low!r} high={self.high!r}"
                             + (f" step={self.step!r}" if self.step is not None else ""))
        if not all(math.isfinite(v) for v in (self.low, self.high)):
            raise ValueError(f"low and high must be finite, got {self.low!r} and {self.high!r}")
        if self.low >= self.high:
            raise ValueError(f"low {self.low!r} must be below high {self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low!r}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")

    @property
    def kind(self) -> str:
        """``float``, ``int`` or ``categorical``."""
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        raise ValueError("type is missing: float, int or categorical (a list of choices may be given alone)")

    def corners(self) -> list[Any]:
        """The values a sampled configuration can take at the extremes: both ends, or every choice."""
        if self.kind == "categorical":
            return list(self.choices or [])
        cast = float if self.kind == "float" else int  # 1.0, not 1: a float range on an int key is a type error
        return [cast(self.low), cast(self.high)]

    def describe(self) -> str:
        """One line for the report: ``float in [1e-05, 0.001], log``."""
        if self.kind == "categorical":
            return "one of " + ", ".join(yaml_value(c) for c in self.choices or [])
        extra = ", log" if self.log else f", step {self.step:g}" if self.step is not None else ""
        return f"{self.kind} in [{self.low:g}, {self.high:g}]{extra}"


@attrs.frozen(kw_only=True)
class SamplerSpec:
    """How trials choose their values (Optuna's samplers)."""

    name: Literal["tpe", "random"] = param("tpe", help="tpe (Bergstra et al. 2011, Optuna's default) or random.",
                                          choices=("tpe", "random"))
    seed: int | None = param(None, help="Seed of the sampler; null: the configuration's seed.")
    startup_trials: int = param(10, help="TPE: trials sampled at random before the model of good values is used.", ge=0)


@attrs.frozen(kw_only=True)
class PrunerSpec:
    """Which trials stop early, judged at each epoch end on the objective."""

    name: Literal["median", "hyperband", "threshold", "none"] = param(
        "median", help="median (stop below the median of earlier trials at the same epoch), hyperband, "
        "threshold (stop outside lower..upper) or none.", choices=("median", "hyperband", "threshold", "none"))
    startup_trials: int = param(5, help="median: trials that run whole before any is pruned.", ge=0)
    warmup_epochs: int = param(1, help="median, threshold: epochs before pruning is considered.", ge=0)
    min_epochs: int = param(1, help="hyperband: the fewest epochs a trial gets.", ge=1)
    max_epochs: int | None = param(None, help="hyperband: the most epochs; null: the configuration's training.epochs.", ge=1)
    reduction_factor: int = param(3, help="hyperband: 1/reduction_factor of the trials go on at each rung.", ge=2)
    lower: float | None = param(None, help="threshold: prune below this value.")
    upper: float | None = param(None, help="threshold: prune above this value.")

    def __attrs_post_init__(self) -> None:
        if self.name == "threshold" and self.lower is None and self.upper is None:
            raise ValueError("the threshold pruner needs lower, upper or both")


@attrs.frozen(kw_only=True)
class _SpaceFile:
    params: dict[str, Any] = param(help="Configuration key -> distribution.")
    sampler: SamplerSpec = param(attrs.Factory(SamplerSpec), help="The sampler.")
    pruner: PrunerSpec = param(attrs.Factory(PrunerSpec), help="The pruner.")


@attrs.frozen
class SearchSpace:
    """A checked search space.

    Attributes:
        params: configuration key -> :class:`ParamSpec`, in the file's order.
        sampler, pruner: the file's ``sampler`` and ``pruner`` sections (defaults where absent).
        source: the file, for messages.
    """

    params: dict[str, ParamSpec]
    sampler: SamplerSpec
    pruner: PrunerSpec
    source: str

    def fingerprint(self) -> str:
        """The space as canonical JSON (stored with the study, compared when it is resumed)."""
        return json.dumps({k: attrs.asdict(v) for k, v in self.params.items()}, sort_keys=True)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial for one value per key (choices that are lists or mappings travel as YAML text)."""
        values = {}
        for key, spec in self.params.items():
            if spec.kind == "float":
                values[key] = trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log, step=spec.step)
            elif spec.kind == "int":
                values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
            else:
                encoded = [c if isinstance(c, _SCALAR) else yaml_value(c) for c in spec.choices or []]
                picked = trial.suggest_categorical(key, encoded)
                values[key] = spec.choices[encoded.index(picked)] if spec.choices else picked
        return values

    def check(self, config_source: Any, overrides: Iterable[str], registry: Any, name: str) -> None:
        """Check every key against the run's resolved configuration and every corner value as ``--set`` would.

        Raises:
            ConfigError: naming this file, each bad key, the value and the configuration's complaint.
        """
        overrides = list(overrides)
        bases = {None: config_keys(config_source, overrides, registry, name)}
        for key, spec in self.params.items():  # keys that exist only once a searched component is chosen
            if key.endswith(".name") and spec.kind == "categorical":
                for choice in spec.choices or []:
                    try:
                        bases[(key, yaml_value(choice))] = config_keys(config_source, overrides + [f"{key}={yaml_value(choice)}"], registry, name)
                    except UserError:
                        pass  # the corner check below reports the bad choice
        problems = []
        everything = sorted(set().union(*bases.values()))
        for key, spec in self.params.items():
            homes = [extra for extra, keys in bases.items() if key in keys]
            if not homes:
                hint = suggest(key, everything) or suggest(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in everything])
                problems.append(f"params.{key}: not a key of the configuration{hint}; search keys are dotted paths as for "
                                "--set (training.lr, loss.params.variance_weight, training.ema_momentum.0)")
                continue
            extra = [] if None in homes else [f"{homes[0][0]}={homes[0][1]}"]
            for corner in spec.corners():
                setting = f"{key}={yaml_value(corner)}"
                try:
                    config = _load(config_source, overrides + extra + [setting])
                    registry.resolve(config, name)
                except UserError as exc:
                    why = "; ".join(getattr(exc, "problems", [str(exc)]))
                    problems.append(f"params.{key}: the value {yaml_value(corner)} is not valid there: {why}")
                    break
        if problems:
            raise ConfigError(problems, self.source)

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """``KEY=VALUE`` strings of sampled values (for :func:`hjepa_kit.config.load_config`)."""
        return [f"{key}={yaml_value(value)}" for key, value in values.items()]


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML that reads back as the same value (``1.0e-05``, ``[0.99, 1.0]``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def _load(source: Any, overrides: list[str]) -> Any:
    from ..config import load_config

    return load_config(source, overrides)


def config_keys(source: Any, overrides: list[str], registry: Any, name: str) -> set[str]:
    """Every dotted key of the resolved configuration (component parameters filled in; list items by index)."""
    from ..config import dump_config

    config = _load(source, overrides)
    resolved = registry.resolve(config, name)
    data = yaml.safe_load(dump_config(config, {path: p for path, (_, p) in resolved.items()}))
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if prefix:
            keys.add(prefix)
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{prefix}.{index}")

    walk(data, "")
    return keys


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and check a search-space file (its own form; :meth:`SearchSpace.check` checks it against a run).

    Raises:
        ConfigError: naming the file, each bad key, the value and what is allowed.
    """
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError("expected a mapping with a `params` section (configuration key -> distribution), "
                          f"got {type(data).__name__}", source)
    problems: list[str] = []
    top = structure(_SpaceFile, data, "", problems)
    if top is None:
        raise ConfigError(problems, source)
    if not top.params:
        raise ConfigError("params: no key to search; give at least one, e.g. training.lr: {type: float, low: 1.0e-4, "
                          "high: 1.0e-3, log: true}", source)
    params: dict[str, ParamSpec] = {}
    for key, raw in top.params.items():
        where = f"params.{key}"
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            problems.append(f"{where}: a key must be a dotted configuration path such as training.lr")
            continue
        if isinstance(raw, list):
            raw = {"type": "categorical", "choices": raw}
        elif not isinstance(raw, Mapping):
            problems.append(f"{where}: expected a distribution ({{type: float, low: L, high: H}}, {{type: int, ...}}) "
                            f"or a list of choices, got {raw!r}")
            continue
        spec = structure(ParamSpec, raw, where, problems)
        if spec is not None:
            params[key] = spec
    if problems:
        raise ConfigError(problems, source)
    return SearchSpace(params=params, sampler=top.sampler, pruner=top.pruner, source=source)


def space_from(space: SearchSpace | str | os.PathLike[str]) -> SearchSpace:
    """A :class:`SearchSpace` as given, or read from its file."""
    if isinstance(space, SearchSpace):
        return space
    if not Path(space).is_file():
        raise ConfigError(f"the search-space file does not exist (current folder: {os.getcwd()})", str(space))
    return load_space(space)
