"""Evaluator ``linear_probe``: a linear classifier on frozen, standardised features.

The features are standardised with the train split's per-dimension mean and standard deviation;
then a softmax (multinomial logistic) regression ``logits = x W^T + b`` is fitted to the train
split by minimising the mean cross-entropy plus ``weight_decay / 2 * |W|^2`` (the bias is not
penalised). That objective is smooth and strictly convex, so full-batch L-BFGS with a strong-Wolfe
line search reaches its unique minimum deterministically, with no learning rate or schedule to
tune. It is solved in preconditioned coordinates (:func:`ridge_preconditioner`), the same function
of ``W`` reparametrised, where it converges in tens of iterations; without it, standardised but
correlated features leave the problem so badly conditioned that fits stop at the iteration limit
short of the minimum (docs/performance.md has the figures). The loss is summed over row chunks
inside each evaluation, so memory stays bounded on large sets.

When several ``weight_decay`` values are given, each is fitted on the train split minus a
held-out ``val_fraction`` (drawn with ``seed``), the one with the best held-out top-1 is kept
(ties: the larger, simpler one) and the probe is refitted on the whole train split with it.

Metrics (accuracies are fractions in ``[0, 1]``): ``linear_probe/top1``, ``linear_probe/top5``,
``linear_probe/weight_decay`` (the value used), ``linear_probe/val_top1`` (held-out top-1 of that
value, when a grid was searched), ``linear_probe/train_top1``. Artifact ``confusion_matrix``:
``(C, C)`` int64 counts of the test split, rows = true class, columns = predicted class. The
report grades ``linear_probe/top1`` with :data:`LINEAR_PROBE_GRADE`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import attrs
import numpy as np
import torch
from torch import Tensor

from hjepa_kit import hookimpl
from hjepa_kit.contracts import BuildContext, EvalResult, FeatureSet, Grade
from hjepa_kit.helpers import choose_representation, topk_accuracy
from hjepa_kit.params import param

__all__ = [
    "LINEAR_PROBE_GRADE",
    "LinearProbeParams",
    "LinearClassifier",
    "ProbeResult",
    "standardiser",
    "fit_linear_classifier",
    "ridge_preconditioner",
    "linear_probe",
    "confusion_matrix",
    "build_linear_probe",
]

#: The grade of ``linear_probe/top1``: minimum / good / excellent above 50% / 60% / 70%.
LINEAR_PROBE_GRADE = Grade(label="Linear probe accuracy", thresholds=(0.50, 0.60, 0.70), percent=True)


@attrs.frozen(kw_only=True)
class LinearProbeParams:
    """Parameters of the ``linear_probe`` evaluator."""

    weight_decay: tuple[float, ...] = param(
        (1e-5, 1e-4, 1e-3, 1e-2),
        help="L2 penalty on the weights; with several values the best on a held-out part of train is used.",
        ge=0.0,
    )
    val_fraction: float = param(
        0.1, help="Fraction of train held out to choose weight_decay (only when several are given).", gt=0.0, lt=1.0
    )
    max_iter: int = param(300, help="L-BFGS iterations per fit (each is about one pass over train).", ge=1)
    batch_size: int = param(
        65536, help="Rows per chunk of the full-batch loss and gradient; bounds memory, does not change the result.", ge=1
    )
    seed: int = param(0, help="Seed of the held-out split.", ge=0)
    representation: str | None = param(None, help="Which extracted features to use (encoder, level0, ...); null = the run's default.")


@attrs.frozen
class LinearClassifier:
    """A fitted probe: standardisation then ``x W^T + b``.

    Attributes:
        mean: ``(D,)`` train mean; std: ``(D,)`` train standard deviation (floored).
        weight: ``(C, D)``; bias: ``(C,)``.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor, batch_size: int = 65536) -> Tensor:
        """``(N, C)`` logits of ``(N, D)`` raw (unstandardised) features."""
        out = []
        for start in range(0, x.shape[0], batch_size):
            rows = (x[start : start + batch_size].to(torch.float32) - self.mean) / self.std
            out.append(rows @ self.weight.T + self.bias)
        return torch.cat(out) if out else x.new_zeros(0, self.weight.shape[0])


