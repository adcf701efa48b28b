"""Does pretraining learn? k-NN, linear probe and RankMe on real and synthetic images, per CPU budget.

For a config and a CPU-time budget, each seed pretrains on each dataset (by default the embedded
real ``digits``, the same digits resized with nearest-neighbour resampling as ``digits_nearest``,
and ``synthetic``) and is evaluated on the dataset's full train/test splits:

* **time to accuracy**: k-NN(20) of every representation after 1, 2, 5, 10 ... minutes of
  pretraining (``--curve``); minute 0 is the **random-init baseline of the same run** (the
  model as built, before its first step);
* at the end of the budget (or of the configured epochs, if sooner): k-NN(20), linear probe,
  RankMe (effective rank of the pooled train features) and the plan's two graded feature figures
  (mean per-dimension variance and 95%-energy rank / width, as the ``feature_quality`` evaluator
  computes them on the train split) per representation, each beside the untrained network's k-NN
  and the raw pixels';
* the **raw-pixel baseline**: the same k-NN and linear probe on the normalised pixels;
* with ``--long-factor F``, a **long-schedule check**: every (dataset, seed) also runs with
  ``training.epochs`` times F (and a budget F times larger; the rest of the config, warmup
  included, unchanged), and its final k-NN and linear probe are set beside the shipped length's,
  with the paired difference long - shipped in points (mean ± std over seeds, and the worst seed);
* with ``--figure OUT.png``, the time-to-accuracy curves of the evaluated representation (the
  config's ``evaluation.representation``) per dataset, mean over seeds with a min..max band,
  against the untrained network and the raw pixels (``_quality_report.py`` redraws it from the JSON).

Time is *core-normalised CPU time* of the pretraining alone: the process's CPU seconds divided by
its torch threads, with the evaluations' CPU time taken out. On an idle 2-core machine it equals
wall time; a busy neighbour slows the run but hardly changes the figure. Each figure is the mean
over seeds with its spread (sample std, and min..max).

    python benchmarks/quality.py --config quickstart --budget-min 10 --seeds 0 1 2 --json q.json
    python benchmarks/quality.py --config quickstart --long-factor 4 --figure q.png --json q.json
    python benchmarks/quality.py --config configs/cifar10_native32.yaml --set training.lr=5.0e-4 --budget-min 2
    python benchmarks/quality.py --datasets synthetic --dataset-param synthetic.num_train=256 ...

The JSON holds ``runs`` (one per dataset and seed: its curve, final figures, pixels) and
``summary`` (per dataset: the same as mean ± spread); with ``--long-factor``, also ``long_runs``
(the same fields per long run) and per dataset ``summary[d]["long"]`` (the long runs' summary,
``delta_points``: long - shipped per seed in points, summarised, and ``shipped_completed`` /
``long_completed``: how many runs ended at their configured epochs rather than at the budget).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # noqa: F401  (first: hjepa_kit before torch)
from _quality_report import draw, long_table, overview, protocol_table, report, summarise, summarise_long, table
import attrs
import torch
import yaml

import hjepa_kit
from hjepa_kit.api import _source
from hjepa_kit.config import ComponentSpec, load_config
from hjepa_kit.data.loader import iter_eval_batches
from hjepa_kit.evaluation.features import extract_features, extract_features_and_tokens, feature_sets
from hjepa_kit.evaluation.metrics import energy_rank_from_spectrum, feature_variance, rankme_from_spectrum, singular_values
from hjepa_kit.training.trainer import Trainer

DATASETS = {
    "digits": {"name": "digits", "params": {}},
    # The same digits resized with nearest-neighbour resampling (each source pixel a solid square).
    "digits_nearest": {"name": "digits", "params": {"interpolation": "nearest"}},
    "synthetic": {"name": "synthetic", "params": {"num_train": 4096, "num_test": 1024, "image_size": 32}},
}
DEFAULT_DATASETS = ["digits", "digits_nearest", "synthetic"]
#: ``--protocols``: the field's other frozen-feature protocols, run at the end of each run and on its
#: untrained network (``few_shot`` per representation and on the raw pixels; ``attentive_probe`` on
#: the patch tokens, which every representation is pooled from).
PROTOCOLS = ("few_shot", "attentive_probe")


def dataset_specs(names: list[str], assignments: list[str]) -> dict[str, dict[str, Any]]:
    """The specs of ``names`` from :data:`DATASETS`, with ``DATASET.KEY=VALUE`` (YAML-typed) applied."""
    specs = {name: {"name": DATASETS[name]["name"], "params": dict(DATASETS[name]["params"])} for name in names}
    for item in assignments:
        key, sep, value = item.partition("=")
        dataset, dot, param_name = key.partition(".")
        if not sep or not dot or not param_name:
            raise SystemExit(f"--dataset-param {item!r}: expected DATASET.KEY=VALUE, e.g. synthetic.num_train=256")
        if dataset not in specs:
            raise SystemExit(f"--dataset-param {item!r}: {dataset!r} is not among --datasets ({', '.join(specs)})")
        specs[dataset]["params"][param_name] = yaml.safe_load(value)
    return specs


def _figures(result: Any) -> dict[str, float]:
    return {k: float(v) for k, v in getattr(result, "metrics", result).items()}


def core_seconds() -> float:
    """This process's CPU seconds per torch thread."""
    return time.process_time() / max(torch.get_num_threads(), 1)


