"""Evaluation of 50,000 + 10,000 images end to end: features once, then k-NN and the linear probe.

Runs :func:`hjepa_kit.evaluation.run.run_evaluation` (what ``hjepa evaluate`` runs) on a checkpoint:
by default one written here from the configuration's freshly built model (untrained weights;
the cost of extracting features does not depend on the weights, that of the probe a little), with
a synthetic labelled dataset of CIFAR's shape (``--train`` / ``--test`` images of 32 x 32,
resized to the run's image size by the evaluation transform). ``--checkpoint`` evaluates a real
checkpoint's configuration and weights on the same synthetic data instead.

Prints the time of each part (data, feature extraction, each evaluator) and the total; the figure
the targets speak of is features + k-NN + linear probe. ``--own-data`` evaluates a checkpoint on
its own dataset instead of the synthetic one (the quickstart's digits); an evaluator that trains
for epochs (``fine_tune``) also prints each epoch's seconds and accuracy.

    python benchmarks/evaluate.py --config configs/cifar10_native32.yaml --json results/bench_eval32.json
    python benchmarks/evaluate.py --config configs/cifar10_native32.yaml --eval-type all --report
    python benchmarks/evaluate.py --checkpoint results/checkpoints/quickstart/final.pth --own-data --eval-type fine_tune
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # first: imports hjepa_kit before torch (OMP_WAIT_POLICY)
import torch

import hjepa_kit
from hjepa_kit.training.checkpoint import load_checkpoint, save_checkpoint
from hjepa_kit.evaluation.run import run_evaluation
from hjepa_kit.training.trainer import Trainer
from throughput import benchmark_overrides, prepare


def write_untrained_checkpoint(args: argparse.Namespace, folder: str) -> Path:
    """A checkpoint of the configuration's model as built (the trainer's own state_dict)."""
    base = hjepa_kit.load_config(args.config)
    overrides = benchmark_overrides(base, output_dir=folder, num_train=max(base.data.batch_size * base.training.accumulation_steps, 256),
                                    device="cpu", compile="off", extra=args.set)
    trainer = Trainer(hjepa_kit.load_config(args.config, overrides), console=False)
    prepare(trainer)
    return save_checkpoint(trainer.state_dict(), Path(folder) / "untrained.pth")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="run configuration (its model is built untrained)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint's model instead")
    parser.add_argument("--train", type=int, default=50_000, help="labelled training images (features, k-NN reference, probe fit)")
    parser.add_argument("--test", type=int, default=10_000, help="test images")
    parser.add_argument("--eval-type", nargs="+", default=["knn", "linear_probe"], help="as `hjepa evaluate --eval-type`")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="default: the configuration's data.eval_batch_size")
    parser.add_argument("--report", action="store_true", help="also write the report and TensorBoard files (timed in the total)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra configuration override (repeatable)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                        help="evaluation.compile (default: the configuration's; auto compiles from 10,000 images)")
    parser.add_argument("--own-data", action="store_true", help="with --checkpoint: its own dataset, not synthetic images")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if (args.config is None) == (args.checkpoint is None):
        parser.error("give exactly one of --config and --checkpoint")
    if args.own_data and args.checkpoint is None:
        parser.error("--own-data evaluates a checkpoint on its dataset: give --checkpoint")

    with tempfile.TemporaryDirectory(prefix="hjepa-eval-") as tmp:
        checkpoint = args.checkpoint or write_untrained_checkpoint(args, tmp)
        state = load_checkpoint(checkpoint)
        source = int(state.get("build", {}).get("image_size") or 32)
        dataset = {"name": "synthetic", "params": {"num_train": args.train, "num_test": args.test, "image_size": 32}}
        overrides = [] if args.own_data else [f"data.dataset={json.dumps(dataset)}", f"data.image_size={source}"]
        if args.threads is not None:
            overrides.append(f"training.threads={args.threads}")
        if args.precision is not None:
            overrides.append(f"training.precision={args.precision}")
        if args.compile is not None:
            overrides.append(f"evaluation.compile={ {'on': 'true', 'off': 'false'}.get(args.compile, args.compile)}")
        if args.eval_batch_size is not None:
            overrides.append(f"data.eval_batch_size={args.eval_batch_size}")
        overrides += args.set  # also the evaluators' parameters (evaluation.evaluators=...)
        load_start = _machine.load_average()
        started = time.perf_counter()
        result = run_evaluation(
            checkpoint, eval_types=args.eval_type, device=args.device, overrides=overrides,
            output_dir=Path(tmp) / "eval", write_report=args.report,
        )
        wall_s = time.perf_counter() - started
        config = hjepa_kit.load_config(state["config"], overrides)
    timings = result["timings"]
    evaluators = {k: v for k, v in timings.items() if k not in ("load_data_s", "features_s", "total_s")}
    work_s = timings["features_s"] + sum(evaluators.values())
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    info = _machine.machine(device)
    out: dict[str, Any] = {
        "benchmark": "evaluate",
        "config": str(args.config or args.checkpoint),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "weights": "trained checkpoint" if args.checkpoint else "untrained (as built)",
        "images": "the checkpoint's dataset" if args.own_data else {"train": args.train, "test": args.test},
        "epochs": {name: items["history"] for name, items in result["artifacts"].items() if isinstance(items.get("history"), list)},
        "image_size": source,
        "eval_batch_size": config.data.eval_batch_size,
        "threads": torch.get_num_threads(),
        "precision": config.training.precision,
        "timings_s": timings,
        "features_images_per_s": None if args.own_data else (args.train + args.test) / timings["features_s"],
        "features_compiled": result["features_compiled"],
        "features_plus_evaluators_s": work_s,
        "total_s": wall_s,
        "metrics": result["metrics"],
        "peak_rss_mb": _machine.peak_rss_mb(),
        "load_average_start": load_start,
        "load_average_end": _machine.load_average(),
        "machine": info,
    }
    print(f"# {info['cpu']} | {info['physical_cores']} physical cores | {out['threads']} threads | torch {info['torch']} | "
          f"{device} precision {config.training.precision} | load {_machine.fmt_load(load_start)} -> {_machine.fmt_load(out['load_average_end'])}")
    images = f"{config.data.dataset.name} images" if args.own_data else f"{args.train} + {args.test} images"
    print(f"# {out['config']}: {images} at {source}px, {out['weights']} weights, eval batch {config.data.eval_batch_size}")
    print(f"{'data (' + config.data.dataset.name + ')':<26} {timings['load_data_s']:8.1f} s")
    rate = "" if args.own_data else f"{out['features_images_per_s']:.0f} images/s, "
    print(f"{'features':<26} {timings['features_s']:8.1f} s   ({rate}"
          f"{'compiled with frozen weights, compile time included' if out['features_compiled'] else 'uncompiled'})")
    for name, seconds in evaluators.items():
        print(f"{name.removesuffix('_s'):<26} {seconds:8.1f} s")
    for name, history in out["epochs"].items():
        for h in history:
            print(f"  {name} epoch {h['epoch']:<3} {h['seconds']:8.1f} s   test top-1 {h['test_top1']:.4f}  train top-1 {h['train_top1']:.4f}")
    print(f"{'features + evaluators':<26} {work_s:8.1f} s = {work_s / 60:.2f} min")
    print(f"{'total (with setup)':<26} {wall_s:8.1f} s;  peak RSS {out['peak_rss_mb']:.0f} MB")
    shown = {k: round(v, 4) for k, v in result["metrics"].items() if "top1" in k}
    print(f"figures{'' if args.checkpoint else ' (untrained weights mean little)'} {shown}")
    _machine.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
