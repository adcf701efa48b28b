"""SIGReg: the sketched isotropic-Gaussian regulariser of LeJEPA, as a term any loss can add.

SIGReg pushes a batch of embeddings towards an isotropic standard Gaussian, the distribution
LeJEPA proves optimal for downstream linear and k-NN use, and so rules out collapse (a collapsed
batch is as far from it as a batch can be). It never looks at all ``D`` dimensions together: it
draws ``K`` random unit directions, projects the ``N`` embeddings on each, and tests each 1-D
projection against ``N(0, 1)`` with the Epps-Pulley statistic, which compares characteristic
functions:

    EP = N * integral over t of | phi_N(t) - exp(-t^2 / 2) |^2 * w(t) dt,
    phi_N(t) = (1/N) sum_n exp(i t z_n)           (the empirical characteristic function)

with the Gaussian weight ``w(t) = exp(-t^2 / 2)``, integrated by the trapezoid rule on ``knots``
points of ``[0, t_max]`` (the integrand is even, so the half-line counts twice). SIGReg is the
mean of EP over the ``K`` directions. The cost is one ``(N, D) x (D, K)`` product plus ``N * K *
knots`` sines and cosines: linear in the batch, with no ``D x D`` covariance.

DDP: the empirical characteristic function is a mean over the batch, so each rank averages its own
``cos``/``sin`` terms and one differentiable all-reduce averages them over ranks; ``N`` is then the
global batch. The directions are drawn from a generator seeded by ``seed`` and a call counter, so
every rank projects on the same directions at the same step without communicating.

References:
    Balestriero, LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
    Heuristics", 2025, https://arxiv.org/abs/2511.08544
    Epps, Pulley, "A test for normality based on the empirical characteristic function",
    Biometrika 70(3), 1983.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["SIGReg", "epps_pulley", "random_directions"]


def _world_mean(x: Tensor) -> tuple[Tensor, int]:
    """``x`` averaged over DDP ranks (differentiably), and the number of ranks."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        world = dist.get_world_size()
        return all_reduce(x, op=dist.ReduceOp.SUM) / world, world
    return x, 1


class _CharacteristicFunction(torch.autograd.Function):
    """Real and imaginary parts of the empirical characteristic function, ``(K, T)`` each.

    ``mean_n cos(t z_nk)`` and ``mean_n sin(t z_nk)``. The backward pass reuses the forward's
    sines and cosines (autograd's own would compute both again for each of ``cos`` and ``sin``):
    ``d re / d z_nk = -t sin(t z_nk) / N``, ``d im / d z_nk = t cos(t z_nk) / N``. About 2x
    faster for fwd + bwd on the CPU.
    """

    @staticmethod
    def forward(ctx, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001 - autograd's ctx
        angles = z.unsqueeze(-1) * t  # (N, K, T)
        cos, sin = torch.cos(angles), torch.sin(angles)
        ctx.save_for_backward(cos, sin, t)
        return cos.mean(dim=0), sin.mean(dim=0)

    @staticmethod
    def backward(ctx, grad_real: Tensor, grad_imag: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        cos, sin, t = ctx.saved_tensors
        n = cos.shape[0]
        grad = (grad_imag * t / n) * cos - (grad_real * t / n) * sin  # (N, K, T)
        return grad.sum(dim=-1), None


def epps_pulley(projections: Tensor, t_max: float = 3.0, knots: int = 17) -> Tensor:
    """Epps-Pulley statistic of each column of ``projections`` against ``N(0, 1)``.

    Args:
        projections: ``(N, K)``: ``N`` samples of ``K`` one-dimensional variables.
        t_max: the integral runs over ``[-t_max, t_max]``.
        knots: trapezoid points on ``[0, t_max]``.

    Returns:
        ``(K,)`` float32: 0 for a perfect Gaussian characteristic function; about 1.06 in
        expectation for a sample of ``N(0, 1)`` itself (``N E|phi_N - phi|^2 = 1 - exp(-t^2)``,
        integrated against ``w``), whatever ``N``; ``N`` times a positive constant for a
        collapsed (constant) column, so collapse costs more the larger the batch.
    """
    if projections.ndim != 2 or projections.shape[0] < 2:
        raise ValueError(f"projections must be (N, K) with N >= 2, got shape {tuple(projections.shape)}")
    z = projections.float()
    t = torch.linspace(0.0, t_max, knots, device=z.device, dtype=torch.float32)
    gauss = torch.exp(-0.5 * t.square())
    # Trapezoid weights on [0, t_max], doubled for the mirrored half-line, times w(t).
    step = t_max / (knots - 1)
    trapezoid = torch.full_like(t, step)
    trapezoid[0] = trapezoid[-1] = step / 2
    weights = 2.0 * trapezoid * gauss
    real, imag = _CharacteristicFunction.apply(z, t)
    real, world = _world_mean(real)
    imag, _ = _world_mean(imag)
    error = (real - gauss).square() + imag.square()  # (K, T)
    return (error * weights).sum(dim=-1) * (z.shape[0] * world)


def random_directions(dim: int, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """``(dim, count)`` float32 matrix of unit-norm Gaussian directions drawn from ``generator``."""
    a = torch.randn(dim, count, generator=generator)
    return (a / a.norm(dim=0, keepdim=True)).to(device)


class SIGReg(nn.Module):
    """Sketched isotropic-Gaussian regulariser (LeJEPA): mean Epps-Pulley statistic over random slices.

    Attributes:
        num_slices: random directions ``K`` drawn per call.
        t_max: half-width of the integration interval.
        knots: trapezoid points on ``[0, t_max]``.
        seed: seed of the directions; call ``c`` draws from ``seed * 1_000_003 + c``, the same on every rank.

    Example:
        ```python
        sigreg = SIGReg(num_slices=128)
        embeddings = encoder(images).tokens.mean(dim=1)       # (B, D)
        loss = prediction_loss + 0.05 * sigreg(embeddings)   # LeJEPA's lambda = 0.05
        ```

    Raises:
        ValueError: when the embeddings are not ``(N, D)`` with ``N >= 2``.
    """

    def __init__(self, num_slices: int = 128, t_max: float = 3.0, knots: int = 17, seed: int = 0) -> None:
        super().__init__()
        self.num_slices = int(num_slices)
        self.t_max = float(t_max)
        self.knots = int(knots)
        self.seed = int(seed)
        self._calls = 0
        self._generator = torch.Generator()

    def get_extra_state(self) -> dict[str, int]:
        """The call counter, saved with the loss in checkpoints: a resumed run draws the same directions."""
        return {"calls": self._calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._calls = int(state.get("calls", 0))

    def forward(self, embeddings: Tensor) -> Tensor:
        """SIGReg of ``(N, D)`` embeddings (``(..., D)`` is flattened to rows); a float32 scalar."""
        rows = embeddings.reshape(-1, embeddings.shape[-1])
        if rows.shape[0] < 2:
            raise ValueError(f"SIGReg needs at least 2 embeddings, got shape {tuple(embeddings.shape)}")
        self._generator.manual_seed(self.seed * 1_000_003 + self._calls)
        self._calls += 1
        directions = random_directions(rows.shape[1], self.num_slices, self._generator, rows.device)
        return epps_pulley(rows.float() @ directions, self.t_max, self.knots).mean()
