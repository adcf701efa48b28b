"""How far do a run's context tokens spread, and where: what VICReg's variance hinge sees.

The built-in losses' variance term asks each dimension of the context encoder's tokens for a
standard deviation of ``loss.params.std_target`` over the batch's tokens (Bardes et al., VICReg,
ICLR 2022). This benchmark encodes the first ``--images`` images of a split with each checkpoint's
context encoder (all patches, as evaluation sees them) and prints, per checkpoint:

- the dimensions' standard deviation over all tokens (mean and minimum), what the hinge measures;
- the share of dimensions still under the run's ``std_target`` (the hinge is active on them);
- the spread within images (each token minus its image's mean token) and between images (the
  images' mean tokens): where the spread comes from;
- the mean absolute gain of the encoder's final norm, when it has one (``norm.weight``): tokens
  leaving a LayerNorm of gain 1 spread at most 1 on average, so a target of 1 asks for isotropy.

    python benchmarks/token_spread.py --checkpoint run/checkpoints/x/checkpoint_epoch_1.pth --checkpoint run/checkpoints/x/final.pth

Prints one Markdown table, a row per checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

import _machine  # noqa: F401  - the CPU defaults every benchmark applies before torch loads
from hjepa_kit.data.loader import choose_in_memory, iter_eval_batches
from hjepa_kit.evaluation.pretrained import load_pretrained


def spread(tokens: Tensor, std_target: float) -> dict[str, float]:
    """The spread figures of ``(B, N, D)`` tokens (``B >= 2`` images of ``N >= 2`` tokens)."""
    tokens = tokens.double()
    std = tokens.reshape(-1, tokens.shape[-1]).std(dim=0)
    images = tokens.mean(dim=1)
    within = (tokens - images.unsqueeze(1)).reshape(-1, tokens.shape[-1]).std(dim=0)
    return {
        "std mean": std.mean().item(),
        "std min": std.min().item(),
        "under target": (std < std_target).double().mean().item(),
        "within images": within.mean().item(),
        "between images": images.std(dim=0).mean().item(),
    }


def checkpoint_spread(checkpoint: str, images: int, split: str | None, dataset: str | None) -> tuple[dict[str, float], float, float | None]:
    """``(figures, std_target, norm gain)`` of one checkpoint's context encoder on its first ``images`` images."""
    pretrained = load_pretrained(checkpoint, dataset=dataset)
    data = pretrained.build_dataset()
    split = split or ("test" if "test" in data.splits else data.splits[0])
    config = pretrained.config.data
    # a large folder is streamed, as `hjepa embed` does: only the first images are decoded
    source = data.load(split) if choose_in_memory(data, split, config.in_memory, config.memory_limit_mb) else data.open_stream(split)
    encoder = pretrained.model.context_encoder
    chunks = []
    seen = 0
    batches = iter_eval_batches(source, image_size=int(pretrained.ctx.image_size), batch_size=128, mean=pretrained.mean,
                                std=pretrained.std, device=pretrained.ctx.device)  # fmt: skip
    with torch.no_grad():
        for batch, _ in batches:
            batch = batch[: images - seen]
            chunks.append(encoder(batch).tokens.float().cpu())
            seen += batch.shape[0]
            if seen >= images:
                break
    _, params = pretrained.resolved["loss"]  # the loss's own parameters, defaults filled in
    target = float(getattr(params, "std_target", 1.0))  # a loss without the hinge: VICReg's 1
    norm = getattr(encoder, "norm", None)
    gain = norm.weight.abs().mean().item() if getattr(norm, "weight", None) is not None else None
    return spread(torch.cat(chunks), target), target, gain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="a checkpoint written by hjepa train (repeatable)")
    parser.add_argument("--images", type=int, default=256, help="how many images of the split to encode (default 256)")
    parser.add_argument("--split", default=None, help="the split (default: test where the dataset has one)")
    parser.add_argument("--dataset", default=None, help="encode this dataset instead of the run's own")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images {args.images}: the spread needs at least 2 images")

    print("| checkpoint | std over tokens, mean / min | dimensions under std_target | within images / between images | norm gain |")
    print("| --- | --- | --- | --- | --- |")
    for checkpoint in args.checkpoint:
        figures, target, gain = checkpoint_spread(checkpoint, args.images, args.split, args.dataset)
        name = Path(checkpoint).name if len(args.checkpoint) == len({Path(c).name for c in args.checkpoint}) else checkpoint
        print(
            f"| {name} | {figures['std mean']:.3f} / {figures['std min']:.3f} | {figures['under target']:.0%} of "
            f"{target:g} | {figures['within images']:.3f} / {figures['between images']:.3f} | "
            + (f"{gain:.3f} |" if gain is not None else "n/a |")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
