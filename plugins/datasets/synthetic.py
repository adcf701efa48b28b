"""Dataset ``synthetic``: embedded labelled shapes generated in memory (no files, no download)."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from hjepa_kit.contracts import BuildContext, ImageData
from hjepa_kit.errors import DataError
from hjepa_kit.params import param

__all__ = ["SyntheticParams", "SyntheticDataset", "SHAPES", "ShapeFactors", "build_synthetic", "render_shapes", "shape_factors"]


@attrs.frozen(kw_only=True)
class SyntheticParams:
    """Parameters of ``synthetic``."""

    num_train: int = param(5000, ge=1, help="Images in the train split.")
    num_test: int = param(1000, ge=1, help="Images in the test split.")
    image_size: int = param(32, ge=16, le=512, help="Side of the square images.")
    num_classes: int = param(10, ge=2, le=10, help="Number of shape classes (the first N of disc, square, triangle, ...).")
    noise: float = param(0.08, ge=0.0, le=1.0, help="Largest std of the per-pixel noise (each image draws its own in [0, noise]).")
    seed: int = param(0, help="Seed of the generated images (the same seed gives the same images).")


#: The shape classes of ``synthetic``, in label order.
SHAPES = ("disc", "square", "triangle", "plus", "ring", "stripes", "diamond", "x", "frame", "checker")

_RENDER_CHUNK = 512  # images rendered at once: bounds the float working memory


def _plus_distance(a: Tensor, b: Tensor, r: Tensor) -> Tensor:
    arm = 0.3 * r
    return torch.minimum(torch.maximum(a.abs() - r, b.abs() - arm), torch.maximum(a.abs() - arm, b.abs() - r))


def _shape_distance(kind: int, u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) of shape ``kind`` of size ``r``.

    Args:
        u, v: ``(n, S, S)`` pixel offsets from each shape's centre (x right, y down).
        r: ``(n, 1, 1)`` half-size of each shape in pixels.
    """
    name = SHAPES[kind]
    box = torch.maximum(u.abs(), v.abs())
    if name == "disc":
        return torch.hypot(u, v) - r
    if name == "square":
        return box - 0.8 * r
    if name == "triangle":  # apex up at (0, -r), base at v = 0.75 r, half-width 0.95 r
        apex_v = v + r
        norm = math.hypot(1.75, 0.95)
        right = (1.75 * u - 0.95 * apex_v) / norm
        left = (-1.75 * u - 0.95 * apex_v) / norm
        return torch.maximum(torch.maximum(right, left), v - 0.75 * r)
    if name == "plus":
        return _plus_distance(u, v, r)
    if name == "ring":
        return (torch.hypot(u, v) - 0.72 * r).abs() - 0.24 * r
    if name == "stripes":  # a square of horizontal bars
        period = 0.6 * r
        bars = ((torch.remainder(v / period, 1.0) - 0.5).abs() - 0.25) * period
        return torch.maximum(box - 0.85 * r, bars)
    if name == "diamond":
        return (u.abs() + v.abs() - 1.05 * r) / math.sqrt(2.0)
    if name == "x":
        return _plus_distance((u + v) / math.sqrt(2.0), (u - v) / math.sqrt(2.0), r)
    if name == "frame":
        return (box - 0.72 * r).abs() - 0.2 * r
    if name == "checker":  # a 2 x 2 checkerboard: two diagonal squares
        cell = 0.85 * r
        parity = (torch.floor(u / cell) + torch.floor(v / cell)).remainder(2) == 0
        return torch.where(parity, box - cell, torch.full_like(box, 1e3))
    raise ValueError(f"unknown shape {kind}")


def _colours(count: int, light: Tensor, generator: torch.Generator) -> Tensor:
    """``(count, 3, 1, 1)`` colours: channels in [0.6, 1] where ``light``, else in [0, 0.4]."""
    base = torch.rand((count, 3), generator=generator) * 0.4
    return (base + 0.6 * light[:, None].to(base.dtype)).view(count, 3, 1, 1)


@attrs.frozen
class ShapeFactors:
    """The class-independent factors of each rendered image (what a representation should ignore).

    Attributes:
        radius: ``(N,)`` half-size of the shape in pixels.
        centre: ``(N, 2)`` x, y of its centre in pixels.
        light_background: ``(N,)`` bool, a light background (and a dark shape).
        background_a, background_b: ``(N, 3)`` the background gradient's two colours in [0, 1].
        foreground: ``(N, 3)`` the shape's colour in [0, 1].
        angle: ``(N,)`` direction of the background gradient in radians.
        noise_std: ``(N,)`` std of the image's per-pixel noise.
    """

    radius: Tensor
    centre: Tensor
    light_background: Tensor
    background_a: Tensor
    background_b: Tensor
    foreground: Tensor
    angle: Tensor
    noise_std: Tensor


