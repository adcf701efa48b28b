"""H-JEPA training-step throughput against a plain supervised ViT and the machine's matmul peak.

In one process, on synthetic uint8 data of the configuration's shape (CIFAR's 32 x 32 images,
resized to the configuration's ``data.image_size`` by the training augmentation, as the real run
does; no dataset is needed), this measures:

* the **H-JEPA step** as users run it: the trainer's own ``TrainStep.feed``, ``accumulation_steps``
  times, each with a batch from the trainer's own loader (forward and backward each time, then the
  optimizer update: schedules, gradient clipping, AdamW, EMA update): images/s;
* the **split of a step** into data, masking, target forward, context forward, predictor
  (forward + loss + backward), context backward, optimizer and EMA, from an instrumented replica
  of the same step (the sum is printed beside the real step, so a drift shows);
* the **FLOPs per image** of the step (``torch.utils.flop_counter``: matrix products and
  attention, forward and backward; element-wise work is not counted), for the very masks the
  timed steps drew, and the **mean context fraction** of those masks;
* the machine's **matmul peak** in the step's dtype and with the step's threads, in the same run,
  and the **fraction** of it the step reaches;
* a **reference**: a plain timm ``VisionTransformer`` of the encoder's size and resolution doing a
  supervised forward + backward + AdamW step (cross-entropy, 10 classes) on the same batch, with
  the same dtype, attention setting and accumulation.

H-JEPA, replica, reference and peak are measured in interleaved rounds, so a burst of load from
another process hits all of them; each figure is the median over rounds. Wall-clock and
process-CPU figures are both given: on a shared machine the CPU figures move less.

    python benchmarks/throughput.py --config configs/cifar10_native32.yaml
    python benchmarks/throughput.py --config configs/cpu_cifar10.yaml --steps 6 --json results/bench_224.json
    python benchmarks/throughput.py --config configs/cifar10_native32.yaml --threads 1 --precision fp32
    python benchmarks/throughput.py --config configs/cifar10_native32.yaml --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _machine  # first: imports hjepa_kit before torch (OMP_WAIT_POLICY)
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import hjepa_kit
from hjepa_kit.training.compiling import AUTO_TRAIN_MIN_STEPS, should_compile
from hjepa_kit.contracts import Masks, call_loss
from hjepa_kit.runtime import resolve_device
from hjepa_kit.training.trainer import Trainer

PHASES = ("data", "masking", "target forward", "context forward", "predictor fwd+bwd", "context backward", "optimizer", "EMA")


# --- building ---------------------------------------------------------------------------------


def benchmark_overrides(
    config: hjepa_kit.RunConfig,
    *,
    output_dir: str,
    num_train: int,
    source_size: int = 32,
    batch_size: int | None = None,
    precision: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    compile: str | None = None,
    extra: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """``--set`` overrides that turn a run configuration into its benchmark: same model and
    optimisation, synthetic uint8 data of CIFAR's shape resized to the run's image size, no online
    evaluation, no callbacks, outputs in ``output_dir``; ``training.compile`` as the configuration's
    full run would decide it (see :func:`compile_override`)."""
    dataset = {"name": "synthetic", "params": {"num_train": num_train, "num_test": 16, "image_size": source_size}}
    overrides = [
        f"data.dataset={json.dumps(dataset)}",
        f"data.image_size={config.data.image_size or source_size}",
        "evaluation.online=null",
        "callbacks=[]",
        f"output_dir={json.dumps(output_dir)}",
    ]
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    if precision is not None:
        overrides.append(f"training.precision={precision}")
    if threads is not None:
        overrides.append(f"training.threads={threads}")
    if device is not None:
        overrides.append(f"device={device}")
    overrides.append(compile_override(config, compile, batch_size=batch_size, device=device))
    return overrides + list(extra)


class RecordingMasker:
    """Wraps the run's masker; keeps the first two rows of every mask drawn while ``recording``.

    The FLOPs of a step depend on the mask sizes, which are drawn per batch: counting them for the
    masks the timed steps really drew makes the FLOPs per image exact for those steps.
    """

    def __init__(self, masker: Any) -> None:
        self.masker = masker
        self.recording = False
        self.seen: list[Masks] = []

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        masks = self.masker(batch_size, generator)
        if self.recording:
            self.seen.append(Masks(context=masks.context[:2].clone(), targets=masks.targets[:2].clone()))
        return masks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.masker, name)


def build_trainer(args: argparse.Namespace, output_dir: str) -> Trainer:
    base = hjepa_kit.load_config(args.config)
    batch = args.batch_size or base.data.batch_size
    accumulation = base.training.accumulation_steps
    overrides = benchmark_overrides(
        base, output_dir=output_dir, num_train=max(batch * accumulation * 4, 256), batch_size=args.batch_size,
        precision=args.precision, threads=args.threads, device=args.device, compile=args.compile, extra=args.set,
    )
    trainer = Trainer(hjepa_kit.load_config(args.config, overrides), console=False)
    prepare(trainer)
    args.compile = trainer.compiled
    trainer.train_step.masker = RecordingMasker(trainer.train_step.masker)
    trainer.model.train()
    return trainer


def prepare(trainer: Trainer) -> None:
    """What ``Trainer.fit`` does before its loop (``training.compile`` included), without outputs, callbacks or checkpoints."""
    trainer.device = resolve_device(trainer.config.device)  # fit() resolves the device before _build()
    trainer._build()


def compile_override(config: hjepa_kit.RunConfig, choice: str | None, *, images: int = 50_000, batch_size: int | None = None,
                     device: str | None = None) -> str:
    """``training.compile=true|false`` as the configuration's real run would decide it.

    A benchmark runs a few steps, so ``auto`` would never compile it; the run it stands for has
    ``epochs`` x ``images`` / (batch x accumulation) steps, and compiles where that run would.
    """
    choice = {"on": True, "off": False, "auto": "auto", None: config.training.compile}[choice]
    steps = config.training.epochs * (images // ((batch_size or config.data.batch_size) * config.training.accumulation_steps))
    on = should_compile(choice, resolve_device(device or config.device), large_enough=steps >= AUTO_TRAIN_MIN_STEPS,
                        key="training.compile")
    return f"training.compile={'true' if on else 'false'}"


def endless_batches(trainer: Trainer) -> Iterator[torch.Tensor]:
    """Augmented batches from the trainer's own loader, epoch after epoch."""
    epoch = 0
    while True:
        trainer.loader.set_epoch(epoch)
        for images, _ in trainer.loader:
            yield images
        epoch += 1