class Evaluator:
    """k-NN(20) and linear probe on a dataset's full splits, built from the run's registry."""

    def __init__(self, trainer: Trainer, protocols: tuple[str, ...] = ()) -> None:
        self.trainer = trainer
        self.train = trainer.dataset.load("train")
        self.test = trainer.dataset.load("test")
        self.num_classes = int(trainer.dataset.num_classes)
        knn, linear = trainer.registry.get("evaluator", "knn_faiss"), trainer.registry.get("evaluator", "linear_probe")
        self.knn = knn.build(knn.params(k=(20,)), trainer.ctx)
        self.linear = linear.build(linear.params(), trainer.ctx)
        entries = {name: trainer.registry.get("evaluator", name) for name in protocols}
        self.protocols = {name: entry.build(entry.params(), trainer.ctx) for name, entry in entries.items()}

    def _kwargs(self) -> dict[str, Any]:
        cfg = self.trainer.config
        return dict(image_size=self.trainer.ctx.image_size, batch_size=cfg.data.eval_batch_size,
                    mean=cfg.data.augmentation.mean, std=cfg.data.augmentation.std,
                    device=self.trainer.device, autocast_dtype=self.trainer.amp_dtype)

    def features(self, tokens: bool = False) -> dict[str, Any]:
        model = self.trainer.model
        if tokens:
            train, train_tokens = extract_features_and_tokens(model, self.train, **self._kwargs())
            test, test_tokens = extract_features_and_tokens(model, self.test, **self._kwargs())
            return feature_sets(train, self.train.labels, test, self.test.labels, self.num_classes,
                                train_tokens=train_tokens, test_tokens=test_tokens)
        train = extract_features(model, self.train, **self._kwargs())
        test = extract_features(model, self.test, **self._kwargs())
        return feature_sets(train, self.train.labels, test, self.test.labels, self.num_classes)

    def protocol_figures(self, sets: dict[str, Any], attentive: bool = True) -> dict[str, Any]:
        """``--protocols``: few-shot top-1 per representation and shot count, the attentive probe's top-1."""
        out: dict[str, Any] = {}
        if "few_shot" in self.protocols:
            for name in sets:
                figures = _figures(self.protocols["few_shot"](sets, name))
                out.setdefault("few_shot", {})[name] = {
                    k.split("/")[1].removesuffix("shot_top1"): v for k, v in figures.items() if k.endswith("shot_top1")
                }
        if attentive and "attentive_probe" in self.protocols:
            with_tokens = next(name for name, fs in sets.items() if fs.has_tokens)
            result = self.protocols["attentive_probe"](sets, with_tokens)
            out["attentive_probe"] = {"tokens_of": with_tokens, "top1": _figures(result)["attentive_probe/top1"]}
        return out

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
            spectrum = singular_values(fs.train)  # one SVD for RankMe and the energy rank
            out[name] = {
                "knn": _figures(self.knn(sets, name))["knn/top1@20"],
                "linear": _figures(self.linear(sets, name))["linear_probe/top1"],
                "rankme": float(rankme_from_spectrum(spectrum)),
                # The plan's two graded feature figures, as the feature_quality evaluator computes
                # them (train split): mean per-dimension variance, 95%-energy rank / width.
                "variance": float(feature_variance(fs.train).mean()),
                "rank95": energy_rank_from_spectrum(spectrum, 0.95) / int(fs.train.shape[1]),
                "width": int(fs.train.shape[1]),
            }
        return out


