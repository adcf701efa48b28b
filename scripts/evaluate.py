#!/usr/bin/env python3
"""The plan's evaluation command::

    python scripts/evaluate.py --checkpoint results/checkpoints/cpu_cifar10/best_model.pth \
        --dataset cifar10 --data-path ./data/cifar10 --eval-type all --device cpu

A thin wrapper over ``hjepa evaluate``; it accepts the same options.
"""

import sys

try:
    from hjepa_kit.cli import main
except ImportError as exc:  # pragma: no cover - only without an installed package
    sys.exit(f"hjepa-kit is not installed ({exc}); run: python3 -m venv .venv && .venv/bin/pip install -e .")

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
