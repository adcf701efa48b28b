"""The workers of ``hjepa tune``: Optuna's storage, the trial loop, dead workers, ``--jobs`` processes.

- **Storage.** Optuna's relational storage (SQLite by default, any URL Optuna accepts), with
  heartbeats: a trial whose process died is failed by the next trial to start two minutes later.
- **The trial loop** (:func:`work`): until the study has ``--trials`` finished trials (complete,
  pruned, or failed as a result; :func:`count_trials`) or the time budget is spent, run one trial
  (:func:`~hjepa_kit.tuning.trial.run_trial`), drop the checkpoints of all but the best trial, and
  rewrite the table and ``best.yaml``.
- **Dead workers.** A worker holds a lock file in ``<study>/workers/`` while it runs; a trial left
  running by a worker whose lock is free again (killed, crashed) is recorded as interrupted at once
  and does not count.
- **Parallel trials** (:func:`run_jobs`): J spawned processes on the one storage, each with
  ``cores / J`` torch threads (``HJEPA_THREADS``); one killed from outside is replaced while trials
  remain; Ctrl-C or SIGTERM interrupts them all cleanly.
- **Sampler and pruner** from the space file: TPE (Bergstra, Bardenet, Bengio, Kégl, "Algorithms for
  Hyper-Parameter Optimization", NeurIPS 2011) seeded per worker and per rerun, or random; Optuna's
  median, Hyperband (Li et al., JMLR 2018) or threshold pruner on the objective of each epoch.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..errors import UserError
from .space import SearchSpace
from .trial import TrialContext, TrialFailed, run_trial

__all__ = ["import_optuna", "make_storage", "count_trials", "StudySetup", "work", "run_jobs", "EXTRA_HINT"]

EXTRA_HINT = "pip install 'hjepa-kit[tune]' (or pip install optuna)"


def import_optuna() -> Any:
    """Import Optuna, or stop with the install command naming the extra ``tune``."""
    try:
        import optuna
    except ImportError:
        raise UserError(f"hjepa tune needs the package optuna, which is not installed: {EXTRA_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # hjepa tune prints one line per trial itself
    return optuna


@attrs.frozen
class StudySetup:
    """Everything a worker needs (picklable: it travels to the ``--jobs`` processes)."""

    source: Any
    name: str
    overrides: tuple[str, ...]
    space: SearchSpace
    objective: str
    direction: str
    storage: str
    study: str
    output_dir: Path
    trials: int
    deadline: float | None
    seed: int
    max_epochs: int
    keep_checkpoints: bool
    console: bool


def make_storage(url: str) -> Any:
    """Optuna's relational storage at ``url``, with heartbeats (a dead process's trial is failed after 2 minutes)."""
    optuna = import_optuna()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120)
    except Exception as exc:  # a bad URL, a missing database driver, an unreachable server
        raise UserError(f"--storage {url}: cannot open it: {exc}") from None


def count_trials(study: Any) -> tuple[int, int]:
    """``(finished, running)``: trials that count towards ``--trials`` (complete, pruned, failed as a result) and running ones."""
    from optuna.trial import TrialState

    finished = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.user_attrs.get("result")):
            finished += 1
        elif t.state == TrialState.RUNNING:
            running += 1
    return finished, running


def say(setup: StudySetup, text: str) -> None:
    if setup.console:
        print(f"hjepa tune: {text}", file=sys.stderr, flush=True)


# --- worker locks: which trials a dead worker of this folder left running ------------------------

def _lock(folder: Path, token: str) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / f"{token}.lock", "w")
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    return handle


def _held(path: Path) -> bool:
    try:
        import fcntl
    except ImportError:
        return True  # no way to tell here: the heartbeat decides
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _fail_dead_trials(study: Any, storage: Any, folder: Path) -> list[int]:
    """Mark failed the running trials whose worker (of this folder) holds its lock no more; their numbers."""
    from optuna.trial import TrialState

    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock = folder / f"{t.user_attrs.get('worker', '-')}.lock"
        if t.user_attrs.get("worker") and lock.is_file() and not _held(lock):
            trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), t.number)
            storage.set_trial_user_attr(trial_id, "status", "interrupted")
            storage.set_trial_user_attr(trial_id, "reason", "its process ended while it ran (killed?)")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            lock.unlink(missing_ok=True)
            dead.append(t.number)
    return dead


# --- the worker ----------------------------------------------------------------------------------

def _sampler(optuna: Any, setup: StudySetup, worker: int, existing: int) -> Any:
    import numpy as np

    spec = setup.space.sampler
    seed = int(np.random.SeedSequence([spec.seed if spec.seed is not None else setup.seed, worker, existing]).generate_state(1)[0])
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)


def _pruner(optuna: Any, setup: StudySetup) -> Any:
    spec = setup.space.pruner
    if spec.name == "median":  # epochs are reported as steps 1, 2, ...: warmup W allows pruning from epoch W + 1
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs + 1)
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs, max_resource=spec.max_epochs or setup.max_epochs,
                                              reduction_factor=spec.reduction_factor)
    if spec.name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.warmup_epochs + 1)
    return optuna.pruners.NopPruner()


def _describe(frozen: Any) -> str:
    attrs_ = frozen.user_attrs
    status = attrs_.get("status") or frozen.state.name.lower()
    value = f" {attrs_.get('figure') or ''} {frozen.value:.4g}".rstrip() if frozen.value is not None else ""
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in frozen.params.items())
    reason = f": {attrs_['reason']}" if attrs_.get("reason") else ""
    return f"trial {frozen.number} {status}{value} in {attrs_.get('seconds', 0):.0f} s ({params}){reason}"


def work(setup: StudySetup, worker: int, plugins: Sequence[Any], registry: Any = None) -> None:
    """Run trials one after another until the study has ``setup.trials`` or the budget is spent."""
    from ..registry import Registry
    from .report import clean_checkpoints, write_progress

    optuna = import_optuna()
    storage = make_storage(setup.storage)
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    locks = setup.output_dir / "workers"
    handle = _lock(locks, token)
    try:
        study = optuna.load_study(study_name=setup.study, storage=storage)
        study = optuna.load_study(study_name=setup.study, storage=storage, pruner=_pruner(optuna, setup),
                                  sampler=_sampler(optuna, setup, worker, len(study.get_trials(deepcopy=False))))
        registry = registry or Registry(plugins)
        ctx = TrialContext(source=setup.source, name=setup.name, overrides=list(setup.overrides), space=setup.space,
                           objective=setup.objective, trials_dir=setup.output_dir / "trials", registry=registry, worker=token)
        while True:
            for number in _fail_dead_trials(study, storage, locks):
                say(setup, f"trial {number} was left running by a process that ended: recorded as failed (it does not count)")
            finished, running = count_trials(study)
            if finished + running >= setup.trials:
                break
            if setup.deadline is not None and time.time() >= setup.deadline:
                say(setup, f"the time budget is spent: {finished} of {setup.trials} trials finished")
                break
            done: list[Any] = []
            study.optimize(lambda trial: run_trial(trial, ctx), n_trials=1, catch=(TrialFailed,),
                           callbacks=[lambda _study, frozen: done.append(frozen)])
            clean_checkpoints(study, ctx.trials_dir, keep_all=setup.keep_checkpoints)
            write_progress(study, setup.output_dir, base_output_dir=_base_output_dir(setup), study_name=setup.study)
            if done:
                say(setup, _describe(done[0]))
    finally:
        handle.close()
        (locks / f"{token}.lock").unlink(missing_ok=True)


def _base_output_dir(setup: StudySetup) -> str:
    from ..config import load_config

    return load_config(setup.source, list(setup.overrides)).output_dir


def _worker_main(setup: StudySetup, worker: int, plugin_modules: Sequence[str], threads: int | None) -> None:
    """Entry point of a ``--jobs`` process: its share of threads, then :func:`work`; a user error exits 2."""
    import importlib

    from ..process import apply_cpu_defaults

    apply_cpu_defaults()
    if threads and not os.environ.get("HJEPA_THREADS"):
        os.environ["HJEPA_THREADS"] = str(threads)
    try:
        work(setup, worker, [importlib.import_module(m) for m in plugin_modules])
    except UserError as exc:
        print(f"hjepa tune: error (worker {worker}): {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_workers(processes: list[Any]) -> None:
    """Interrupt workers still running (each ends its trial's run cleanly, as Ctrl-C does), then wait for them."""
    for process in processes:
        if process.exitcode is None and process.pid is not None:
            os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(timeout=120)
        if process.exitcode is None:
            process.terminate()
            process.join(timeout=10)


def run_jobs(setup: StudySetup, jobs: int, plugins: Sequence[Any]) -> None:
    """``jobs`` worker processes on one storage; a worker killed from outside is replaced while trials remain."""
    from ..threads import physical_cores

    names = []
    for plugin in plugins:
        if not isinstance(plugin, type(sys)):
            raise UserError(f"--jobs {jobs}: in-process plugins must be modules (each process imports them), got {plugin!r}; "
                            "install the plugin or use --jobs 1")
        names.append(plugin.__name__)
    threads = max(1, physical_cores() // jobs)
    spawn = multiprocessing.get_context("spawn")
    optuna = import_optuna()
    study = optuna.load_study(study_name=setup.study, storage=make_storage(setup.storage))

    def start(index: int) -> Any:
        process = spawn.Process(target=_worker_main, args=(setup, index, names, threads), name=f"hjepa-tune-{index}")
        process.start()
        return process

    processes = {i: start(i) for i in range(jobs)}
    restarts = 0
    codes: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminated)  # a SIGTERM to this process stops the workers too
    try:
        while processes:
            for index, process in list(processes.items()):
                process.join(timeout=1.0)
                if process.exitcode is None:
                    continue
                del processes[index]
                finished, _ = count_trials(study)
                out_of_time = setup.deadline is not None and time.time() >= setup.deadline
                if process.exitcode < 0 and finished < setup.trials and not out_of_time and restarts < setup.trials:
                    say(setup, f"worker {index} ended by signal {-process.exitcode}; starting another")
                    restarts += 1
                    processes[index + jobs * restarts] = start(index + jobs * restarts)
                elif process.exitcode != 0:
                    codes.append(process.exitcode)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_workers(list(processes.values()))
    if 130 in codes:
        raise KeyboardInterrupt
    if codes:
        raise UserError(f"--jobs {jobs}: {len(codes)} worker(s) stopped with an error (exit {', '.join(map(str, codes))}); "
                        "see their messages above")
