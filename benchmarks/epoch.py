"""One training epoch end to end through ``Trainer.fit``, with memory sampled along the way.

Runs the configuration's training as users run it (``Trainer.fit``: loader, masking, steps,
schedules, logging, callbacks, the end-of-epoch checkpoint and ``final.pth``), on a synthetic
in-RAM dataset of CIFAR's shape (50,000 uint8 images of 32 x 32, resized to the run's
``data.image_size`` by the training augmentation, as CIFAR-10 is). Online evaluation is switched
off: ``benchmarks/evaluate.py`` times evaluation.

A step callback records the wall time and the resident memory (RSS) after every step and keeps,
for every ``--rss-every`` steps, the largest value seen, so the figures show whether memory stays
flat after the first 100 steps. (The trainer gives free heap pages back every
``training.release_memory_every_steps``; the window's largest value includes the steps between.)

By default a run stops after ``--budget-s`` seconds (300) and the epoch time is *extrapolated*
from the steady rate (steps after the first ``--skip`` are timed); the output says so. Use
``--budget-s 0`` for the full epoch (about 5-10 minutes for ``configs/cifar10_native32.yaml`` on
2 cores, hours for the plan's 224 run).

    python benchmarks/epoch.py --config configs/cifar10_native32.yaml --budget-s 0 --json results/bench_epoch32.json
    python benchmarks/epoch.py --config configs/cpu_cifar10.yaml --json results/bench_epoch224.json
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
from hjepa_kit import hookimpl
from hjepa_kit.training.trainer import Trainer
from throughput import RecordingMasker, benchmark_overrides, mean_flops_per_image, peak_shapes


class EpochProbe:
    """A run-scoped plugin: step times, RSS samples, and the stop for ``--budget-s``."""

    def __init__(self, rss_every: int, budget_s: float) -> None:
        self.rss_every = rss_every
        self.budget_s = budget_s
        self.fit_start: float | None = None
        self.step_times: list[float] = []
        self.rss: list[tuple[int, float, float]] = []  # (step, seconds since fit start, largest MB of the window)
        self.rss_released: list[tuple[int, float, float]] = []  # RSS right after the trainer released free pages
        self._window_mb = 0.0
        self._releases_seen = 0
        self.budget_hit = False

    @hookimpl
    def hjepa_fit_start(self, trainer: Any) -> None:
        masker = trainer.train_step.masker = RecordingMasker(trainer.train_step.masker)  # the masks drawn, for the FLOPs per image
        masker.recording = True
        self.fit_start = time.perf_counter()
        self.rss.append((0, 0.0, _machine.rss_mb()))

    @hookimpl
    def hjepa_step_end(self, trainer: Any, step: int, metrics: Any) -> None:
        now = time.perf_counter() - (self.fit_start or 0.0)
        self.step_times.append(now)
        rss = _machine.rss_mb()
        self._window_mb = max(self._window_mb, rss)
        if trainer.heap.calls > self._releases_seen:  # the trainer released free pages in this step
            self._releases_seen = trainer.heap.calls
            self.rss_released.append((step, now, rss))
        if step % self.rss_every == 0:
            self.rss.append((step, now, self._window_mb))
            self._window_mb = 0.0
        if self.budget_s and now > self.budget_s and step < trainer.total_steps:
            self.budget_hit = True
            trainer.total_steps = step  # the loop ends after this step ("stopped")


def rss_summary(samples: list[tuple[int, float, float]], after_step: int = 100) -> dict[str, Any]:
    """Memory after ``after_step``: the sample there, the last one, the largest, and a fitted slope.

    Growth is judged by the last sample against the one at ``after_step`` (and the slope); the
    largest sample also shows transient peaks (a burst of temporary tensors) that are given back.
    """
    late = [s for s in samples if s[0] >= after_step]
    if len(late) < 2:
        return {"after_step": after_step, "samples": len(late)}
    steps = [s[0] for s in late]
    mbs = [s[2] for s in late]
    mean_s, mean_m = sum(steps) / len(steps), sum(mbs) / len(mbs)
    var = sum((s - mean_s) ** 2 for s in steps)
    slope = sum((s - mean_s) * (m - mean_m) for s, m in zip(steps, mbs)) / var if var else 0.0
    return {
        "after_step": after_step,
        "samples": len(late),
        "rss_mb_at_start": mbs[0],
        "rss_mb_at_end": mbs[-1],
        "rss_mb_max_after": max(mbs),
        "growth_mb": mbs[-1] - mbs[0],
        "largest_excess_mb": max(mbs) - mbs[0],
        "slope_mb_per_1000_steps": 1000 * slope,
    }


def print_memory(label: str, summary: dict[str, Any], samples: list[tuple[int, float, float]], peak_mb: float | None) -> None:
    peak = f"; peak RSS {peak_mb:.0f} MB" if peak_mb is not None else ""
    if "growth_mb" in summary:
        print(f"{label}: {summary['rss_mb_at_start']:.0f} MB at step {summary['after_step']}, "
              f"{summary['rss_mb_at_end']:.0f} MB at the end ({summary['growth_mb']:+.0f} MB; fitted slope "
              f"{summary['slope_mb_per_1000_steps']:+.1f} MB per 1000 steps); largest {summary['rss_mb_max_after']:.0f} MB{peak}")
    else:
        print(f"{label}: too few steps after step 100 to judge growth{peak}")
    shown = samples if len(samples) <= 12 else samples[:: max(1, len(samples) // 12)] + [samples[-1]]
    print("  samples " + "  ".join(f"{s}:{m:.0f}" for s, _, m in shown) + "  (step:MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--images", type=int, default=50_000, help="images in the synthetic training split (one epoch)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop after this many seconds and extrapolate (0: the whole epoch)")
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the steady rate (warm-up)")
    parser.add_argument("--rss-every", type=int, default=20,
                        help="record the largest RSS of every N optimizer steps (RSS is read after every step)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the whole run, for the extrapolated run time")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.add_argument("--callbacks", action="store_true", help="keep the configuration's callbacks (TensorBoard, progress bar)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra configuration override (repeatable)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                        help="training.compile; default: the configuration's, decided as its full run would (compile time is included)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    base = hjepa_kit.load_config(args.config)
    batch = args.batch_size or base.data.batch_size
    steps_per_epoch = args.images // (batch * base.training.accumulation_steps)
    probe = EpochProbe(args.rss_every, args.budget_s)
    with tempfile.TemporaryDirectory(prefix="hjepa-epoch-") as tmp:
        overrides = benchmark_overrides(
            base, output_dir=tmp, num_train=args.images, batch_size=args.batch_size, precision=args.precision,
            threads=args.threads, device=args.device, compile=args.compile,
            extra=[f"training.max_steps={steps_per_epoch}", *args.set],
        )
        if args.callbacks:
            overrides = [o for o in overrides if o != "callbacks=[]"]
        config = hjepa_kit.load_config(args.config, overrides)
        load_start = _machine.load_average()
        started = time.perf_counter()
        trainer = Trainer(config, plugins=[probe], console=False)
        result = trainer.fit()
        total_s = time.perf_counter() - started
        # The arithmetic of the masks this epoch drew, and the machine's matmul peak, in this run.
        gflop_per_image = mean_flops_per_image(trainer, trainer.train_step.masker.seen, next(iter(trainer.loader))[0]) / 1e9
        step_dtype = trainer.amp_dtype or torch.float32
        peak = _machine.matmul_peak_gflops(trainer.device, step_dtype, peak_shapes(trainer, batch))
    info = _machine.machine(trainer.device)
    fit_s = total_s - (probe.fit_start - started if probe.fit_start else 0.0)
    setup_s = total_s - fit_s
    steps = len(probe.step_times)
    images_per_step = batch * config.training.accumulation_steps
    skip = min(args.skip, max(steps - 2, 0))
    steady_s = probe.step_times[-1] - probe.step_times[skip - 1] if skip else probe.step_times[-1]
    steady_ips = (steps - skip) * images_per_step / steady_s
    full = not probe.budget_hit and steps == steps_per_epoch
    epoch_images = steps_per_epoch * images_per_step
    # Measured when the epoch ran to its end; else the time so far plus the rest at the steady rate.
    epoch_s = fit_s if full else fit_s + (steps_per_epoch - steps) * images_per_step / steady_ips
    out: dict[str, Any] = {
        "benchmark": "epoch",
        "config": str(args.config),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "status": result.status,
        "measured": "full epoch" if full else f"{steps} of {steps_per_epoch} steps, rest extrapolated at the steady rate",
        "extrapolated": not full,
        "device": str(trainer.device),
        "dtype": "bfloat16" if trainer.amp_dtype is not None else "float32",
        "threads": trainer.threads,
        "batch_size": batch,
        "accumulation_steps": config.training.accumulation_steps,
        "image_size": trainer.ctx.image_size,
        "epoch_images": epoch_images,
        "steps_done": steps,
        "steps_per_epoch": steps_per_epoch,
        "setup_s": setup_s,
        "fit_s": fit_s,
        "steady_images_per_s": steady_ips,
        "gflop_per_image": gflop_per_image,
        "steady_gflops": gflop_per_image * steady_ips,
        "peak_gflops": peak["gflops"],
        "peak_detail": peak,
        "fraction_of_peak": gflop_per_image * steady_ips / peak["gflops"],
        "epoch_s": epoch_s,
        "epoch_min": epoch_s / 60,
        "compiled": trainer.compiled,
        "release_memory_every_steps": config.training.release_memory_every_steps,
        "heap_trims": trainer.heap.calls,
        "heap_trim_s": trainer.heap.seconds,
        "run_epochs": args.epochs,
        "run_hours": args.epochs * epoch_s / 3600,
        "rss_samples": [{"step": s, "s": round(t, 1), "rss_mb": round(m, 1)} for s, t, m in probe.rss],
        "rss_after_100": rss_summary(probe.rss, 100),
        "rss_after_release_samples": [{"step": s, "rss_mb": round(m, 1)} for s, _, m in probe.rss_released],
        "rss_after_release_after_100": rss_summary(probe.rss_released, 100),
        "peak_rss_mb": _machine.peak_rss_mb(),
        "load_average_start": load_start,
        "load_average_end": _machine.load_average(),
        "machine": info,
    }
    print(f"# {info['cpu']} | {info['physical_cores']} physical cores | {trainer.threads} threads | torch {info['torch']} | "
          f"{out['device']} {out['dtype']} | load {_machine.fmt_load(load_start)} -> {_machine.fmt_load(out['load_average_end'])}")
    print(f"# {config.name}: batch {batch} x accumulation {config.training.accumulation_steps}, {trainer.ctx.image_size}px, "
          f"{epoch_images} images per epoch ({steps_per_epoch} steps)")
    print(f"measured          {out['measured']} (status {result.status})"
          + (" | compiled (compile time included)" if trainer.compiled else "")
          + (f" | free pages released every {config.training.release_memory_every_steps} steps "
             f"({trainer.heap.calls} times, {trainer.heap.seconds:.2f} s)" if trainer.heap.enabled else " | free pages never released"))
    print(f"setup             {setup_s:8.1f} s (dataset, model)")
    print(f"training          {fit_s:8.1f} s for {steps} steps ({steps * images_per_step} images), "
          f"steady {steady_ips:.1f} img/s")
    print(f"arithmetic        {gflop_per_image:.3f} GFLOP per image (the masks drawn) -> {out['steady_gflops']:.0f} GFLOP/s steady "
          f"= {100 * out['fraction_of_peak']:.0f}% of the {peak['gflops']:.0f} GFLOP/s {peak['dtype']} matmul peak measured after the epoch")
    label = "epoch" if full else "epoch (EXTRAPOLATED)"
    print(f"{label:<17} {epoch_s:8.1f} s = {epoch_s / 60:.1f} min;  {args.epochs} epochs = {out['run_hours']:.2f} h"
          + ("" if full else " (extrapolated)"))
    print_memory("memory (largest RSS of each window)", out["rss_after_100"], probe.rss, out["peak_rss_mb"])
    if probe.rss_released:
        print_memory("memory (RSS right after a release)", out["rss_after_release_after_100"], probe.rss_released, None)
    _machine.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
