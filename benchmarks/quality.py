"""Does pretraining learn? k-NN, linear probe and RankMe on real and synthetic images, per CPU budget.

For a config and a CPU-time budget, each seed pretrains on each dataset (the embedded real
``digits`` by default, and ``synthetic``) and is evaluated on the dataset's full train/test splits:

* **time to accuracy**: k-NN(20) of every representation after 1, 2, 5, 10 ... minutes of
  pretraining (``--curve``); minute 0 is the **random-init baseline of the same run** (the
  model as built, before its first step);
* at the end of the budget (or of the configured epochs, if sooner): k-NN(20), linear probe and
  RankMe (effective rank of the pooled train features) per representation;
* the **raw-pixel baseline**: the same k-NN and linear probe on the normalised pixels.

Time is *core-normalised CPU time* of the pretraining alone: the process's CPU seconds divided by
its torch threads, with the evaluations' CPU time taken out. On an idle 2-core machine it equals
wall time; a busy neighbour slows the run but hardly changes the figure. Each figure is the mean
over seeds with its spread (sample std, and min..max).

    python benchmarks/quality.py --config quickstart --budget-min 10 --seeds 0 1 2 --json q.json
    python benchmarks/quality.py --config configs/cifar10_native32.yaml --set training.lr=5.0e-4 --budget-min 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # noqa: F401  (first: hjepa_kit before torch)
import attrs
import torch

import hjepa_kit
from hjepa_kit.api import _source
from hjepa_kit.config import ComponentSpec, load_config
from hjepa_kit.data.loader import iter_eval_batches
from hjepa_kit.evaluation.features import extract_features, feature_sets
from hjepa_kit.evaluation.metrics import effective_rank
from hjepa_kit.training.trainer import Trainer

DATASETS = {
    "digits": {"name": "digits", "params": {}},
    "synthetic": {"name": "synthetic", "params": {"num_train": 4096, "num_test": 1024, "image_size": 32}},
}


def _figures(result: Any) -> dict[str, float]:
    return {k: float(v) for k, v in getattr(result, "metrics", result).items()}


def core_seconds() -> float:
    """This process's CPU seconds per torch thread."""
    return time.process_time() / max(torch.get_num_threads(), 1)


class Evaluator:
    """k-NN(20) and linear probe on a dataset's full splits, built from the run's registry."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.train = trainer.dataset.load("train")
        self.test = trainer.dataset.load("test")
        self.num_classes = int(trainer.dataset.num_classes)
        knn, linear = trainer.registry.get("evaluator", "knn_faiss"), trainer.registry.get("evaluator", "linear_probe")
        self.knn = knn.build(knn.params(k=(20,)), trainer.ctx)
        self.linear = linear.build(linear.params(), trainer.ctx)

    def _kwargs(self) -> dict[str, Any]:
        cfg = self.trainer.config
        return dict(image_size=self.trainer.ctx.image_size, batch_size=cfg.data.eval_batch_size,
                    mean=cfg.data.augmentation.mean, std=cfg.data.augmentation.std,
                    device=self.trainer.device, autocast_dtype=self.trainer.amp_dtype)

    def features(self) -> dict[str, Any]:
        model = self.trainer.model
        train = extract_features(model, self.train, **self._kwargs())
        test = extract_features(model, self.test, **self._kwargs())
        return feature_sets(train, self.train.labels, test, self.test.labels, self.num_classes)

    def pixels(self) -> dict[str, Any]:
        def flat(data: Any) -> torch.Tensor:
            kw = self._kwargs()
            kw.pop("autocast_dtype")
            return torch.cat([x.flatten(1).cpu() for x, _ in iter_eval_batches(data, **kw)])

        return feature_sets({"pixels": flat(self.train)}, self.train.labels, {"pixels": flat(self.test)},
                            self.test.labels, self.num_classes)

    def knn_top1(self, sets: dict[str, Any]) -> dict[str, float]:
        return {name: _figures(self.knn(sets, name))["knn/top1@20"] for name in sets}

    def full(self, sets: dict[str, Any]) -> dict[str, dict[str, float]]:
        out = {}
        for name, fs in sets.items():
            out[name] = {
                "knn": _figures(self.knn(sets, name))["knn/top1@20"],
                "linear": _figures(self.linear(sets, name))["linear_probe/top1"],
                "rankme": float(effective_rank(fs.train)),
                "width": int(fs.train.shape[1]),
            }
        return out


class BudgetCallback:
    """Evaluates at the curve's minutes, stops the run at the budget; evaluation time is not counted."""

    def __init__(self, curve: list[float], budget_min: float) -> None:
        self.curve = sorted(curve)
        self.budget_s = budget_min * 60.0
        self.points: list[dict[str, Any]] = []
        self.eval_core_s = 0.0
        self.start = 0.0
        self.evaluator: Evaluator | None = None
        self.trainer: Trainer | None = None

    def elapsed(self) -> float:
        return core_seconds() - self.start - self.eval_core_s

    def _evaluate(self, minute: float, step: int) -> None:
        t0 = core_seconds()
        knn = self.evaluator.knn_top1(self.evaluator.features())
        self.eval_core_s += core_seconds() - t0
        self.points.append({"minute": minute, "step": step, "knn": knn})

    @hjepa_kit.hookimpl
    def hjepa_fit_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.evaluator = Evaluator(trainer)
        self.start = core_seconds()
        self._evaluate(0.0, trainer.step)  # the random-init baseline of this very run

    @hjepa_kit.hookimpl
    def hjepa_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        elapsed = self.elapsed() / 60.0
        while self.curve and elapsed >= self.curve[0]:
            self._evaluate(self.curve.pop(0), step)
        if self.elapsed() >= self.budget_s:
            trainer.request_stop(f"quality benchmark budget of {self.budget_s / 60:g} CPU-minutes reached")