class BudgetCallback:
    """Evaluates at the curve's minutes, stops the run at the budget; evaluation time is not counted."""

    def __init__(self, curve: list[float], budget_min: float, protocols: tuple[str, ...] = ()) -> None:
        self.protocols = protocols
        self.untrained_protocols: dict[str, Any] = {}
        self.curve = sorted(curve)
        self.budget_s = budget_min * 60.0
        self.points: list[dict[str, Any]] = []
        self.eval_core_s = 0.0
        self.start = 0.0
        self.evaluator: Evaluator | None = None
        self.trainer: Trainer | None = None

    def elapsed(self) -> float:
        return core_seconds() - self.start - self.eval_core_s

    def _evaluate(self, minute: float, step: int, sets: dict[str, Any] | None = None) -> None:
        t0 = core_seconds()
        knn = self.evaluator.knn_top1(sets if sets is not None else self.evaluator.features())
        self.eval_core_s += core_seconds() - t0
        self.points.append({"minute": minute, "step": step, "knn": knn})

    @hjepa_kit.hookimpl
    def hjepa_fit_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.evaluator = Evaluator(trainer, self.protocols)
        sets = None
        if self.protocols:  # the untrained network's figures, before the clock starts
            sets = self.evaluator.features(tokens=True)
            self.untrained_protocols = self.evaluator.protocol_figures(sets)
        self.start = core_seconds()
        self._evaluate(0.0, trainer.step, sets)  # the random-init baseline of this very run

    @hjepa_kit.hookimpl
    def hjepa_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        elapsed = self.elapsed() / 60.0
        while self.curve and elapsed >= self.curve[0]:
            self._evaluate(self.curve.pop(0), step)
        if self.elapsed() >= self.budget_s:
            trainer.request_stop(f"quality benchmark budget of {self.budget_s / 60:g} CPU-minutes reached")


def long_curve(curve: list[float], factor: int, budget_min: float) -> list[float]:
    """The long run's curve minutes: the shipped ones and each times ``factor``, within its budget."""
    return sorted(m for m in {*curve, *(m * factor for m in curve)} if m <= budget_min)