def shape_factors(count: int, size: int, *, noise: float, seed: int) -> ShapeFactors:
    """Draw the factors :func:`render_shapes` uses for ``count`` images (the same for the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    radius = size * (0.2 + 0.18 * torch.rand(count, generator=generator))
    centre = radius[:, None] + torch.rand((count, 2), generator=generator) * (size - 2 * radius[:, None])
    light_background = torch.rand(count, generator=generator) < 0.5
    background_a = _colours(count, light_background, generator).view(count, 3)
    background_b = _colours(count, light_background, generator).view(count, 3)
    foreground = _colours(count, ~light_background, generator).view(count, 3)
    angle = torch.rand(count, generator=generator) * (2 * math.pi)
    noise_std = torch.rand(count, generator=generator) * noise
    return ShapeFactors(radius, centre, light_background, background_a, background_b, foreground, angle, noise_std)


def render_shapes(labels: Tensor, size: int, *, noise: float, seed: int) -> Tensor:
    """Draw one shape per label on a gradient-and-noise background.

    Each image draws its own position, size, foreground colour, background gradient (two colours,
    a direction) and noise level; colours are independent of the class (the foreground is only
    kept on the other side of mid-grey from the background, for contrast), so the classes differ
    by shape alone. Work is vectorised over chunks of images; the result depends only on
    ``(labels, size, noise, seed)``.

    Args:
        labels: ``(N,)`` int64 shape indices into :data:`SHAPES`.
        size: image side ``S``.

    Returns:
        ``(N, 3, S, S)`` uint8.
    """
    count = labels.shape[0]
    factors = shape_factors(count, size, noise=noise, seed=seed)
    radius, centre, angle, noise_std = factors.radius, factors.centre, factors.angle, factors.noise_std
    background_a, background_b = factors.background_a.view(count, 3, 1, 1), factors.background_b.view(count, 3, 1, 1)
    foreground = factors.foreground.view(count, 3, 1, 1)

    out = torch.empty((count, 3, size, size), dtype=torch.uint8)
    pixel = torch.arange(size, dtype=torch.float32) + 0.5
    for start in range(0, count, _RENDER_CHUNK):
        part = slice(start, min(count, start + _RENDER_CHUNK))
        n = part.stop - part.start
        u = pixel.view(1, 1, size) - centre[part, 0].view(n, 1, 1)
        v = pixel.view(1, size, 1) - centre[part, 1].view(n, 1, 1)
        u, v = u.expand(n, size, size), v.expand(n, size, size)
        r = radius[part].view(n, 1, 1)
        distance = torch.empty((n, size, size))
        chunk_labels = labels[part]
        for kind in chunk_labels.unique().tolist():
            rows = (chunk_labels == kind).nonzero().squeeze(1)
            distance[rows] = _shape_distance(kind, u[rows], v[rows], r[rows])
        alpha = (0.5 - distance).clamp_(0.0, 1.0).unsqueeze(1)  # one-pixel antialiased edge
        cos, sin = torch.cos(angle[part]).view(n, 1, 1), torch.sin(angle[part]).view(n, 1, 1)
        ramp = (((u - size / 2) * cos + (v - size / 2) * sin) / size + 0.5).clamp_(0.0, 1.0).unsqueeze(1)
        background = background_a[part] + (background_b[part] - background_a[part]) * ramp
        image = background + (foreground[part] - background) * alpha
        chunk_noise = torch.Generator().manual_seed(seed * 1_000_003 + start)
        image += noise_std[part].view(n, 1, 1, 1) * torch.randn((n, 3, size, size), generator=chunk_noise)
        out[part] = image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out


class SyntheticDataset:
    """An embedded, labelled set of shapes, generated in memory (no files, no download).

    ``num_classes`` shapes (:data:`SHAPES`) in random colours, positions and sizes on
    gradient-and-noise backgrounds; exactly balanced classes. Deterministic in ``seed``; the train
    and test splits are drawn independently.
    """

    splits = ("train", "test")

    def __init__(self, params: SyntheticParams) -> None:
        self.params = params
        self.image_size = params.image_size
        self.num_classes: int | None = params.num_classes
        self.classes = SHAPES[: params.num_classes]
        self._cache: dict[str, ImageData] = {}

    def _count(self, split: str) -> int:
        if split not in self.splits:
            raise DataError(f"synthetic has no split {split!r}; it has {', '.join(self.splits)}")
        return self.params.num_train if split == "train" else self.params.num_test

    def estimate_bytes(self, split: str) -> int:
        """Decoded size of ``split``."""
        return self._count(split) * 3 * self.image_size**2

    def _split_seed(self, split: str) -> int:
        self._count(split)  # the unknown-split error
        return self.params.seed * 2 + self.splits.index(split)

    def factors(self, split: str) -> ShapeFactors:
        """The class-independent factors of every image of ``split``, in the order of :meth:`load`."""
        return shape_factors(self._count(split), self.image_size, noise=self.params.noise, seed=self._split_seed(split))

    def load(self, split: str) -> ImageData:
        """Generate ``split``: ``(N, 3, S, S)`` uint8 images and balanced ``(N,)`` int64 labels."""
        if split not in self._cache:
            count = self._count(split)
            split_seed = self._split_seed(split)
            order = torch.Generator().manual_seed(split_seed)
            labels = (torch.arange(count) % self.params.num_classes)[torch.randperm(count, generator=order)]
            images = render_shapes(labels, self.image_size, noise=self.params.noise, seed=split_seed)
            self._cache[split] = ImageData(images=images, labels=labels, classes=self.classes)
        return self._cache[split]


def build_synthetic(params: SyntheticParams, ctx: BuildContext) -> SyntheticDataset:
    """The ``synthetic`` dataset."""
    return SyntheticDataset(params)
