"""What a study leaves in its folder: the trials table, ``best.yaml``, plots, TensorBoard hparams, ``report.md``.

- ``trials.csv``: one row per trial: number, status, objective, epochs run of the planned ones,
  seconds, threads, each searched value, and why it ended when it did not complete.
- ``best.yaml``: the best complete trial's resolved configuration (every component's parameters
  filled in), renamed ``<study>_best``: ``hjepa train --config best.yaml`` trains it again.
- ``history.png``, ``intermediate.png``, ``importance.png``: Optuna's optimisation history, the
  objective per epoch of every trial (pruned ones stop early), and the parameter importances by
  PED-ANOVA (Watanabe, Bansal, Hutter, "PED-ANOVA: Efficiently Quantifying Hyperparameter Importance
  in Arbitrary Subspaces", IJCAI 2023; it needs no scikit-learn).
- ``tensorboard/``: one hparams record per finished trial (TensorBoard's HPARAMS tab).
- ``report.md``: the study in one page: the best trial, the cost in core-minutes, what pruning saved.

The table and ``best.yaml`` are rewritten after every trial, so a killed study keeps them; the rest
is written when the command ends. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_file, atomic_folder, write_atomic
from .trial import trial_name

__all__ = ["trial_rows", "best_trial", "state_counts", "clean_checkpoints", "write_progress", "write_report"]


def _status(trial: Any) -> str:
    """complete, pruned, running, or for a failed trial: failed / interrupted."""
    if trial.state.name == "FAIL":
        return trial.user_attrs.get("status") or "failed"
    return trial.state.name.lower()


def best_trial(study: Any) -> Any:
    """The best complete trial, or None."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    maximize = study.direction.name == "MAXIMIZE"
    return max(complete, key=lambda t: t.value if maximize else -t.value)