def run_one(config_source: Any, dataset: str, seed: int, args: argparse.Namespace, out_dir: Path,
            factor: int = 1, pixel_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrains ``dataset`` with ``seed``: the shipped schedule, or ``training.epochs`` times ``factor``.

    The raw-pixel baseline depends on the dataset alone (not on the seed or the schedule): it is
    computed once per dataset and kept in ``pixel_cache``.
    """
    tag = f"quality_{dataset}_{seed}" + (f"_x{factor}" if factor > 1 else "")
    overrides = [*args.set, f"seed={seed}", f"output_dir={out_dir}", f"name={tag}",
                 "evaluation.online=null", "checkpoint.save_final=false", "checkpoint.every_epochs=1000000"]
    config = load_config(config_source, overrides)
    shipped_epochs = config.training.epochs
    config = attrs.evolve(config, data=attrs.evolve(config.data, dataset=ComponentSpec(**args.dataset_specs[dataset])),
                          training=attrs.evolve(config.training, epochs=shipped_epochs * factor))
    budget_min = args.budget_min * factor
    curve = list(args.curve) if factor == 1 else long_curve(args.curve_requested, factor, budget_min)
    callback = BudgetCallback(curve, budget_min, tuple(args.protocols))
    label = f"{args.config} ({dataset}, seed {seed}" + (f", {factor}x epochs)" if factor > 1 else ")")
    trainer = Trainer(config, plugins=[callback], source=label, console=args.verbose)
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    train_minutes = callback.elapsed() / 60.0
    sets = callback.evaluator.features(tokens=bool(args.protocols))
    final = callback.evaluator.full(sets)
    cache = pixel_cache if pixel_cache is not None else {}
    if dataset not in cache:
        pixel_sets = callback.evaluator.pixels()
        cache[dataset] = callback.evaluator.full(pixel_sets)["pixels"]
        if "few_shot" in args.protocols:
            cache[dataset]["few_shot"] = callback.evaluator.protocol_figures(pixel_sets, attentive=False)["few_shot"]["pixels"]
    pixels = dict(cache[dataset])
    protocols = {}
    if args.protocols:
        protocols = {"trained": callback.evaluator.protocol_figures(sets), "untrained": callback.untrained_protocols}
    # Curve points past the end of a completed run carry its final figures.
    for minute in callback.curve:
        callback.points.append({"minute": minute, "step": trainer.step, "knn": {k: v["knn"] for k, v in final.items()},
                                "after_end": True})
    loss = trainer.last_metrics.get("loss")
    return {
        "dataset": dataset, "seed": seed, "schedule": "shipped" if factor == 1 else "long", "factor": factor,
        "epochs_configured": config.training.epochs, "budget_min": budget_min,
        "representation": config.evaluation.representation,
        "status": result.status, "steps": trainer.step, "epochs": trainer.epoch,
        "completed": result.status == "completed",  # ended at its configured epochs, not at the budget
        "train_core_minutes": train_minutes, "wall_s": wall, "final_loss": loss,
        "curve": callback.points, "final": final, "pixels": pixels, "protocols": protocols,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart", help="config file or bundled name (default quickstart)")
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=sorted(DATASETS))
    parser.add_argument("--dataset-param", action="append", default=[], metavar="DATASET.KEY=VALUE",
                        help="dataset parameter (repeatable), e.g. synthetic.num_train=256")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-min", type=float, default=10.0, help="core-minutes of pretraining per run")
    parser.add_argument("--curve", nargs="+", type=float, default=[1, 2, 5, 10], help="minutes at which k-NN is measured")
    parser.add_argument("--long-factor", type=int, default=0, metavar="F",
                        help="also run every dataset and seed with training.epochs x F and a budget x F, and report "
                        "its final figures beside the shipped length's (0: off)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--protocols", nargs="*", default=[], choices=PROTOCOLS,
                        help="also run these evaluators at the end of each run and on its untrained network: few_shot "
                        "(1/5/10 labels per class, per representation and on the raw pixels), attentive_probe (on the patch tokens)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--figure", type=Path, metavar="OUT.png", help="draw the time-to-accuracy curves here")
    parser.add_argument("--verbose", action="store_true", help="echo the training log")
    args = parser.parse_args(argv)
    if args.long_factor < 0 or args.long_factor == 1:
        parser.error("--long-factor must be 0 (off) or at least 2")
    args.dataset_specs = dataset_specs(args.datasets, args.dataset_param)
    args.curve_requested = sorted(args.curve)
    args.curve = [m for m in args.curve if m <= args.budget_min]
    source, _name = _source(args.config)
    representation = load_config(source, args.set).evaluation.representation
    runs, long_runs = [], []
    pixels: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hjepa_quality_") as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                runs.append(run_one(source, dataset, seed, args, Path(tmp), pixel_cache=pixels))
                print(report(runs[-1]), flush=True)
                if args.long_factor:
                    long_runs.append(run_one(source, dataset, seed, args, Path(tmp), factor=args.long_factor,
                                             pixel_cache=pixels))
                    print(report(long_runs[-1]), flush=True)
    summary = summarise(runs)
    long = summarise_long(runs, long_runs, args.long_factor) if long_runs else {}
    for dataset, entry in long.items():
        summary[dataset]["long"] = entry
    print(table(summary))
    print(overview(summary, representation))
    if long:
        print(long_table(summary, long, representation))
    if args.protocols:
        print(protocol_table(runs))
    payload = {"machine": _machine.machine(), "config": args.config, "overrides": args.set,
               "representation": representation, "budget_min": args.budget_min, "seeds": args.seeds,
               "datasets": args.dataset_specs, "long_factor": args.long_factor,
               "figure": str(args.figure) if args.figure else None,
               "summary": summary, "runs": runs, "long_runs": long_runs}
    _machine.write_json(args.json, payload)
    if args.figure:
        draw(payload, args.figure)
        print(f"# wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