# --- the H-JEPA step ----------------------------------------------------------------------------


class HJEPABench:
    """Drives the trainer's own step, and an instrumented replica of it."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.accumulation = trainer.config.training.accumulation_steps
        self.batches = endless_batches(trainer)
        self.micro = 0

    def step(self) -> None:
        """One optimizer step exactly as ``Trainer._loop`` runs it."""
        t = self.trainer
        done = None
        while done is None:
            images = next(self.batches)
            # the micro-batch's place in an epoch, as the trainer's loop passes it (the health monitor
            # pools the features of the epoch's last micro-batches only)
            done = t.train_step.feed(images, epoch=t.epoch, batch_index=self.micro % len(t.loader))
            self.micro += 1
        t.step = done.step
        t.heap.after_step(t.step)

    def phased_step(self, watch: _machine.Stopwatch) -> None:
        """The same step, timed phase by phase (``TrainStep.forward_backward`` / ``TrainStep.optimizer_update`` unrolled).

        The backward pass is split at the context tokens: the predictor and loss backpropagate to
        a detached copy of them, then the context encoder backpropagates that gradient. The
        gradients are the same as one ``loss.backward()``.
        """
        t = self.trainer
        cfg = t.config
        model = t.model
        amp = t.amp_dtype
        for _ in range(self.accumulation):
            watch.start()
            images = next(self.batches)
            watch.lap("data")
            masks = t.train_step.masks(images.shape[0], t.epoch, self.micro)
            images = images.to(t.device, non_blocking=True)
            watch.lap("masking")
            with torch.autocast(t.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                _, targets = model.targets(images, masks)
                watch.lap("target forward")
                context = model.context_encoder(images, indices=masks.context).tokens
                watch.lap("context forward")
                leaf = context.detach().requires_grad_(True)
                predictions = model.predictor(leaf, masks)
                out = call_loss(t.loss_fn, predictions, targets, leaf, masks)
            loss = out.total
            float(loss.detach())
            (loss / self.accumulation).backward()
            watch.lap("predictor fwd+bwd")
            context.backward(leaf.grad)
            watch.lap("context backward")
            self.micro += 1
        step = t.step
        lr, wd = t.schedules.lr_at(step), t.schedules.weight_decay_at(step)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
            if group.get("apply_wd", True):
                group["weight_decay"] = wd
        params = [p for g in t.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if cfg.training.grad_clip is not None:
            float(torch.nn.utils.clip_grad_norm_(params, cfg.training.grad_clip))
        else:
            float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        watch.lap("optimizer")
        model.update_target(t.schedules.momentum_at(step))
        t.step += 1
        watch.lap("EMA")

def step_flops_per_image(t: Trainer, images: torch.Tensor, masks: Masks) -> float:
    """FLOPs of one image's share of a micro-step of ``t`` with these masks (forward + backward), counted eagerly."""
    model, amp = t.model, t.amp_dtype
    count = masks.context.shape[0]
    masks = masks.to(t.device)
    images = images[:count].to(t.device)
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        with torch.autocast(t.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            step = model.forward_step(images, masks)
            out = call_loss(t.loss_fn, step.predictions, step.targets, step.context, masks)
        out.total.backward()
    t.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / count


def mean_flops_per_image(t: Trainer, seen: list[Masks], images: torch.Tensor) -> float:
    """Mean FLOPs per image over the masks ``seen`` (2-image slices; FLOPs are linear in the batch)."""
    cache: dict[tuple[int, ...], float] = {}
    flops = []
    for masks in seen:
        key = (masks.context.shape[1], *masks.targets.shape[1:])
        if key not in cache:
            cache[key] = step_flops_per_image(t, images, masks)
        flops.append(cache[key])
    return sum(flops) / max(len(flops), 1)


# --- the reference ------------------------------------------------------------------------------


class ReferenceBench:
    """A plain timm ViT of the encoder's size: supervised forward + backward + AdamW on the same batch."""

    def __init__(self, trainer: Trainer, images: torch.Tensor, compiled: bool = False) -> None:
        from timm.models.vision_transformer import VisionTransformer

        encoder = trainer.model.context_encoder
        self.device = trainer.device
        self.amp = trainer.amp_dtype
        self.accumulation = trainer.config.training.accumulation_steps
        self.model = VisionTransformer(
            img_size=encoder.image_size, patch_size=encoder.patch_size, in_chans=encoder.in_chans,
            embed_dim=encoder.embed_dim, depth=encoder.depth, num_heads=encoder.num_heads, num_classes=10,
        ).to(self.device)
        fused = bool(getattr(encoder.blocks[0].attn, "fused_attn", False))
        for block in self.model.blocks:
            block.attn.fused_attn = fused  # the same attention path as the H-JEPA encoder
        self.fused_attention = fused
        self.model.train()
        if compiled:
            self.model.compile(dynamic=False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.images = images.to(self.device)
        self.labels = torch.randint(0, 10, (images.shape[0],), generator=torch.Generator().manual_seed(0)).to(self.device)

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        (loss / self.accumulation).backward()
        return loss

    def step(self) -> None:
        for _ in range(self.accumulation):
            float(self._forward_backward(self.images, self.labels).detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def flops_per_image(self) -> float:
        images, labels = self.images[:2], self.labels[:2]
        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
            self._forward_backward(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / 2


# --- measuring ----------------------------------------------------------------------------------


def timed_steps(fn: Any, steps: int, device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds of ``steps`` calls of ``fn``."""
    _machine.sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    _machine.sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def peak_shapes(trainer: Trainer, batch: int) -> list[tuple[int, int, int]]:
    """Square products (the hardware's best case) and the step's own widest product."""
    encoder = trainer.model.context_encoder
    rows = batch * encoder.num_patches
    if trainer.device.type == "cuda":
        return [(8192, 8192, 8192), (rows, encoder.embed_dim, 4 * encoder.embed_dim)]
    return [(2048, 2048, 2048), (min(rows, 8192), encoder.embed_dim, 4 * encoder.embed_dim)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hjepa-bench-") as tmp:
        trainer = build_trainer(args, tmp)
        return measure(args, trainer)


def measure(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any]:
    device = trainer.device
    cfg = trainer.config
    batch = cfg.data.batch_size
    accumulation = cfg.training.accumulation_steps
    views = cfg.data.views
    images_per_step = batch * accumulation * views  # through the encoder, as the run log's img/s and the FLOPs per image
    step_dtype = trainer.amp_dtype or torch.float32
    encoder = trainer.model.context_encoder
    hjepa = HJEPABench(trainer)
    info = _machine.machine(device)
    load_before = _machine.load_average()
    print(
        f"# {info['cpu']} | {info['physical_cores']} physical cores | {trainer.threads} threads | torch {info['torch']} "
        f"| {device} {str(step_dtype).removeprefix('torch.')} | load {_machine.fmt_load(load_before)}"
    )
    print(
        f"# {cfg.name}: {cfg.model.encoder.name}/{encoder.patch_size} at {encoder.image_size}px "
        f"({encoder.num_patches} patches), batch {batch} x accumulation {accumulation}"
        f"{f' x {views} views' if views > 1 else ''}, "
        f"predictor {cfg.model.predictor.name} {dict(cfg.model.predictor.params)}",
        flush=True,
    )

    warmup = args.warmup if not args.compile else max(args.warmup, 4)
    started = time.perf_counter()
    for _ in range(warmup):
        hjepa.step()
    warmup_s = time.perf_counter() - started
    reference = None
    if not args.no_reference:
        reference = ReferenceBench(trainer, next(hjepa.batches), compiled=args.compile)
        for _ in range(warmup):
            reference.step()

    rounds = max(1, args.rounds)
    per_round = max(1, math.ceil(args.steps / rounds))
    results: dict[str, list[float]] = {k: [] for k in ("hjepa_wall", "hjepa_cpu", "ref_wall", "ref_cpu", "peak", "replica_wall")}
    watch = _machine.Stopwatch(device)
    rss_after_hjepa = []
    peak_detail: dict[str, Any] = {}
    for round_index in range(rounds):
        trainer.train_step.masker.recording = True
        wall, cpu = timed_steps(hjepa.step, per_round, device)
        trainer.train_step.masker.recording = False
        results["hjepa_wall"].append(wall / per_round)
        results["hjepa_cpu"].append(cpu / per_round)
        rss_after_hjepa.append(_machine.rss_mb())
        if not args.no_phases:
            before = sum(watch.wall.values())
            for _ in range(per_round):
                hjepa.phased_step(watch)
            results["replica_wall"].append((sum(watch.wall.values()) - before) / per_round)
        if reference is not None:
            wall, cpu = timed_steps(reference.step, per_round, device)
            results["ref_wall"].append(wall / per_round)
            results["ref_cpu"].append(cpu / per_round)
        if not args.no_peak:
            detail = _machine.matmul_peak_gflops(device, step_dtype, peak_shapes(trainer, batch))
            results["peak"].append(detail["gflops"])
            if detail["gflops"] >= max(results["peak"]):
                peak_detail = detail
        print(
            f"#   round {round_index + 1}/{rounds}: H-JEPA {images_per_step / results['hjepa_wall'][-1]:.1f} img/s"
            + (f", reference {images_per_step / results['ref_wall'][-1]:.1f} img/s" if results["ref_wall"] else "")
            + (f", peak {results['peak'][-1]:.0f} GFLOP/s" if results["peak"] else "")
            + f", load {_machine.fmt_load(_machine.load_average())}",
            flush=True,
        )

    # FLOPs of the masks the timed steps drew (counted on 2-image slices; FLOPs are linear in the batch).
    seen = trainer.train_step.masker.seen
    gflop_per_image = mean_flops_per_image(trainer, seen, next(hjepa.batches)) / 1e9
    num_patches = encoder.num_patches
    context_fraction = sum(m.context.shape[1] for m in seen) / len(seen) / num_patches
    target_fraction = sum(m.targets.shape[1] * m.targets.shape[2] for m in seen) / len(seen) / num_patches

    hjepa_wall = _machine.median(results["hjepa_wall"])
    hjepa_cpu = _machine.median(results["hjepa_cpu"])
    hjepa_ips = images_per_step / hjepa_wall
    out: dict[str, Any] = {
        "benchmark": "throughput",
        "config": str(args.config),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": str(device),
        "dtype": str(step_dtype).removeprefix("torch."),
        "threads": trainer.threads,
        "batch_size": batch,
        "accumulation_steps": accumulation,
        "images_per_step": images_per_step,
        "image_size": encoder.image_size,
        "patch_size": encoder.patch_size,
        "num_patches": num_patches,
        "timed_steps": per_round * rounds,
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "rounds": rounds,
        "hjepa_images_per_s": hjepa_ips,
        "hjepa_images_per_s_rounds": [images_per_step / w for w in results["hjepa_wall"]],
        "hjepa_images_per_cpu_s": images_per_step / hjepa_cpu,
        "hjepa_ms_per_step": 1e3 * hjepa_wall,
        "gflop_per_image": gflop_per_image,
        "hjepa_gflops": gflop_per_image * hjepa_ips,
        "context_fraction": context_fraction,
        "target_fraction": target_fraction,
        "mask_shapes": sorted({f"Nc={m.context.shape[1]} M={m.targets.shape[1]} Nt={m.targets.shape[2]}" for m in seen}),
        "fused_attention": bool(getattr(encoder.blocks[0].attn, "fused_attn", False)),
        "compiled": bool(args.compile),
        "rss_mb_after_hjepa": max(rss_after_hjepa),
    }
    if results["peak"]:
        peak = max(results["peak"])
        out.update(peak_gflops=peak, peak_detail=peak_detail, fraction_of_peak=out["hjepa_gflops"] / peak)
        if device.type == "cpu":
            # Per CPU-second against one thread's share of the peak: immune to waiting for a core
            # (the peak's best repeat was not waiting either), but it also forgives threads that
            # sleep at a barrier, so it flatters more than one thread.
            out["fraction_of_peak_cpu_time"] = gflop_per_image * images_per_step / hjepa_cpu / (peak / trainer.threads)
    if reference is not None:
        ref_wall = _machine.median(results["ref_wall"])
        ref_cpu = _machine.median(results["ref_cpu"])
        ref_gflop = reference.flops_per_image() / 1e9
        out.update(
            reference_model=f"timm VisionTransformer {encoder.embed_dim}x{encoder.depth}, {encoder.num_heads} heads, "
            f"/{encoder.patch_size} at {encoder.image_size}px, 10 classes, AdamW, fused_attn={reference.fused_attention}",
            reference_images_per_s=images_per_step / ref_wall,
            reference_images_per_s_rounds=[images_per_step / w for w in results["ref_wall"]],
            reference_images_per_cpu_s=images_per_step / ref_cpu,
            reference_gflop_per_image=ref_gflop,
            ratio=(images_per_step / hjepa_wall) / (images_per_step / ref_wall),
            ratio_rounds=[r / h for h, r in zip(results["hjepa_wall"], results["ref_wall"])],
            ratio_cpu_time=ref_cpu / hjepa_cpu,
        )
        if results["peak"]:
            out["reference_fraction_of_peak"] = ref_gflop * images_per_step / ref_wall / max(results["peak"])
    if results["replica_wall"]:
        steps = per_round * rounds
        out["phases_ms_per_step"] = {k: 1e3 * watch.wall.get(k, 0.0) / steps for k in PHASES}
        out["phases_cpu_ms_per_step"] = {k: 1e3 * watch.cpu.get(k, 0.0) / steps for k in PHASES}
        out["replica_ms_per_step"] = 1e3 * _machine.median(results["replica_wall"])
    out["peak_rss_mb"] = _machine.peak_rss_mb()
    info["load_average"] = _machine.load_average()
    out["load_average_start"] = load_before
    out["load_average_end"] = info["load_average"]
    out["machine"] = info
    return out


def report(out: dict[str, Any]) -> None:
    ips = out["hjepa_images_per_s"]
    print()
    print(f"{'H-JEPA step':<34} {ips:9.1f} img/s   {out['hjepa_ms_per_step']:8.1f} ms/step   "
          f"{out['hjepa_images_per_cpu_s']:7.1f} img/CPU-s   rounds {' '.join(f'{x:.1f}' for x in out['hjepa_images_per_s_rounds'])}")
    if "reference_images_per_s" in out:
        print(f"{'reference (supervised timm ViT)':<34} {out['reference_images_per_s']:9.1f} img/s   "
              f"{1e3 * out['images_per_step'] / out['reference_images_per_s']:8.1f} ms/step   "
              f"{out['reference_images_per_cpu_s']:7.1f} img/CPU-s   rounds {' '.join(f'{x:.1f}' for x in out['reference_images_per_s_rounds'])}")
        print(f"{'ratio H-JEPA / reference':<34} {out['ratio']:9.2f} x       (CPU time: {out['ratio_cpu_time']:.2f} x; "
              f"per round {' '.join(f'{x:.2f}' for x in out['ratio_rounds'])})")
    print(f"{'FLOPs per image (step)':<34} {out['gflop_per_image']:9.3f} GFLOP"
          + (f"   (reference {out['reference_gflop_per_image']:.3f})" if "reference_gflop_per_image" in out else ""))
    print(f"{'context / target patches':<34} {out['context_fraction']:9.1%} / {out['target_fraction']:.1%} of {out['num_patches']}"
          f"   ({', '.join(out['mask_shapes'])})")
    if "peak_gflops" in out:
        print(f"{'matmul peak (' + out['dtype'] + ', ' + str(out['threads']) + ' threads)':<34} {out['peak_gflops']:9.0f} GFLOP/s   {out['peak_detail']['shapes']}")
        print(f"{'H-JEPA achieved':<34} {out['hjepa_gflops']:9.0f} GFLOP/s = {out['fraction_of_peak']:.0%} of peak"
              + (f"   (per CPU-second: {out['fraction_of_peak_cpu_time']:.0%})" if "fraction_of_peak_cpu_time" in out else "")
              + (f"; reference {out['reference_fraction_of_peak']:.0%}" if "reference_fraction_of_peak" in out else ""))
    if "phases_ms_per_step" in out:
        total = sum(out["phases_ms_per_step"].values())
        print(f"phases (replica, ms per optimizer step; sum {total:.1f} vs real step {out['hjepa_ms_per_step']:.1f}):")
        for name, ms in out["phases_ms_per_step"].items():
            print(f"  {name:<22} {ms:8.1f} ms  {ms / total:6.1%}   CPU {out['phases_cpu_ms_per_step'][name]:8.1f} ms")
    print(f"{'peak RSS':<34} {out['peak_rss_mb']:9.0f} MB   (after the H-JEPA steps: {out['rss_mb_after_hjepa']:.0f} MB)")
    print(f"load average (1/5/15 min) start {_machine.fmt_load(out['load_average_start'])}, end {_machine.fmt_load(out['load_average_end'])}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the run configuration (YAML)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps of each kind, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch size (default: the configuration's)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: the configuration's / physical cores; HJEPA_THREADS wins)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None, help="default: the configuration's")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: the configuration's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra configuration override (repeatable)")
    parser.add_argument("--no-reference", action="store_true", help="skip the supervised reference")
    parser.add_argument("--no-phases", action="store_true", help="skip the per-phase replica")
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                        help="training.compile for the H-JEPA step (and the reference alike); default: the configuration's, "
                             "decided as its full run on 50,000 images would (auto compiles long CPU runs; about a minute of compiling first)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure and the machine to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    report(out)
    _machine.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
