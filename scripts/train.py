#!/usr/bin/env python3
"""The plan's training command: ``python scripts/train.py --config configs/cpu_cifar10.yaml --device cpu``.

A thin wrapper over ``hjepa train``; it accepts the same options (``--resume``, ``--output-dir``,
``--set KEY=VALUE`` ...).
"""

import sys

try:
    from hjepa_kit.cli import main
except ImportError as exc:  # pragma: no cover - only without an installed package
    sys.exit(f"hjepa-kit is not installed ({exc}); run: python3 -m venv .venv && .venv/bin/pip install -e .")

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
