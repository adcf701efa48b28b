"""``hjepa tune``: an Optuna study over a run's configuration, resumable, pruned and parallel.

:func:`tune` checks the base configuration and the search space (:mod:`.space`), works out the
objective and its direction, opens or resumes the study (a study remembers its objective,
direction and space, and refuses to go on with others), runs the trials (:mod:`.workers`, one
process or ``--jobs``) and writes the report (:mod:`.report`).

``--trials N`` is the study's total: running the same command again tops the study up to N
finished trials, so a study killed mid-trial loses that trial only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from ..errors import UserError
from .space import SearchSpace, space_from
from .trial import ALIASES, resolve_auto
from .workers import StudySetup, count_trials, import_optuna, make_storage, run_jobs, say, work

__all__ = ["tune", "TuneResult"]


@attrs.frozen
class TuneResult:
    """What :func:`tune` returns.

    Attributes:
        study: the study's name.
        storage: its storage URL.
        output_dir: the study's folder (trials, table, best.yaml, plots, report).
        objective: the figure (or ``knn`` / ``rankme`` / ``loss``) optimised, and ``direction``
            (``maximize`` / ``minimize``).
        best_trial, best_value, best_params: the best complete trial (None when there is none).
        counts: trials by state: ``complete``, ``pruned``, ``failed``, ``running``.
        files: ``trials.csv``, ``best.yaml``, ``report.md``, plots ... -> path.
    """

    study: str
    storage: str
    output_dir: Path
    objective: str
    direction: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    counts: dict[str, int]
    files: dict[str, Path]


# --- the command ---------------------------------------------------------------------------------

def _direction(objective: str, direction: str | None) -> str:
    if direction is None:
        return "minimize" if "loss" in objective else "maximize"
    aliases = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
    if direction not in aliases:
        raise UserError(f"--direction {direction!r}: use max or min")
    return aliases[direction]


def _open_study(optuna: Any, setup: StudySetup) -> Any:
    """Create the study, or load it and check that it searches the same thing."""
    storage = make_storage(setup.storage)
    study = optuna.create_study(storage=storage, study_name=setup.study, direction=setup.direction, load_if_exists=True)
    wanted = {"objective": setup.objective, "direction": setup.direction, "space": setup.space.fingerprint()}
    stored = study.user_attrs
    if not stored:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        return study
    differ = [k for k in wanted if stored.get(k) != wanted[k]]
    if differ:
        was = ", ".join(f"{k} {stored.get(k)!r}" for k in differ if k != "space") or "another search space"
        raise UserError(f"the study {setup.study!r} in {setup.storage} was started with {was}; this run differs in "
                        f"{', '.join(differ)}. Resume it with the same settings, or start another study with --study NAME "
                        "(or --output-dir)")
    return study


def tune(
    config: Any = None,
    space: SearchSpace | str | os.PathLike[str] | None = None,
    *,
    trials: int,
    budget_min: float | None = None,
    objective: str = "auto",
    direction: str | None = None,
    jobs: int = 1,
    storage: str | None = None,
    study: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    plugins: Iterable[Any] = (),
    keep_checkpoints: bool = False,
    console: bool = True,
) -> TuneResult:
    """Search a run's hyperparameters with Optuna; resumable, pruned, parallel.

    Args:
        config: the base run: a YAML path, a bundled config's name, a mapping or ``None`` (the quickstart).
        space: the search-space YAML file (see :mod:`hjepa_kit.tuning.space`) or a loaded space.
        trials: the study's total of finished trials; a rerun tops the study up to it.
        budget_min: start no new trial after this many minutes (running trials finish).
        objective: ``auto`` (online k-NN when the data has labels, else RankMe, else the loss),
            ``knn``, ``rankme``, ``loss``, or any figure reported at epoch end (``online/knn/top1@20``,
            ``health/rankme/level0``, ``loss/level0``).
        direction: ``max`` or ``min``; default: ``min`` for figures named ``*loss*``, else ``max``.
        jobs: worker processes on the one storage, each with ``cores / jobs`` threads.
        storage: an Optuna storage URL; default: SQLite ``study.db`` in the study's folder.
        study: the study's name; default: the run's ``name``.
        output_dir: the study's folder; default: ``<output_dir>/tune/<study>``.
        overrides: ``KEY=VALUE`` overrides of the base run, applied before the sampled values.
        plugins: in-process plugins for every trial (modules, when ``jobs`` > 1).
        keep_checkpoints: keep every trial's checkpoints (default: only the best trial's).
        console: print one line per trial to stderr.

    Returns:
        A :class:`TuneResult`: the best trial, the counts, the files written.

    Raises:
        hjepa_kit.errors.UserError: a bad configuration, space file, objective or storage, or
            Optuna missing (the message names the extra ``tune``).
    """
    from ..bundled import resolve_config_source
    from ..config import load_config
    from ..registry import Registry
    from .report import write_report

    optuna = import_optuna()
    if space is None:
        raise UserError("hjepa tune needs a search space: --space SPACE.yaml")
    if trials < 1 or jobs < 1:
        raise UserError(f"--trials {trials} / --jobs {jobs}: both must be at least 1")
    if budget_min is not None and not (budget_min > 0 and math.isfinite(budget_min)):
        raise UserError(f"--budget-min {budget_min}: must be a positive number of minutes")
    plugins = list(plugins)
    source, name = resolve_config_source(config)
    overrides = list(overrides)
    base = load_config(source, overrides)
    registry = Registry(plugins)
    resolved = registry.resolve(base, name)
    searched = space_from(space)
    searched.check(source, overrides, registry, name)
    if objective == "auto":
        objective = resolve_auto(base, resolved)
    elif "/" not in objective and objective not in ALIASES:
        raise UserError(f"--objective {objective!r}: use auto, knn, rankme, loss or a figure's name "
                        "(online/knn/top1@20, health/rankme/level0, loss/level0)")
    study_name = study or base.name
    folder = Path(output_dir) if output_dir is not None else Path(base.output_dir) / "tune" / study_name
    folder.mkdir(parents=True, exist_ok=True)
    setup = StudySetup(
        source=source, name=name, overrides=tuple(overrides), space=searched, objective=objective,
        direction=_direction(objective, direction), storage=storage or f"sqlite:///{folder.resolve() / 'study.db'}",
        study=study_name, output_dir=folder, trials=trials,
        deadline=time.time() + budget_min * 60 if budget_min is not None else None, seed=base.seed,
        max_epochs=base.training.epochs, keep_checkpoints=keep_checkpoints, console=console,
    )
    opened = _open_study(optuna, setup)
    finished, running = count_trials(opened)
    say(setup, f"study {setup.study!r}: {finished} of {trials} trials finished, {setup.objective} ({setup.direction}); "
                f"storage {setup.storage}; folder {folder}")
    if jobs == 1:
        work(setup, 0, plugins, registry)
    else:
        run_jobs(setup, jobs, plugins)
    files = write_report(opened, folder, space=searched, objective=setup.objective, direction=setup.direction,
                         base_output_dir=base.output_dir, study_name=study_name, trials=trials)
    return _result(opened, setup, files)


def _result(study: Any, setup: StudySetup, files: dict[str, Path]) -> TuneResult:
    from .report import best_trial, state_counts

    best = best_trial(study)
    return TuneResult(
        study=setup.study, storage=setup.storage, output_dir=setup.output_dir, objective=setup.objective,
        direction=setup.direction, best_trial=best.number if best else None, best_value=best.value if best else None,
        best_params=dict(best.params) if best else {}, counts=state_counts(study), files=files,
    )
