"""What does a representation of the ``synthetic`` shapes encode: the class, or the nuisances?

The ``synthetic`` set draws every image's shape class independently of its size, position,
colours, background gradient and noise level (``plugins/datasets/synthetic.py``,
:func:`shape_factors`). This benchmark embeds the test split with each checkpoint and fits a ridge
probe (5-fold cross-validation on the test split's features, standardised on each training fold)
from the features to each factor: accuracy for the class and the background's polarity, R^2 for
the continuous factors. A representation that learns the shapes should gain on the class and
need not gain on the rest; one that learns a shortcut gains on the factor it uses.

    python benchmarks/synthetic_factors.py --checkpoint untrained.pth --checkpoint run/checkpoints/x/checkpoint_epoch_1.pth

Each checkpoint must be of a run on ``synthetic`` (its own parameters are used; another run's
checkpoint is embedded on ``synthetic``'s defaults). ``--representation`` picks the features
(default: each run's evaluated representation). Prints one Markdown table, a column per checkpoint.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

import _machine  # noqa: F401  - the CPU defaults every benchmark applies before torch loads
from hjepa_kit.evaluation.embedding import embed_images
from hjepa_kit.evaluation.pretrained import load_pretrained

FOLDS = 5
RIDGE = 1e-3  # penalty per sample on the standardised features


def ridge_cv(x: np.ndarray, y: np.ndarray, classify: bool, folds: int = FOLDS) -> float:
    """Mean held-out accuracy (``classify``) or R^2 of a ridge probe over ``folds`` interleaved folds."""
    index = np.arange(len(y))
    scores = []
    for fold in range(folds):
        test = index[fold::folds]
        train = np.setdiff1d(index, test)
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        a = np.hstack([(x[train] - mean) / std, np.ones((len(train), 1))])
        b = np.hstack([(x[test] - mean) / std, np.ones((len(test), 1))])
        target = np.eye(int(y.max()) + 1)[y[train]] if classify else y[train][:, None]
        weights = np.linalg.solve(a.T @ a + RIDGE * len(train) * np.eye(a.shape[1]), a.T @ target)
        predicted = b @ weights
        if classify:
            scores.append(float((predicted.argmax(1) == y[test]).mean()))
        else:
            residual = ((predicted[:, 0] - y[test]) ** 2).sum()
            scores.append(float(1.0 - residual / max(((y[test] - y[test].mean()) ** 2).sum(), 1e-12)))
    return float(np.mean(scores))


def factor_targets(checkpoint: str) -> dict[str, tuple[np.ndarray, bool]]:
    """Each factor of the checkpoint's synthetic test split: ``name -> (values, is_a_class)``."""
    data = load_pretrained(checkpoint, dataset="synthetic").build_dataset()
    if not hasattr(data, "factors"):
        raise SystemExit(f"{checkpoint}: its dataset has no shape factors (this benchmark reads the synthetic set)")
    f = data.factors("test")
    background = (f.background_a + f.background_b) / 2
    return {
        "shape class (accuracy)": (data.load("test").labels.numpy(), True),
        "light or dark background (accuracy)": (f.light_background.long().numpy(), True),
        "noise std (R^2)": (f.noise_std.numpy(), False),
        "shape radius (R^2)": (f.radius.numpy(), False),
        "shape centre x (R^2)": (f.centre[:, 0].numpy(), False),
        "shape centre y (R^2)": (f.centre[:, 1].numpy(), False),
        "background red (R^2)": (background[:, 0].numpy(), False),
        "shape red (R^2)": (f.foreground[:, 0].numpy(), False),
        "gradient direction, cos (R^2)": (np.cos(f.angle.numpy()), False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="a checkpoint of a run on synthetic (repeatable)")
    parser.add_argument("--representation", default=None, help="encoder, level0, level1 ... (default: each run's evaluated one)")
    args = parser.parse_args(argv)

    names = [Path(c).name for c in args.checkpoint]
    if len(set(names)) < len(names):  # checkpoints of several runs share their file names
        names = list(args.checkpoint)
    columns = []
    with tempfile.TemporaryDirectory() as folder:
        for i, checkpoint in enumerate(args.checkpoint):
            out = Path(folder) / f"{i}.npz"
            result = embed_images(checkpoint, out, dataset="synthetic", splits=["test"], representation=args.representation)
            features = np.load(out)["features"].astype(np.float64)
            targets = factor_targets(checkpoint)
            scores = {name: ridge_cv(features, values, classify) for name, (values, classify) in targets.items()}
            columns.append((f"{names[i]} ({result.representation})", scores))
    names = list(columns[0][1])
    print("| factor | " + " | ".join(title for title, _ in columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{scores[name]:.3f}" if math.isfinite(scores[name]) else "n/a" for _, scores in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