def state_counts(study: Any) -> dict[str, int]:
    """Trials by status: ``complete``, ``pruned``, ``failed``, ``running`` (and ``interrupted``)."""
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        status = _status(t)
        counts[status] = counts.get(status, 0) + 1
    return counts


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial: ``trial``, ``status``, ``objective``, ``epochs``, ``max_epochs``, ``seconds``, ``cpu_seconds``,
    ``threads``, the params, ``reason``."""
    keys = list(dict.fromkeys(k for t in study.get_trials(deepcopy=False) for k in t.params))
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row = {"trial": t.number, "status": _status(t), "objective": t.value, "epochs": a.get("epochs"),
               "max_epochs": a.get("max_epochs"), "seconds": a.get("seconds"), "cpu_seconds": a.get("cpu_seconds"),
               "threads": a.get("threads")}
        row.update({k: t.params.get(k) for k in keys})
        row["reason"] = a.get("reason", "")
        rows.append(row)
    return rows


def clean_checkpoints(study: Any, trials_dir: Path, *, keep_all: bool = False) -> None:
    """Remove the checkpoints of finished trials other than the best (their logs stay)."""
    from optuna.trial import TrialState

    if keep_all:
        return
    best = best_trial(study)
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING or (best is not None and t.number == best.number):
            continue
        folder = Path(trials_dir) / "checkpoints" / trial_name(t.number)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def write_best(study: Any, folder: Path, *, base_output_dir: str, study_name: str) -> Path | None:
    """Write ``best.yaml`` from the best complete trial's resolved configuration; its path, or None."""
    best = best_trial(study)
    if best is None or not best.user_attrs.get("config"):
        return None
    data = yaml.safe_load(best.user_attrs["config"])
    data["name"] = f"{study_name}_best"
    data["output_dir"] = base_output_dir
    figure = best.user_attrs.get("figure") or study.user_attrs.get("objective", "objective")
    header = (f"# The best trial ({best.number}) of the hjepa tune study '{study_name}': {figure} = {best.value:.6g} "
              f"({study.direction.name.lower()}).\n# Train it again with: hjepa train --config best.yaml\n")
    return write_atomic(folder / "best.yaml", header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


def write_progress(study: Any, folder: Path, *, base_output_dir: str, study_name: str) -> dict[str, Path]:
    """Rewrite ``trials.csv`` and ``best.yaml`` (after every trial)."""
    files = {"trials.csv": write_atomic(Path(folder) / "trials.csv", _csv(trial_rows(study)))}
    best = write_best(study, Path(folder), base_output_dir=base_output_dir, study_name=study_name)
    if best is not None:
        files["best.yaml"] = best
    return files


def _plots(study: Any, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """history.png, intermediate.png, importance.png: those that can be drawn, and why the others cannot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vm

    files: dict[str, Path] = {}
    notes: list[str] = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    jobs = {"history.png": lambda: vm.plot_optimization_history(study),
            "intermediate.png": lambda: vm.plot_intermediate_values(study)}
    if len(complete) >= 2 and len(study.get_trials(deepcopy=False)[0].distributions) >= 1:
        jobs["importance.png"] = lambda: vm.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    else:
        notes.append("parameter importances need at least 2 complete trials")
    for name, draw in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.logging.set_verbosity(optuna.logging.ERROR)
                axes = draw()
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            with atomic_file(folder / name) as tmp:
                figure.savefig(tmp, format="png", dpi=100)
            plt.close(figure)
            files[name] = folder / name
        except Exception as exc:  # a plot that cannot be drawn (too few trials) is a note, not a failure
            notes.append(f"{name} not drawn: {exc}")
    return files, notes


def _tensorboard(study: Any, folder: Path) -> Path:
    """One hparams record per trial with a value, under ``<folder>/tensorboard``."""
    from torch.utils.tensorboard import SummaryWriter

    target = folder / "tensorboard"
    with atomic_folder(target) as tmp:
        writer = SummaryWriter(log_dir=str(tmp))
        for t in study.get_trials(deepcopy=False):
            if t.value is None:
                continue
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in t.params.items()}
            hparams["status"] = _status(t)
            writer.add_hparams(hparams, {"hparam/objective": float(t.value)}, run_name=trial_name(t.number))
        writer.close()
    return target


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _costs(rows: list[dict[str, Any]]) -> tuple[float, float, float, int]:
    """CPU core-minutes and wall minutes spent, core-minutes pruning saved (estimated from each pruned
    trial's own epochs), trials pruned."""
    spent = wall = saved = 0.0
    pruned = 0
    for r in rows:
        cpu = float(r["cpu_seconds"] if r["cpu_seconds"] is not None else (r["seconds"] or 0.0) * (r["threads"] or 1))
        spent += cpu / 60
        wall += float(r["seconds"] or 0.0) / 60
        if r["status"] == "pruned" and r["epochs"] and r["max_epochs"] and r["epochs"] < r["max_epochs"]:
            pruned += 1
            saved += cpu / r["epochs"] * (r["max_epochs"] - r["epochs"]) / 60
    return spent, wall, saved, pruned


def write_report(study: Any, folder: Path, *, space: Any, objective: str, direction: str, base_output_dir: str,
                 study_name: str, trials: int) -> dict[str, Path]:
    """Write every output of the study; returns name -> path."""
    folder = Path(folder)
    files = write_progress(study, folder, base_output_dir=base_output_dir, study_name=study_name)
    rows = trial_rows(study)
    plots, notes = _plots(study, folder)
    files.update(plots)
    try:
        files["tensorboard"] = _tensorboard(study, folder)
    except Exception as exc:
        notes.append(f"TensorBoard hparams not written: {exc}")
    counts = state_counts(study)
    spent, wall, saved, pruned = _costs(rows)
    best = best_trial(study)
    lines = [f"# Tuning study `{study_name}`", "",
             f"Objective: `{best.user_attrs.get('figure', objective) if best else objective}` ({direction}). "
             f"Trials: {', '.join(f'{n} {k}' for k, n in counts.items() if n)} (the study's total is {trials}).", "",
             f"Cost: {spent:.1f} core-minutes of CPU time over the trials ({wall:.1f} minutes of trial wall-clock time, "
             f"summed over parallel trials). Pruning stopped {pruned} trial(s) early, saving about {saved:.1f} "
             "core-minutes (each pruned trial's epochs not run, at its own CPU time per epoch).", ""]
    if best is not None:
        lines += ["## Best trial", "", f"Trial {best.number}: `{best.user_attrs.get('figure', objective)}` = {best.value:.4g}, "
                  f"in {best.user_attrs.get('seconds', 0):.0f} s.", "", "| key | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in best.params.items()]
        lines += ["", "Train it again with `hjepa train --config best.yaml`." if "best.yaml" in files else "", ""]
    else:
        lines += ["No trial completed yet.", ""]
    lines += ["## Search space", "", "| key | distribution |", "| --- | --- |"]
    lines += [f"| `{k}` | {_cell(spec.describe())} |" for k, spec in space.params.items()]
    lines += ["", f"Sampler: {space.sampler.name}; pruner: {space.pruner.name}.", "", "## Trials", ""]
    if rows:
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
        lines += ["| " + " | ".join(_cell(v) for v in r.values()) + " |" for r in rows]
    lines += [""] + [f"![{name}]({name})" for name in plots] + [""] + [f"- {note}" for note in notes]
    files["report.md"] = write_atomic(folder / "report.md", "\n".join(lines).rstrip() + "\n")
    return files