@attrs.frozen
class ProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        top1, top5: test accuracies in ``[0, 1]``.
        train_top1: accuracy on the train split.
        weight_decay: the value used for the final fit.
        val_top1: held-out accuracy of each tried value (empty when only one was given).
        confusion: ``(C, C)`` int64 test counts, rows = true, columns = predicted.
        classifier: the final probe.
    """

    top1: float
    top5: float
    train_top1: float
    weight_decay: float
    val_top1: dict[float, float]
    confusion: np.ndarray
    classifier: LinearClassifier


#: Below this many feature values (rows x width) a fit runs on one thread.
SMALL_PROBLEM = 1 << 18


@contextmanager
def _threads_for(size: int) -> Iterator[None]:
    """Use one torch thread for small problems, the run's setting otherwise, then restore.

    A small fit is hundreds of tiny tensor ops; waking a second thread for each costs more than
    the op, most of all on a busy machine (figures on docs/performance.md).
    """
    previous = torch.get_num_threads()
    if size < SMALL_PROBLEM and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def standardiser(train: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """``(D,)`` mean and standard deviation of ``(N, D)`` ``train``, float32.

    The deviation is floored at ``eps`` so a constant dimension maps to 0 instead of nan.
    """
    x = train.detach().to(torch.float64)
    mean = x.mean(0)
    std = x.std(0, correction=0) if x.shape[0] > 1 else torch.ones_like(mean)
    return mean.to(torch.float32), std.clamp_min(eps).to(torch.float32)


#: Softmax curvature assumed by the preconditioner (a typical diagonal of the cross-entropy's
#: Hessian per unit of feature variance; only the speed of convergence depends on it).
_CURVATURE = 0.1


def ridge_preconditioner(x: Tensor, weight_decay: float, eig: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``(T, d)`` that make the probe's objective well conditioned without changing its minimum.

    With ``C = x^T x / N = V diag(lam) V^T`` and ``T = V diag((lam + eps)^-1/2)``, the logits
    ``x W^T`` equal ``(x T) U^T`` for ``W = U T^T``, and ``|W|^2 = sum_j |U[:, j]|^2 / (lam_j + eps)``:
    the returned ``d = weight_decay / (lam + eps)`` weighs that penalty. In ``U`` the Hessian's
    diagonal is about ``(c lam + weight_decay) / (lam + eps)``, flat for ``eps = weight_decay / c``,
    where standardised but correlated features leave ``W``'s Hessian spread over orders of
    magnitude (L-BFGS ran out of its 300 iterations on a ViT's features; now it converges).
    """
    lam, vectors = eig if eig is not None else _covariance_eigh(x)
    lam = lam.clamp_min(0.0)
    eps = max(weight_decay / _CURVATURE, 1e-6 * float(lam.mean()), 1e-12)
    to_z = vectors * (lam + eps).rsqrt()  # V diag((lam + eps)^-1/2)
    return to_z.to(torch.float32), (weight_decay / (lam + eps)).to(torch.float32)


