"""Write tests/data/legacy_checkpoint.pt: the structure of a checkpoint written by the code of 2026-11-28.

A real checkpoint of even the tiny test run is ~60 MB (ViT-Tiny weights plus AdamW state), too big for
the repository. This file keeps everything of it except the large float tensors, each of which is
replaced by ``{"__fill__": index, "shape": [...], "dtype": "..."}``; ``tests/test_legacy_checkpoint.py``
fills them again with seeded values (:func:`fill`), loads the result with today's code and compares
its features with the ``reference`` features stored here, which the old code computed from the same
filled checkpoint. Run once, with the code whose checkpoints must keep loading::

    python scripts/make_legacy_checkpoint.py /tmp/legacy
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from legacy import fill, shrink  # noqa: E402


def main(workdir: str) -> None:
    import hjepa_kit
    from conftest import tiny_config
    from hjepa_kit.evaluation.pretrained import load_pretrained

    root = Path(workdir)
    final = hjepa_kit.train(tiny_config(root, training={"epochs": 1}, callbacks=[]), console=False).checkpoints["final"]
    state = torch.load(final, map_location="cpu", weights_only=True)
    small = shrink(state)
    filled = root / "filled.pth"
    torch.save(fill(small), filled)
    model = load_pretrained(filled).model
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = {k: v.clone() for k, v in model.features(images).items()}
    out = Path(__file__).resolve().parents[1] / "tests" / "data" / "legacy_checkpoint.pt"
    torch.save({"checkpoint": small, "reference": reference, "written_by": "hjepa-kit main @ 4753053"}, out)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/legacy")
