"""The stacked probes of the ``attentive_probe`` evaluator, and the AdamW that trains them together.

Two heads: :class:`AttentiveProbes` (``head: vjepa``) and :class:`EfficientProbes` (``head: efficient``).

``G`` probes of V-JEPA's design (Bardes et al. 2024, ``src/models/attentive_pooler.py`` of
``facebookresearch/jepa``; written here from its description): one learned query, one
cross-attention block with a residual MLP, a linear layer to the classes (the evaluator,
:mod:`hjepa_kit.plugins.attentive_probe`, describes the block). Their parameters are stacked
along a first axis of size ``G``, so a mini-batch goes through every probe with a few batched
matrix products and one optimiser step updates them all, each with its own learning rate and
weight decay. Initialisation follows V-JEPA: weights and the query from a normal of standard
deviation 0.02, biases zero, LayerNorms identity, the two output projections (attention and MLP)
divided by ``sqrt(2)``.

**A single query needs no keys.** The keys and values of the ``T`` tokens are never formed: the
attention logits are ``q_h . (W_k,h (g * x_t + b)) = (g * W_k,h^T q_h) . x_t + const`` (``x_t``
the normalised token, ``g, b`` the LayerNorm's affine; a constant in ``t`` does not change the
softmax, so the key bias is omitted: it cannot change the function), and the attended value is
``W_v,h (g * sum_t a_t x_t + b) + b_v`` since the weights ``a_t`` sum to one. Per image and probe
the work is ``O(T D H + D^2)`` instead of ``O(T D^2)``: the same function as the block written with
full keys and values, about ``T`` times cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["AttentiveProbes", "EfficientProbes", "normalise_tokens", "StackedAdamW"]

_LN_EPS = 1e-5  # torch.nn.LayerNorm's, as in V-JEPA


class _StackedProbes:
    """What both heads share: ``G`` probes' parameters in :attr:`params`, called on ``(B, T, D)`` tokens."""

    count: int
    num_classes: int
    params: dict[str, Tensor]

    def __call__(self, tokens: Tensor, normalised: bool = False) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, tokens: Tensor, batch_size: int, normalised: bool = False) -> Tensor:
        """``(G, N, C)`` logits of ``(N, T, D)`` tokens of any dtype, in batches."""
        parts = [self(tokens[i : i + batch_size].float(), normalised) for i in range(0, tokens.shape[0], batch_size)]
        return torch.cat(parts, dim=1) if parts else torch.zeros(self.count, 0, self.num_classes, device=self.params["wh"].device)