def _covariance_eigh(x: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and vectors of ``x^T x / N`` in float64 (independent of the weight decay)."""
    x64 = x.to(torch.float64)
    return torch.linalg.eigh(x64.T @ x64 / max(x.shape[0], 1))


# The last train features' eigendecomposition: a weight-decay sweep fits the same features several
# times, and the decomposition (seconds for thousands of dimensions) does not depend on the decay.
# The entry holds the features themselves, so their identity cannot be reused by another tensor.
_LAST_EIGH: dict[str, object] = {}


def _cached_eigh(train: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    version = -1 if train.is_inference() else train._version  # inference tensors cannot change in place
    key = (id(train), train.data_ptr(), version, tuple(train.shape), train.dtype)
    if _LAST_EIGH.get("key") != key or _LAST_EIGH.get("train") is not train:
        _LAST_EIGH.clear()
        _LAST_EIGH.update(key=key, train=train, eig=_covariance_eigh(x))
    return _LAST_EIGH["eig"]  # type: ignore[return-value]


def fit_linear_classifier(
    train: Tensor,
    train_labels: Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
    batch_size: int = 65536,
    init: LinearClassifier | None = None,
) -> LinearClassifier:
    """Fit a softmax regression to ``(N, D)`` ``train`` features with full-batch L-BFGS.

    Minimises ``mean CE(x_std W^T + b, y) + weight_decay / 2 * |W|^2``. The objective is strictly
    convex (for ``weight_decay > 0``), so the start only changes how fast the minimum is reached;
    the default zero start makes the result depend on the data alone (no seed).

    Args:
        train: ``(N, D)`` raw features (standardised here with their own statistics).
        train_labels: ``(N,)`` int64 classes in ``[0, num_classes)``.
        num_classes: number of classes ``C``.
        weight_decay: L2 penalty coefficient on ``W``.
        max_iter: L-BFGS iterations.
        batch_size: rows per chunk of the loss.
        init: a probe to start from (its weights), e.g. the solution for a nearby ``weight_decay``.
    """
    # Evaluation may run under torch.inference_mode(); the probe needs autograd, and tensors made
    # inside this block are ordinary tensors that autograd may save.
    with torch.inference_mode(False), torch.enable_grad(), _threads_for(train.numel()):
        mean, std = standardiser(train)
        x = (train.detach().to("cpu", torch.float32) - mean) / std
        y = train_labels.detach().to("cpu", torch.int64).clone()
        n, dim = x.shape
        # Solve for U in coordinates z = x T, with W = U T^T and the penalty rewritten so that
        # the objective is the same function of W (see ridge_preconditioner); only the
        # conditioning changes: L-BFGS then needs a fraction of the iterations.
        to_z, penalty = ridge_preconditioner(x, weight_decay, _cached_eigh(train, x))
        z = x @ to_z
        if init is None:
            weight = torch.zeros(num_classes, dim, requires_grad=True)
            bias = torch.zeros(num_classes, requires_grad=True)
        else:  # U = W T^-T
            weight = torch.linalg.solve(to_z, init.weight.detach().T.to(torch.float32)).T.contiguous().requires_grad_(True)
            bias = init.bias.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                                      tolerance_change=1e-10, line_search_fn="strong_wolfe")

        # Classes along dim 0: on the CPU, softmax over a short last dimension (10 classes) is
        # much slower than over the first one (figures on docs/performance.md).
        zt = z.T.contiguous()  # (D, N)
        minus_one = torch.full((1, min(n, batch_size)), -1.0)

        def closure() -> Tensor:
            # The gradient is written out (softmax minus one-hot, times z) instead of asking
            # autograd: nothing of one chunk is kept for a backward pass, and on one thread an
            # evaluation is faster (figures on docs/performance.md).
            grad_w = torch.zeros_like(weight)
            grad_b = torch.zeros_like(bias)
            total = torch.zeros((), dtype=torch.float64)
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    stop = min(start + batch_size, n)
                    ys = y[None, start:stop]
                    log_p = torch.log_softmax(torch.addmm(bias[:, None], weight, zt[:, start:stop]), dim=0)  # (C, rows)
                    total -= log_p.gather(0, ys).sum(dtype=torch.float64)
                    p = log_p.exp_()
                    p.scatter_add_(0, ys, minus_one[:, : stop - start])  # dCE/dlogits
                    grad_w.addmm_(p, z[start:stop])
                    grad_b += p.sum(1)
                scaled = weight * penalty  # weight_decay * U diag(1 / (lambda + eps))
                weight.grad = grad_w.div_(n).add_(scaled)
                bias.grad = grad_b.div_(n)
                return (total / n).float() + 0.5 * (scaled * weight).sum()

        optimizer.step(closure)
        weight = (weight.detach() @ to_z.T).contiguous()  # W = U T^T
    return LinearClassifier(mean=mean, std=std, weight=weight, bias=bias.detach())


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    flat = labels.to(torch.int64).cpu() * num_classes + predicted.to(torch.int64).cpu()
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).numpy()


def _split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Random ``(fit_rows, held_out_rows)`` of ``range(n)``, at least one of each."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = min(max(1, round(n * fraction)), n - 1)
    return order[held:], order[:held]


def linear_probe(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    weight_decay: Sequence[float] | float = (1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.1,
    max_iter: int = 300,
    batch_size: int = 65536,
    seed: int = 0,
) -> ProbeResult:
    """Fit a linear probe on ``train`` and measure it on ``test``.

    Args:
        train: ``(N_train, D)`` features; ``train_labels``: ``(N_train,)`` int64.
        test: ``(N_test, D)`` features; ``test_labels``: ``(N_test,)`` int64.
        num_classes: number of classes ``C``.
        weight_decay: one value, or several to choose from on a held-out ``val_fraction`` of train.
        val_fraction, seed: the held-out split.
        max_iter, batch_size: as in :func:`fit_linear_classifier`.
    """
    grid = (weight_decay,) if isinstance(weight_decay, (int, float)) else tuple(dict.fromkeys(weight_decay))
    if not grid:
        raise ValueError("linear_probe needs at least one weight_decay value")
    # The probe is fitted on the CPU: the features are small and already there (see features.py).
    train, test = train.detach().to("cpu", torch.float32), test.detach().to("cpu", torch.float32)
    train_labels = train_labels.to("cpu", torch.int64)
    val_top1: dict[float, float] = {}
    chosen = grid[0]
    start: LinearClassifier | None = None
    if len(grid) > 1 and train.shape[0] >= 2:
        fit_rows, held_rows = _split(train.shape[0], val_fraction, seed)
        solutions: dict[float, LinearClassifier] = {}
        previous = None
        # Walk the regularisation path from the strongest penalty down, each fit starting from the
        # last solution: neighbouring minima are close, so later fits need fewer iterations.
        for wd in sorted(grid, reverse=True):
            previous = fit_linear_classifier(
                train[fit_rows], train_labels[fit_rows], num_classes,
                weight_decay=wd, max_iter=max_iter, batch_size=batch_size, init=previous,
            )  # fmt: skip
            solutions[wd] = previous
            val_top1[wd] = topk_accuracy(previous(train[held_rows]), train_labels[held_rows], (1,))[1]
        # The strongest penalty among the best: the simplest model that does as well.
        best = max(val_top1.values())
        chosen = max(wd for wd, acc in val_top1.items() if acc == best)
        start = solutions[chosen]
    probe = fit_linear_classifier(
        train, train_labels, num_classes, weight_decay=chosen, max_iter=max_iter, batch_size=batch_size, init=start
    )
    logits = probe(test)
    labels = test_labels.to("cpu", torch.int64)
    accuracy = topk_accuracy(logits, labels, (1, 5))
    train_top1 = topk_accuracy(probe(train), train_labels, (1,))[1]
    return ProbeResult(
        top1=accuracy[1],
        top5=accuracy[5],
        train_top1=train_top1,
        weight_decay=float(chosen),
        val_top1=val_top1,
        confusion=confusion_matrix(logits.argmax(1), labels, num_classes),
        classifier=probe,
    )


def build_linear_probe(params: LinearProbeParams, ctx: BuildContext):
    """Factory of the ``linear_probe`` evaluator."""

    def evaluate_linear_probe(features: Mapping[str, FeatureSet], default: str) -> EvalResult:
        name = choose_representation(features, params.representation, default=default,
                                     option="the linear_probe parameter representation")
        feats = features[name]
        result = linear_probe(
            feats.train, feats.train_labels, feats.test, feats.test_labels, feats.num_classes,
            weight_decay=params.weight_decay, val_fraction=params.val_fraction, max_iter=params.max_iter,
            batch_size=params.batch_size, seed=params.seed,
        )  # fmt: skip
        metrics = {
            "linear_probe/top1": result.top1,
            "linear_probe/top5": result.top5,
            "linear_probe/train_top1": result.train_top1,
            "linear_probe/weight_decay": result.weight_decay,
        }
        if result.val_top1:
            metrics["linear_probe/val_top1"] = result.val_top1[result.weight_decay]
        artifacts = {
            "confusion_matrix": result.confusion,
            "representation": name,
            "weight_decay_search": {str(wd): acc for wd, acc in result.val_top1.items()},
        }
        return EvalResult(metrics=metrics, artifacts=artifacts, grades={"linear_probe/top1": LINEAR_PROBE_GRADE}, headline="linear_probe/top1")

    return evaluate_linear_probe


@hookimpl
def hjepa_register_evaluators(register) -> None:
    register(
        "linear_probe",
        build_linear_probe,
        params=LinearProbeParams,
        summary="Softmax regression on standardised frozen features (L-BFGS, weight decay chosen on held-out train).",
    )
