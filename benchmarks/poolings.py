"""Is it the learning or the pooling? k-NN(20) of one run's tokens pooled several ways, along the run.

A representation's k-NN mixes what pretraining learned with how the patch tokens are pooled: on the
bilinear digits the max-pooled tokens of an *untrained* ViT-Tiny already score 0.90, the
mean-pooled ones 0.56. For one config, dataset and seed this pretrains and, at step 0 (the
untrained network) and every ``--every`` optimizer steps, pools the target encoder's final tokens
(each layer-normalised without parameters, as the predictor's levels read them) every way below
and measures each pooling's k-NN(20) on the dataset's full splits, beside the run's own
representations (``encoder``, ``level0`` ...) and the raw pixels:

* ``mean``: the tokens averaged (as the ``encoder`` representation; the layer norm aside);
* ``max``: the per-dimension maximum over tokens (the hierarchical predictor's ``level0``);
* ``gem<p>``: the generalised mean ``(mean_t max(x, 0)^p)^(1/p)`` for each ``--gem-power`` p
  (default 3: ``gem3``), between the mean of the positive parts (p = 1) and the max (p -> inf);
  Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018,
  https://arxiv.org/abs/1711.02512;
* ``grid2``: the tokens averaged over each quarter of the patch grid (2 x 2 cells), the four
  means side by side (4 x D dimensions): where in the image a feature is, kept coarsely.

A pooling whose figure rises from its own step-0 value measures learning; one that is high at
step 0 measures the pooling. The curve also shows a long schedule's drift per pooling.

    HJEPA_THREADS=1 python benchmarks/poolings.py --dataset digits --set training.epochs=20 --every 40 --json p.json
    HJEPA_THREADS=1 python benchmarks/poolings.py --dataset synthetic --set training.max_steps=440 --every 40
    HJEPA_THREADS=1 python benchmarks/poolings.py --dataset synthetic --gem-power 3 8 16   # gem3, gem8, gem16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import _machine  # noqa: F401  (first: hjepa_kit before torch)
import attrs
import torch.nn.functional as F
from quality import DATASETS, Evaluator, dataset_specs
from torch import Tensor

import hjepa_kit
from hjepa_kit.api import _source
from hjepa_kit.config import ComponentSpec, load_config
from hjepa_kit.evaluation.features import extract_features_and_tokens, feature_sets
from hjepa_kit.plugins.levels import generalised_mean
from hjepa_kit.training.trainer import Trainer

GEM_POWERS = (3.0,)


def gem_name(power: float) -> str:
    """The key of GeM at ``power``: ``gem3``, ``gem8``, ``gem2.5``."""
    return f"gem{power:g}"


def pool(tokens: Tensor, grid: tuple[int, int], gem_powers: tuple[float, ...] = GEM_POWERS) -> dict[str, Tensor]:
    """Every pooling of ``(N, T, D)`` tokens of a ``grid`` of patches (``T = rows x cols``), after a parameter-free layer norm.

    Returns:
        ``{"mean": (N, D), "max": (N, D), "gem<p>": (N, D) for each of gem_powers, "grid2": (N, 4 D)}`` float32.

    Raises:
        ValueError: when ``T`` is not the grid's number of patches, the grid has a side under 2, or a power is under 1.
    """
    rows, cols = grid
    if tokens.shape[1] != rows * cols or min(rows, cols) < 2:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fill a {rows} x {cols} patch grid of sides >= 2")
    if any(power < 1.0 for power in gem_powers):
        raise ValueError(f"GeM powers must be at least 1 (1 is the mean of the positive parts), got {list(gem_powers)}")
    normed = F.layer_norm(tokens.float(), (tokens.shape[-1],))
    gems = {gem_name(p): generalised_mean(normed, p, dim=1) for p in gem_powers}
    as_map = normed.transpose(1, 2).reshape(normed.shape[0], normed.shape[2], rows, cols)
    grid2 = F.adaptive_avg_pool2d(as_map, 2).flatten(1)  # (N, D * 4): each dimension's four quarter means
    return {"mean": normed.mean(dim=1), "max": normed.amax(dim=1), **gems, "grid2": grid2}


class PoolingCurve:
    """Measures every pooling's k-NN at step 0, every ``every`` steps and at the end."""

    def __init__(self, every: int, gem_powers: tuple[float, ...] = GEM_POWERS) -> None:
        self.every = every
        self.gem_powers = gem_powers
        self.points: list[dict[str, Any]] = []
        self.evaluator: Evaluator | None = None

    def measure(self, trainer: Trainer) -> None:
        ev = self.evaluator
        grid = tuple(trainer.ctx.grid_size)
        sets = {}
        for split, data in (("train", ev.train), ("test", ev.test)):
            pooled, tokens = extract_features_and_tokens(trainer.model, data, **ev._kwargs())
            sets[split] = {**pooled, **pool(tokens["encoder"], grid, self.gem_powers)}
        knn = ev.knn_top1(feature_sets(sets["train"], ev.train.labels, sets["test"], ev.test.labels, ev.num_classes))
        self.points.append({"step": trainer.step, "epoch": trainer.epoch, "knn": knn})
        print(f"step {trainer.step:5d}  " + "  ".join(f"{name} {value:.3f}" for name, value in knn.items()), flush=True)

    @hjepa_kit.hookimpl
    def hjepa_fit_start(self, trainer: Trainer) -> None:
        self.evaluator = Evaluator(trainer)
        self.measure(trainer)

    @hjepa_kit.hookimpl
    def hjepa_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0:
            self.measure(trainer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart", help="config file or bundled name (default quickstart)")
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    parser.add_argument("--dataset-param", action="append", default=[], metavar="DATASET.KEY=VALUE",
                        help="dataset parameter (repeatable), e.g. synthetic.num_train=256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=40, help="measure every N optimizer steps (and at step 0 and the end)")
    parser.add_argument("--gem-power", nargs="+", type=float, default=list(GEM_POWERS), metavar="P",
                        help="GeM powers to measure, each at least 1 (default 3); a large power nears the max")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", type=Path, help="write the curve here")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be at least 1")
    if min(args.gem_power) < 1.0:
        parser.error(f"--gem-power: every power must be at least 1, got {args.gem_power}")
    spec = dataset_specs([args.dataset], args.dataset_param)[args.dataset]
    source, _name = _source(args.config)
    curve = PoolingCurve(args.every, tuple(args.gem_power))
    with tempfile.TemporaryDirectory(prefix="hjepa_poolings_") as tmp:
        overrides = [*args.set, f"seed={args.seed}", f"output_dir={tmp}", "name=poolings", "evaluation.online=null",
                     "checkpoint.save_final=false", "checkpoint.every_epochs=1000000"]
        config = load_config(source, overrides)
        config = attrs.evolve(config, data=attrs.evolve(config.data, dataset=ComponentSpec(**spec)))
        trainer = Trainer(config, plugins=[curve], source=f"{args.config} ({args.dataset}, seed {args.seed})", console=False)
        trainer.fit()
        if curve.points[-1]["step"] != trainer.step:
            curve.measure(trainer)
        pixels = curve.evaluator.knn_top1(curve.evaluator.pixels())["pixels"]
    print(f"raw pixels {pixels:.3f}; untrained (step 0): "
          + "  ".join(f"{name} {value:.3f}" for name, value in curve.points[0]["knn"].items()))
    payload = {"machine": _machine.machine(), "config": args.config, "overrides": args.set, "dataset": spec,
               "seed": args.seed, "gem_powers": args.gem_power, "pixels_knn": pixels, "points": curve.points}
    _machine.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
