"""Augmentation throughput beside a training-step proxy: is data ever the bottleneck?

Prints images/s of :class:`hjepa_kit.data.augment.BatchAugment` (per-sample random resized crop + flip +
normalise, uint8 in, float out) for 32->32 and 32->224 at batch 64 and 128, the same work done with
``F.grid_sample`` (the alternative we measured against), a whole in-RAM epoch through the training
loader, the streamed loader on a temporary JPEG folder, and a ViT-Tiny forward+backward at the same
batch (a lower bound on a training step's cost: an H-JEPA step also runs the target encoder and
the predictor). ``--json OUT`` writes every figure with the machine.

    python benchmarks/augmentation.py                    # all figures, threads = physical cores
    python benchmarks/augmentation.py --threads 1 --json results/bench_augmentation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hjepa_kit.config import AugmentationConfig, DataConfig
from hjepa_kit.data.augment import BatchAugment
from hjepa_kit.data.loader import build_train_loader
from hjepa_kit.threads import configure_threads, physical_cores


def machine() -> dict[str, Any]:
    """The CPU model, core counts and library versions the figures were taken with."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "physical_cores": physical_cores(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def seconds_per_call(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn`` over ``repeats`` calls, after ``warmup``.

    CPU time (all threads of this process) is the steadier figure on a machine shared with other
    jobs: it does not count the time this process waited for a core.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def row(what: str, method: str, batch: int, in_size: int, out_size: int, images: int, wall: float, cpu: float) -> dict[str, Any]:
    """One result: ``images`` processed in ``wall`` seconds using ``cpu`` CPU-seconds."""
    return {"what": what, "method": method, "batch": batch, "in": in_size, "out": out_size,
            "ms_per_batch": 1e3 * wall * batch / images, "images_per_s": images / wall,
            "images_per_cpu_s": images / max(cpu, 1e-9)}


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """Run ``fn`` once; returns what it returns (an image count), wall and CPU seconds."""
    start, start_cpu = time.perf_counter(), time.process_time()
    count = fn()
    return count, time.perf_counter() - start, time.process_time() - start_cpu


def grid_sample_augment(images: torch.Tensor, augment: BatchAugment, generator: torch.Generator) -> torch.Tensor:
    """The same crops and flips through ``affine_grid`` + ``grid_sample`` (no antialiasing)."""
    batch, _, height, width = images.shape
    params = augment.sample(batch, height, width, generator)
    top, left, h, w = params.boxes.to(torch.float32).unbind(1)
    theta = torch.zeros(batch, 2, 3)
    sign = 1.0 - 2.0 * params.flips.to(torch.float32)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    size = augment.output_size
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
    mean = torch.tensor(augment.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(augment.config.std).view(1, 3, 1, 1)
    x = (images.to(torch.float32) / 255 - mean) / std
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def bench_augment(batch: int, in_size: int, out_size: int, repeats: int) -> list[dict[str, Any]]:
    images = torch.randint(0, 256, (batch, 3, in_size, in_size), dtype=torch.uint8)
    augment = BatchAugment(AugmentationConfig(), out_size)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for method, fn in (
        ("BatchAugment (matmul)", lambda: augment(images, generator)),
        ("grid_sample", lambda: grid_sample_augment(images, augment, generator)),
    ):
        wall, cpu = seconds_per_call(fn, repeats)
        rows.append(row("augment", method, batch, in_size, out_size, batch, wall, cpu))
    return rows


class _RamDataset:
    splits = ("train",)
    num_classes = None

    def __init__(self, n: int, size: int) -> None:
        from hjepa_kit.contracts import ImageData

        self.image_size = size
        self.data = ImageData(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8))

    def load(self, split: str):
        return self.data


