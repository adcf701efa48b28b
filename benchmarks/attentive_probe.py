"""The attentive probe's training time and memory at CIFAR-10's size, without a checkpoint or a dataset.

Builds float16 tokens in memory (``--train`` + ``--test`` images of ``--tokens`` x ``--dim``, ten
classes), then trains the ``attentive_probe`` evaluator's default grid on them, as ``hjepa
evaluate`` does after extracting tokens. The tokens are random around a class centre: the
accuracy printed says nothing about any model, only that the probe trained. For the whole
evaluation of a real checkpoint, features included, use ``benchmarks/evaluate.py --eval-type
attentive_probe``.

    python benchmarks/attentive_probe.py --threads 2 --head efficient
    python benchmarks/attentive_probe.py --threads 2 --head vjepa --json results/attentive.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import fmt_load, load_average, machine, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per image (CIFAR-10 at 32 px, 4 px patches: 64)")
    parser.add_argument("--dim", type=int, default=192, help="token width (ViT-Tiny: 192)")
    parser.add_argument("--head", choices=("efficient", "vjepa"), default="efficient")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from hjepa_kit.plugins.attentive_probe import attentive_probe
    from hjepa_kit.threads import configure_threads

    threads = configure_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, args.dim, generator=generator)

    def tokens(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=generator)
        return (torch.randn(n, args.tokens, args.dim, generator=generator) + 0.3 * centres[labels][:, None]).half(), labels

    train, train_labels = tokens(args.train)
    test, test_labels = tokens(args.test)
    load = load_average()
    start, cpu = time.perf_counter(), time.process_time()
    result = attentive_probe(train, train_labels, test, test_labels, 10, head=args.head, epochs=args.epochs, min_steps=400)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"attentive probe, head {args.head}: {args.train:,} + {args.test:,} images of {args.tokens} x {args.dim} float16, "
          f"{len(result.grid)} probes, {args.epochs} epochs, batch {result.batch_size}, {threads} threads: "
          f"{wall:.0f} s wall, {cpu:.0f} CPU-s, peak RSS {peak_gb:.1f} GB; load {fmt_load(load)} -> {fmt_load(load_average())}")
    write_json(args.json, {"machine": machine(), "head": args.head, "train": args.train, "test": args.test, "tokens": args.tokens,
                           "dim": args.dim, "epochs": args.epochs, "probes": len(result.grid), "batch_size": result.batch_size,
                           "wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak_gb, "top1": result.top1})


if __name__ == "__main__":
    main()