def run_one(config_source: Any, dataset: str, seed: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    overrides = [*args.set, f"seed={seed}", f"output_dir={out_dir}", f"name=quality_{dataset}_{seed}",
                 "evaluation.online=null", "checkpoint.save_final=false", "checkpoint.every_epochs=1000000"]
    config = load_config(config_source, overrides)
    config = attrs.evolve(config, data=attrs.evolve(config.data, dataset=ComponentSpec(**DATASETS[dataset])))
    callback = BudgetCallback(list(args.curve), args.budget_min)
    trainer = Trainer(config, plugins=[callback], source=f"{args.config} ({dataset}, seed {seed})", console=args.verbose)
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    train_minutes = callback.elapsed() / 60.0
    sets = callback.evaluator.features()
    final = callback.evaluator.full(sets)
    pixels = callback.evaluator.full(callback.evaluator.pixels())["pixels"]
    # Curve points past the end of a completed run carry its final figures.
    for minute in callback.curve:
        callback.points.append({"minute": minute, "step": trainer.step, "knn": {k: v["knn"] for k, v in final.items()},
                                "after_end": True})
    loss = trainer.last_metrics.get("loss")
    return {
        "dataset": dataset, "seed": seed, "status": result.status, "steps": trainer.step, "epochs": trainer.epoch,
        "train_core_minutes": train_minutes, "wall_s": wall, "final_loss": loss,
        "curve": callback.points, "final": final, "pixels": pixels,
    }


def _stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == dataset]
        reps = list(rs[0]["final"])
        entry: dict[str, Any] = {"final": {}, "random_init_knn": {}, "curve": {}, "pixels": {}}
        for rep in reps:
            entry["final"][rep] = {m: _stats([r["final"][rep][m] for r in rs]) for m in ("knn", "linear", "rankme")}
            entry["final"][rep]["width"] = rs[0]["final"][rep]["width"]
            entry["random_init_knn"][rep] = _stats([r["curve"][0]["knn"][rep] for r in rs])
            minutes = sorted({p["minute"] for r in rs for p in r["curve"]})
            entry["curve"][rep] = {
                str(m): _stats([p["knn"][rep] for r in rs for p in r["curve"] if p["minute"] == m]) for m in minutes
            }
        entry["pixels"] = {m: _stats([r["pixels"][m] for r in rs]) for m in ("knn", "linear")}
        entry["train_core_minutes"] = _stats([r["train_core_minutes"] for r in rs])
        entry["steps"] = _stats([float(r["steps"]) for r in rs])
        entry["final_loss"] = _stats([r["final_loss"] for r in rs])
        summary[dataset] = entry
    return summary


def fmt(s: dict[str, float], digits: int = 3) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    lines = []
    for dataset, entry in summary.items():
        lines.append(f"\n{dataset}: {fmt(entry['steps'], 0)} steps in {fmt(entry['train_core_minutes'], 2)} core-minutes, "
                     f"final loss {fmt(entry['final_loss'], 4)}")
        lines.append("| representation | k-NN(20) | linear | RankMe (of width) | random-init k-NN |")
        lines.append("|---|---|---|---|---|")
        for rep, f in entry["final"].items():
            lines.append(f"| {rep} | {fmt(f['knn'])} | {fmt(f['linear'])} | {fmt(f['rankme'], 1)} ({f['width']}) | "
                         f"{fmt(entry['random_init_knn'][rep])} |")
        lines.append(f"| raw pixels | {fmt(entry['pixels']['knn'])} | {fmt(entry['pixels']['linear'])} | | |")
        minutes = list(next(iter(entry["curve"].values())))
        lines.append("\ntime to accuracy (k-NN(20), core-minutes of pretraining; 0 = random init):")
        lines.append("| representation | " + " | ".join(f"{m} min" for m in minutes) + " |")
        lines.append("|---|" + "---|" * len(minutes))
        for rep, curve in entry["curve"].items():
            lines.append(f"| {rep} | " + " | ".join(fmt(curve[m]) for m in minutes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart", help="config file or bundled name (default quickstart)")
    parser.add_argument("--datasets", nargs="+", default=["digits", "synthetic"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-min", type=float, default=10.0, help="core-minutes of pretraining per run")
    parser.add_argument("--curve", nargs="+", type=float, default=[1, 2, 5, 10], help="minutes at which k-NN is measured")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--verbose", action="store_true", help="echo the training log")
    args = parser.parse_args(argv)
    args.curve = [m for m in args.curve if m <= args.budget_min]
    source, _name = _source(args.config)
    runs = []
    with tempfile.TemporaryDirectory(prefix="hjepa_quality_") as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                run = run_one(source, dataset, seed, args, Path(tmp))
                runs.append(run)
                f = run["final"]
                print(f"{dataset} seed {seed}: {run['steps']} steps, {run['train_core_minutes']:.2f} core-min, "
                      + ", ".join(f"{k} knn {v['knn']:.3f} lin {v['linear']:.3f} rankme {v['rankme']:.0f}" for k, v in f.items())
                      + f"; init knn {run['curve'][0]['knn']}; pixels {run['pixels']['knn']:.3f}/{run['pixels']['linear']:.3f}",
                      flush=True)
    summary = summarise(runs)
    print(table(summary))
    _machine.write_json(args.json, {"machine": _machine.machine(), "config": args.config, "overrides": args.set,
                                    "budget_min": args.budget_min, "seeds": args.seeds, "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