def bench_ram_epoch(batch: int, out_size: int, n: int = 4096) -> dict[str, Any]:
    """A whole epoch of the in-RAM loader: permutation, gather, augment."""
    loader = build_train_loader(_RamDataset(n, 32), DataConfig(batch_size=batch), image_size=out_size, seed=0)
    count, wall, cpu = timed(lambda: sum(images.shape[0] for images, _ in loader))
    return row("in-RAM loader epoch", "gather + BatchAugment", batch, 32, out_size, count, wall, cpu)


def bench_stream(batch: int, workers: int, n: int = 512, size: int = 64) -> dict[str, Any]:
    """The streamed loader over a temporary folder of JPEGs (decode per sample, batched augment)."""
    import numpy as np
    from PIL import Image

    from hjepa_kit.contracts import BuildContext
    from hjepa_kit.plugins.datasets import ImageFolderParams, build_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(n):
            folder = Path(tmp) / "train" / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            array = rng.integers(0, 256, (size * 2, size * 2, 3), dtype=np.uint8)  # decoded and resized to `size`
            Image.fromarray(array).save(folder / f"{i}.jpg", quality=90)
        dataset = build_image_folder(ImageFolderParams(root=tmp, image_size=size), BuildContext(image_size=size))
        config = DataConfig(batch_size=batch, in_memory="never", num_workers=workers)
        loader = build_train_loader(dataset, config, image_size=size, seed=0)
        count, wall, cpu = timed(lambda: sum(images.shape[0] for images, _ in loader))
    # With workers, decoding runs in other processes: the CPU figure then counts only the main one.
    return row("streamed loader epoch", f"JPEG {size * 2}px -> {size}, workers={workers}", batch, size, size, count, wall, cpu)


def bench_step_proxy(batch: int, out_size: int, repeats: int) -> dict[str, Any] | None:
    """ViT-Tiny forward + backward on all patches (timm), a lower bound on one training step."""
    try:
        import timm
    except ImportError:
        return None
    patch = 4 if out_size <= 64 else 16
    model = timm.create_model("vit_tiny_patch16_224", img_size=out_size, patch_size=patch, num_classes=0, pretrained=False)
    images = torch.randn(batch, 3, out_size, out_size)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(images).float().pow(2).mean().backward()

    wall, cpu = seconds_per_call(step, repeats, warmup=1)
    return row("step proxy", f"ViT-Tiny/{patch} fwd+bwd, fp32", batch, out_size, out_size, batch, wall, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="output sides (input is 32x32)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-step", action="store_true", help="skip the ViT-Tiny step proxy")
    parser.add_argument("--no-stream", action="store_true", help="skip the streamed image-folder loader")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and the machine to this file")
    args = parser.parse_args(argv)

    configure_threads(args.threads)
    info = machine()
    print(f"# {info['cpu']} | {info['physical_cores']} physical cores | {info['threads']} threads | torch {info['torch']}")
    rows: list[dict[str, Any]] = []

    print(f"{'':<22} {'':<34} {'':<6} {'':<8} {'wall ms/batch':>13} {'images/s':>10} {'images/CPU-s':>13}")

    def show(result: dict[str, Any] | None) -> None:
        if result is None:
            return
        rows.append(result)
        print(f"{result['what']:<22} {result['method']:<34} B={result['batch']:<4} {result['in']:>3}->{result['out']:<4}"
              f" {result['ms_per_batch']:13.2f} {result['images_per_s']:10.0f} {result['images_per_cpu_s']:13.0f}", flush=True)

    for out_size in args.sizes:
        for batch in args.batch_sizes:
            for row in bench_augment(batch, 32, out_size, args.repeats):
                show(row)
        show(bench_ram_epoch(max(args.batch_sizes), out_size, n=4096 if out_size <= 64 else 1024))
        if not args.no_step:
            show(bench_step_proxy(args.batch_sizes[0], out_size, repeats=3 if out_size <= 64 else 1))
    if not args.no_stream:
        show(bench_stream(64, workers=0))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "augmentation", "machine": info, "results": rows}, indent=2) + "\n")
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