def _normal(generator: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.nn.init.trunc_normal_(torch.empty(*shape), std=0.02, generator=generator) * scale


class AttentiveProbes(_StackedProbes):
    """``G`` independent attentive probes whose parameters are stacked along a first axis of size ``G``.

    Each parameter is one tensor ``(G, ...)`` (:attr:`params`), so a mini-batch goes through every
    probe with a few batched matrix products and one optimiser step updates all of them
    (:class:`StackedAdamW`, with a learning rate and a weight decay per probe).

    Args:
        count: ``G``, the number of probes.
        dim: token width ``D``.
        num_classes: ``C``.
        num_heads: attention heads ``H`` (divides ``D``).
        mlp_ratio: MLP hidden width / ``D``.
        generator: the source of the initial weights (a CPU generator).
        device: where the parameters live.
    """

    #: Parameters without weight decay (biases and LayerNorms), as in V-JEPA.
    NO_DECAY = ("bq", "bv", "bo", "ln1_w", "ln1_b", "ln2_w", "ln2_b", "b1", "b2", "bh")

    def __init__(self, count: int, dim: int, num_classes: int, num_heads: int, mlp_ratio: float, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.count, self.dim, self.num_classes, self.num_heads = count, dim, num_classes, num_heads
        hidden = max(1, int(round(dim * mlp_ratio)))
        g = count

        def normal(*shape: int, scale: float = 1.0) -> Tensor:
            return _normal(generator, g, *shape, scale=scale)

        def ones(size: int) -> Tensor:
            return torch.ones(g, size)

        def zeros(size: int) -> Tensor:
            return torch.zeros(g, size)

        params = {
            "query": normal(dim),
            "ln1_w": ones(dim), "ln1_b": zeros(dim),
            "wq": normal(dim, dim), "bq": zeros(dim),
            "wk": normal(dim, dim),
            "wv": normal(dim, dim), "bv": zeros(dim),
            "wo": normal(dim, dim, scale=2**-0.5), "bo": zeros(dim),
            "ln2_w": ones(dim), "ln2_b": zeros(dim),
            "w1": normal(hidden, dim), "b1": zeros(hidden),
            "w2": normal(dim, hidden, scale=2**-0.5), "b2": zeros(dim),
            "wh": normal(num_classes, dim), "bh": zeros(num_classes),
        }  # fmt: skip
        # Drawn on the CPU (the generator's device), then moved: the same weights on every device.
        self.params: dict[str, Tensor] = {k: v.to(device).requires_grad_(True) for k, v in params.items()}

    def __call__(self, tokens: Tensor, normalised: bool = False) -> Tensor:
        """``(G, B, C)`` logits of every probe for ``(B, T, D)`` float32 tokens.

        ``normalised``: the tokens already went through :func:`normalise_tokens` (the first
        LayerNorm without its affine, which has no parameter and is the same for every probe).
        """
        s = self.params
        g, h, d = self.count, self.num_heads, self.dim
        dh = d // h
        b, t, _ = tokens.shape
        x = tokens if normalised else F.layer_norm(tokens, (d,), eps=_LN_EPS)
        q = torch.einsum("ge,gde->gd", s["query"], s["wq"]) + s["bq"]  # (G, D)
        # Logits q_h . W_k,h (ln1_w * x_t): fold W_k and the LayerNorm scale into one vector per head.
        u = torch.einsum("ghe,ghed->ghd", q.view(g, h, dh), s["wk"].view(g, h, dh, d)) * s["ln1_w"][:, None, :]
        scores = (x.reshape(b * t, d) @ (u.reshape(g * h, d).T / math.sqrt(dh))).view(b, t, g * h)
        attn = scores.softmax(dim=1).transpose(1, 2)  # (B, G*H, T), over the tokens
        pooled = torch.bmm(attn, x).view(b, g, h, d).transpose(0, 1)  # (G, B, H, D): sum_t a_t x_t
        pooled = pooled * s["ln1_w"][:, None, None, :] + s["ln1_b"][:, None, None, :]  # the weights sum to 1
        values = torch.einsum("gbhd,ghed->gbhe", pooled, s["wv"].view(g, h, dh, d)).reshape(g, b, d) + s["bv"][:, None, :]
        y = s["query"][:, None, :] + torch.baddbmm(s["bo"][:, None, :], values, s["wo"].transpose(1, 2))
        z = F.layer_norm(y, (d,), eps=_LN_EPS) * s["ln2_w"][:, None, :] + s["ln2_b"][:, None, :]
        z = F.gelu(torch.baddbmm(s["b1"][:, None, :], z, s["w1"].transpose(1, 2)))
        y = y + torch.baddbmm(s["b2"][:, None, :], z, s["w2"].transpose(1, 2))
        return torch.baddbmm(s["bh"][:, None, :], y, s["wh"].transpose(1, 2))


class EfficientProbes(_StackedProbes):
    """``G`` stacked *efficient probes* (EP; Psomas et al. 2025, "Attention, Please! Revisiting
    Attentive Probing for Masked Image Modeling"; written here from the paper's description).

    ``K`` learned queries attend over the tokens with no query or key projection (the logits are
    ``q_k . x_t / sqrt(D)``); one value projection ``W_v`` (``D x D``, no bias) is split into ``K``
    slices of ``D / K`` rows, and query ``k`` pools slice ``k`` of the values: the output is the
    ``K`` pooled slices side by side, ``D`` wide, then a LayerNorm and a linear layer to the classes.
    Since the weights ``a_kt`` sum to one, slice ``k`` of ``sum_t a_kt W_v x_t`` is
    ``W_v,k (sum_t a_kt x_t)``: the values are never formed, the work per image and probe is
    ``O(K T D + D^2)``. Each query may look at a different part of the image, where V-JEPA's one
    query (:class:`AttentiveProbes`) averages all it reads with one set of weights per head.

    Args:
        count: ``G``; dim: ``D``; num_classes: ``C``.
        num_queries: ``K`` (divides ``D``).
        generator: the source of the initial weights (a CPU generator); device: where they live.
    """

    NO_DECAY = ("ln_w", "ln_b", "bh")

    def __init__(self, count: int, dim: int, num_classes: int, num_queries: int, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        if dim % num_queries:
            raise ValueError(f"num_queries={num_queries} does not divide the token width {dim}")
        self.count, self.dim, self.num_classes, self.num_queries = count, dim, num_classes, num_queries
        g = count
        params = {
            "query": _normal(generator, g, num_queries, dim),
            "wv": _normal(generator, g, dim, dim),
            "ln_w": torch.ones(g, dim), "ln_b": torch.zeros(g, dim),
            "wh": _normal(generator, g, num_classes, dim), "bh": torch.zeros(g, num_classes),
        }  # fmt: skip
        self.params: dict[str, Tensor] = {k: v.to(device).requires_grad_(True) for k, v in params.items()}

    def __call__(self, tokens: Tensor, normalised: bool = False) -> Tensor:
        """``(G, B, C)`` logits of every probe for ``(B, T, D)`` float32 tokens (see :meth:`AttentiveProbes.__call__`)."""
        s = self.params
        g, k, d = self.count, self.num_queries, self.dim
        b, t, _ = tokens.shape
        x = tokens if normalised else F.layer_norm(tokens, (d,), eps=_LN_EPS)
        scores = (x.reshape(b * t, d) @ (s["query"].reshape(g * k, d).T / math.sqrt(d))).view(b, t, g * k)
        attn = scores.softmax(dim=1).transpose(1, 2)  # (B, G*K, T), over the tokens
        pooled = torch.bmm(attn, x).view(b, g, k, d)  # sum_t a_kt x_t
        y = torch.einsum("bgkd,gkcd->gbkc", pooled, s["wv"].view(g, k, d // k, d)).reshape(g, b, d)
        z = F.layer_norm(y, (d,), eps=_LN_EPS) * s["ln_w"][:, None, :] + s["ln_b"][:, None, :]
        return torch.baddbmm(s["bh"][:, None, :], z, s["wh"].transpose(1, 2))


@torch.no_grad()
def normalise_tokens(tokens: Tensor, chunk: int = 4096) -> Tensor:
    """Each token standardised over its ``D`` values (a LayerNorm without affine), in ``tokens``' dtype.

    Done once before training instead of at every step of every epoch; computed in float32 in
    chunks of ``chunk`` images, so the extra memory is one copy of the tokens.
    """
    out = torch.empty_like(tokens)
    for i in range(0, tokens.shape[0], chunk):
        out[i : i + chunk] = F.layer_norm(tokens[i : i + chunk].float(), (tokens.shape[-1],), eps=_LN_EPS).to(tokens.dtype)
    return out


class StackedAdamW:
    """AdamW (Loshchilov & Hutter 2019, decoupled weight decay; torch's defaults ``betas=(0.9, 0.999)``,
    ``eps=1e-8``) over stacked ``(G, ...)`` parameters, with probe ``g``'s own learning rate and
    weight decay: one update of all ``G`` probes is a handful of tensor operations per parameter.

    Args:
        params: name -> ``(G, ...)`` leaf tensor.
        lr: ``(G,)`` peak learning rates; weight_decay: ``(G,)``.
        no_decay: names of parameters without weight decay.
    """

    def __init__(self, params: Mapping[str, Tensor], lr: Tensor, weight_decay: Tensor, no_decay: Sequence[str] = (),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:  # fmt: skip
        self.params = dict(params)
        self.lr, self.weight_decay = lr.to(torch.float32), weight_decay.to(torch.float32)
        self.no_decay = set(no_decay)
        self.betas, self.eps = betas, eps
        self.step_count = 0
        self.exp_avg = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in self.params.items()}

    @torch.no_grad()
    def step(self, factor: float = 1.0) -> None:
        """One update with the learning rates scaled by ``factor`` (the schedule)."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1**self.step_count
        correction2 = 1 - beta2**self.step_count
        lr = self.lr * factor
        for name, p in self.params.items():
            grad = p.grad
            if grad is None:
                continue
            shape = (-1,) + (1,) * (p.ndim - 1)
            if name not in self.no_decay:
                p.mul_((1 - lr * self.weight_decay).view(shape))
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / correction2).sqrt_().add_(self.eps)
            p.addcdiv_(m * (lr / correction1).view(shape), denom, value=-1.0)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None
