"""What pruning saves in ``hjepa tune``: one study pruned, then the same trials unpruned.

The pruned study runs first (TPE, the median pruner). The unpruned study's storage is then created
with Optuna's ``enqueue_trial`` for every trial of the pruned one, in order, so it trains exactly
the same parameter sets to the end: the comparison is trial for trial, not two different searches.
Both run in this process with one worker (``--jobs 1``), so their cost is this process's CPU time
(user + system, ``resource.getrusage``), which other jobs on the machine do not inflate.

Printed: each study's CPU and wall-clock time, trials complete and pruned, its best trial; then
every pruned trial with the value it would have reached unpruned and its rank among all 20.

    HJEPA_THREADS=1 python benchmarks/tune_pruning.py --config quickstart --trials 20 --epochs 3 \\
        --output-dir results/tune_pruning --json results/tune_pruning.json

Needs ``pip install 'hjepa-kit[tune]'`` (Optuna).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import fmt_load, load_average, machine, write_json  # noqa: E402

#: The Tuning page's space: the three settings the Quality page found to matter most on the digits.
SPACE = {
    "training.lr": {"type": "float", "low": 5.0e-5, "high": 1.0e-3, "log": True},
    "training.ema_momentum.0": {"type": "float", "low": 0.95, "high": 0.999},
    "loss.params.variance_weight": {"type": "float", "low": 0.25, "high": 4.0, "log": True},
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(args: argparse.Namespace, name: str, pruner: dict[str, Any], folder: Path) -> dict[str, Any]:
    import hjepa_kit

    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({"params": SPACE, "sampler": {"name": "tpe", "startup_trials": args.startup},
                                     "pruner": pruner}, sort_keys=False))
    cpu, wall = _cpu_s(), time.perf_counter()
    hjepa_kit.tune(args.config, space, trials=args.trials, jobs=1, study=name, output_dir=folder,
                   overrides=[f"training.epochs={args.epochs}", *args.set], console=not args.quiet)
    return {"cpu_min": (_cpu_s() - cpu) / 60, "wall_min": (time.perf_counter() - wall) / 60}


def _trials(folder: Path, name: str) -> list[Any]:
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{(folder / 'study.db').resolve()}")
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every trial (training.epochs)")
    parser.add_argument("--startup", type=int, default=5, help="random trials before TPE, and trials the pruner never stops")
    parser.add_argument("--warmup-epochs", type=int, default=0, help="the median pruner's epochs never pruned")
    parser.add_argument("--output-dir", type=Path, default=Path("results/tune_pruning"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a configuration override of every trial")
    parser.add_argument("--quiet", action="store_true", help="no line per trial")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_start = load_average()
    pruned_dir, unpruned_dir = args.output_dir / "pruned", args.output_dir / "unpruned"
    for folder in (pruned_dir, unpruned_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    pruner = {"name": "median", "startup_trials": args.startup, "warmup_epochs": args.warmup_epochs}
    cost = {"pruned": _run(args, "pruned", pruner, pruned_dir)}
    source = _trials(pruned_dir, "pruned")
    # The same parameter sets, in the same order, trained to the end.
    target = optuna.create_study(study_name="unpruned", storage=f"sqlite:///{(unpruned_dir / 'study.db').resolve()}",
                                 direction="maximize")
    for trial in source:
        target.enqueue_trial(trial.params)
    cost["unpruned"] = _run(args, "unpruned", {"name": "none"}, unpruned_dir)
    full = {t.number: t.value for t in _trials(unpruned_dir, "unpruned")}
    ranked = sorted(full, key=lambda n: -(full[n] if full[n] is not None else float("-inf")))
    states = {"pruned": {}, "unpruned": {}}
    for kind, folder in (("pruned", pruned_dir), ("unpruned", unpruned_dir)):
        trials = _trials(folder, kind)
        done = [t for t in trials if t.state.name == "COMPLETE"]
        best = max(done, key=lambda t: t.value)
        states[kind] = {"complete": len(done), "pruned": sum(t.state.name == "PRUNED" for t in trials),
                        "best_trial": best.number, "best_value": best.value, **cost[kind]}
    stopped = [{"trial": t.number, "epochs": max(t.intermediate_values, default=0), "value_when_pruned": t.value,
                "value_unpruned": full.get(t.number), "rank_unpruned": ranked.index(t.number) + 1}
               for t in source if t.state.name == "PRUNED"]
    saved = states["unpruned"]["cpu_min"] - states["pruned"]["cpu_min"]
    print(f"\n{args.trials} trials of {args.epochs} epochs, {args.config}; load average {fmt_load(load_start)} -> {fmt_load(load_average())}")
    print("| | pruned | unpruned |\n|---|---|---|")
    for key, label in (("cpu_min", "CPU core-minutes"), ("wall_min", "wall-clock minutes"), ("complete", "complete"),
                       ("pruned", "pruned"), ("best_trial", "best trial"), ("best_value", "best value")):
        a, b = states["pruned"][key], states["unpruned"][key]
        print(f"| {label} | {a:.4g} | {b:.4g} |")
    print(f"pruning saved {saved:.1f} core-minutes ({100 * saved / max(1e-9, states['unpruned']['cpu_min']):.0f}%)")
    print("\n| pruned trial | stopped after epoch | value then | value unpruned | its rank of all |\n|---|---|---|---|---|")
    for row in stopped:
        print(f"| {row['trial']} | {row['epochs']} | {row['value_when_pruned']:.4f} | {row['value_unpruned']:.4f} | {row['rank_unpruned']} |")
    write_json(args.json, {"machine": machine(), "config": args.config, "trials": args.trials, "epochs": args.epochs,
                           "pruner": pruner, "studies": states, "saved_cpu_min": saved, "pruned_trials": stopped})


if __name__ == "__main__":
    main()
