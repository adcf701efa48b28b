"""Batched training augmentation and the evaluation transform: uint8 images -> normalised float32.

Augmentation: a per-sample random resized crop (the I-JEPA scale range, sampled as torchvision's
``RandomResizedCrop`` does, with its centre-crop fallback), a per-sample horizontal flip and, when
configured, a per-sample colour jitter and grayscale (SimCLR's colour distortion without hue: Chen et
al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020), Gaussian
blur (SimCLR's, BYOL's: Grill et al., NeurIPS 2020) and additive Gaussian pixel noise. The
crop and resize are one separable resampling per sample, done as two batched matrix products
(``W_y @ X @ W_x^T``) with bilinear weights (antialiased when shrinking, as torchvision's
``antialias=True``), or, for the fraction ``nearest_prob`` of the samples, nearest-neighbour
weights (torch's ``nearest-exact``); a Gaussian blur (``blur_prob``) folds into the same weights.
A few batched matrix products instead of a per-sample sampling grid, fast enough that augmentation is never the step's bottleneck (docs/performance.md has the figures of
``benchmarks/augmentation.py``). It runs on the device of its input, so a trainer may move uint8 batches to the GPU and augment there.

The evaluation transform (:func:`eval_transform`) resizes the whole image with the same kernel and
normalises it, without randomness. The loaders of :mod:`hjepa_kit.data.loader` apply both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import AugmentationConfig

__all__ = [
    "BatchAugment",
    "CropParams",
    "sample_crop_boxes",
    "resample_weights",
    "gaussian_weights",
    "eval_transform",
]

#: torchvision's RandomResizedCrop tries this many random boxes before the centre-crop fallback.
CROP_TRIES = 10


class CropParams:
    """The random draws of one augmented batch.

    Attributes:
        boxes: ``(B, 4)`` int64 crop boxes ``(top, left, height, width)`` in input pixels.
        flips: ``(B,)`` bool, ``True`` where the sample is flipped horizontally.
        colour: ``(B, 4)`` float32 brightness, contrast and saturation factors and a grayscale flag
            (1.0: grey) per sample, or ``None`` when colour augmentation is off.
        nearest: ``(B,)`` bool, ``True`` where the crop is resized with nearest-neighbour sampling
            instead of the bilinear kernel, or ``None`` when ``nearest_prob`` is 0.
        blur: ``(B,)`` float32 std in output pixels of each sample's Gaussian blur (0: none), or
            ``None`` when ``blur_prob`` is 0.
        noise: ``(B, C, S, S)`` float32 pixel noise to add (in [0, 1] pixel units, 0 for samples
            drawn without), or ``None`` when ``noise_prob`` is 0.
    """

    __slots__ = ("boxes", "flips", "colour", "nearest", "blur", "noise")

    def __init__(
        self,
        boxes: Tensor,
        flips: Tensor,
        colour: Tensor | None = None,
        nearest: Tensor | None = None,
        blur: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> None:
        self.boxes = boxes
        self.flips = flips
        self.colour = colour
        self.nearest = nearest
        self.blur = blur
        self.noise = noise


def sample_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Draw one random resized crop box per sample, as torchvision's ``RandomResizedCrop``.

    For each sample, up to :data:`CROP_TRIES` candidates are drawn with an area fraction uniform in
    ``scale`` and a log-uniform aspect ratio in ``ratio``; the first candidate that fits is kept,
    at a uniform position. A sample with no fitting candidate gets the centre crop of the largest
    box whose ratio is within ``ratio``. All candidates are drawn at once (no Python loop per
    sample), so the number of draws from ``generator`` is fixed.

    Returns:
        ``(B, 4)`` int64 boxes ``(top, left, height, width)`` on the generator's device.
    """
    device = generator.device
    area = float(height * width)
    draws = torch.rand((batch_size, CROP_TRIES, 2), generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * draws[..., 1])
    # torch.round rounds half to even, like Python's round() that torchvision uses.
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    found = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    fallback_h, fallback_w = _centre_crop_size(height, width, ratio)
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    position = torch.rand((batch_size, 2), generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, torch.floor(position[:, 0] * (height - h + 1)), torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(position[:, 1] * (width - w + 1)), torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """The largest box of the image whose aspect ratio is clamped into ``ratio`` (the fallback)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def resample_weights(
    start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None = None, nearest: Tensor | None = None
) -> Tensor:
    """Per-sample 1-D resampling matrices for "crop ``[start, start + length)`` and resize".

    Output pixel ``k`` reads the input around its centre ``start + (k + 0.5) * length / out_size``
    with a triangle (bilinear) kernel, widened by the shrink factor when shrinking (antialiasing,
    as PIL and torchvision's ``antialias=True``); rows are normalised, so pixels near the border
    behave as clamped. For upscaling this equals ``F.interpolate(mode="bilinear",
    align_corners=False)``.

    Args:
        start: ``(B,)`` first input pixel of each crop.
        length: ``(B,)`` crop length in input pixels.
        in_size: input length in pixels.
        out_size: output length in pixels.
        flip: ``(B,)`` bool, reverse the output of these samples.
        nearest: ``(B,)`` bool, these samples read the one input pixel that holds each output
            pixel's centre (nearest-neighbour, as ``F.interpolate(mode="nearest-exact")``): no
            blur, whatever the scale.

    Returns:
        ``(B, out_size, in_size)`` float32 weights on the device of ``start``.
    """
    device = start.device
    start = start.to(torch.float32)
    step = length.to(torch.float32) / out_size
    k = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5
    k = k.expand(start.shape[0], out_size)
    if flip is not None:
        k = torch.where(flip[:, None], out_size - k, k)
    centre = start[:, None] + k * step[:, None]  # (B, out) in continuous input coordinates
    source = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5  # input pixel centres
    support = step.clamp(min=1.0)[:, None, None]
    weights = (1.0 - (source - centre[:, :, None]).abs() / support).clamp_(min=0.0)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_(min=1e-12)
    if nearest is not None:
        held = torch.floor(centre).clamp_(0, in_size - 1).to(torch.int64)  # the pixel holding each centre
        one_hot = torch.nn.functional.one_hot(held, in_size).to(weights.dtype)
        weights = torch.where(nearest.to(device)[:, None, None], one_hot, weights)
    return weights


def gaussian_weights(sigma: Tensor, size: int) -> Tensor:
    """Per-sample 1-D Gaussian blur matrices over ``size`` pixels.

    Row ``k`` holds ``exp(-(j - k)^2 / (2 sigma^2))`` over the pixels ``j`` of the line, normalised
    to sum to one (so pixels near the border average only the pixels there, as a clamped
    border). A ``sigma`` of 0 gives the identity.

    Args:
        sigma: ``(B,)`` std in pixels, ``>= 0``.

    Returns:
        ``(B, size, size)`` float32 on the device of ``sigma``.
    """
    position = torch.arange(size, device=sigma.device, dtype=torch.float32)
    distance = (position[None, :, None] - position[None, None, :]).square()  # (1, size, size)
    variance = 2.0 * sigma.to(torch.float32).square().clamp(min=1e-12)[:, None, None]
    weights = torch.exp(-distance / variance)  # sigma 0: 1 on the diagonal, exp(-1e12) = 0 off it
    return weights / weights.sum(dim=-1, keepdim=True)


def _normalised_float(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel, one pass."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images (B, C, H, W), got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != len(mean):
        raise ValueError(f"expected images (B, {len(mean)}, H, W), got shape {tuple(images.shape)}")
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=images.device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=images.device).view(1, -1, 1, 1)
    # In place on the fresh float copy: no second full-size tensor, and faster on the CPU than a
    # broadcasting addcmul (docs/performance.md).
    return images.to(torch.float32).mul_(scale).add_(shift)


def _resample(images: Tensor, weights_y: Tensor, weights_x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, S, S)``: ``W_y @ X @ W_x^T`` per sample and channel.

    Two plain batched products: rows per (sample, channel), then columns with the channels folded
    into the rows, which writes the output in place (no broadcast copies of the output).
    """
    batch, channels, height, width = images.shape
    size = weights_y.shape[1]
    rows = torch.bmm(weights_y.repeat_interleave(channels, dim=0), images.reshape(batch * channels, height, width))
    out = torch.bmm(rows.view(batch, channels * size, width), weights_x.transpose(1, 2))
    return out.view(batch, channels, size, weights_x.shape[1])


class BatchAugment:
    """I-JEPA training augmentation for a whole uint8 batch at once.

    Each image gets its own random resized crop (scale and ratio from
    :class:`~hjepa_kit.config.AugmentationConfig`) resized to ``output_size``, its own horizontal
    flip with probability 0.5 (when ``hflip``), its own colour jitter and grayscale (when
    ``color_jitter`` or ``grayscale_prob`` is above 0), and is normalised with ``mean`` / ``std``.
    Normalisation is applied before resampling (cheaper at the input size; exact, because the
    resampling weights of every output pixel sum to one).

    Example::

        augment = BatchAugment(config.data.augmentation, output_size=32)
        images = augment(uint8_batch, torch.Generator().manual_seed(0))  # (B, 3, 32, 32) float32
    """

    def __init__(self, config: AugmentationConfig, output_size: int) -> None:
        if output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")
        self.config = config
        self.output_size = int(output_size)

    def sample(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, channels: int = 3
    ) -> CropParams:
        """Draw the crops, flips and other random choices of a batch from ``generator``.

        The number of draws depends only on the configuration and the batch shape; ``channels``
        (the images' channels) shapes the pixel noise.
        """
        cfg = self.config
        boxes = sample_crop_boxes(batch_size, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
        if cfg.hflip:
            flips = torch.rand(batch_size, generator=generator, device=generator.device) < 0.5
        else:
            flips = torch.zeros(batch_size, dtype=torch.bool, device=generator.device)
        colour = None
        if cfg.color_jitter > 0 or cfg.grayscale_prob > 0:  # no draws otherwise: older runs replay exactly
            draws = torch.rand((batch_size, 5), generator=generator, device=generator.device)
            jittered = (draws[:, :1] < cfg.color_jitter_prob).float()
            factors = 1.0 + jittered * cfg.color_jitter * (2.0 * draws[:, 1:4] - 1.0)
            grey = (draws[:, 4:] < cfg.grayscale_prob).float()
            colour = torch.cat([factors, grey], dim=1)
        nearest = None
        if cfg.nearest_prob > 0:  # no draw otherwise: older runs replay exactly
            nearest = torch.rand(batch_size, generator=generator, device=generator.device) < cfg.nearest_prob
        blur = None
        if cfg.blur_prob > 0:  # no draws otherwise: older runs replay exactly
            draws = torch.rand((batch_size, 2), generator=generator, device=generator.device)
            low, high = cfg.blur_sigma
            blur = torch.where(draws[:, 0] < cfg.blur_prob, low + (high - low) * draws[:, 1], torch.zeros_like(draws[:, 1]))
        noise = None
        if cfg.noise_prob > 0:  # no draws otherwise: older runs replay exactly
            draws = torch.rand((batch_size, 2), generator=generator, device=generator.device)
            low, high = cfg.noise_std
            std = torch.where(draws[:, 0] < cfg.noise_prob, low + (high - low) * draws[:, 1], torch.zeros_like(draws[:, 1]))
            size = self.output_size
            noise = torch.randn((batch_size, channels, size, size), generator=generator, device=generator.device)
            noise.mul_(std.view(-1, 1, 1, 1))
        return CropParams(boxes, flips, colour, nearest, blur, noise)

    def apply(self, images: Tensor, params: CropParams) -> Tensor:
        """Crop, resize, flip and normalise ``(B, C, H, W)`` uint8 images with given draws.

        Returns:
            ``(B, C, S, S)`` float32 on the device of ``images``.
        """
        _, _, height, width = images.shape
        boxes = params.boxes.to(images.device)
        flips = params.flips.to(images.device)
        size = self.output_size
        if height == width:  # one call for both axes: half the small-op overhead
            starts = boxes[:, :2].T.reshape(-1)  # (2B,): tops, then lefts
            lengths = boxes[:, 2:].T.reshape(-1)  # heights, then widths
            flip_x_only = torch.cat([torch.zeros_like(flips), flips])
            nearest = None if params.nearest is None else params.nearest.to(images.device).repeat(2)
            weights_y, weights_x = resample_weights(starts, lengths, height, size, flip=flip_x_only, nearest=nearest).chunk(2)
        else:
            nearest = None if params.nearest is None else params.nearest.to(images.device)
            weights_y = resample_weights(boxes[:, 0], boxes[:, 2], height, size, nearest=nearest)
            weights_x = resample_weights(boxes[:, 1], boxes[:, 3], width, size, flip=flips, nearest=nearest)
        if params.blur is not None:  # the blur folds into the resampling: no extra pass over the pixels
            blur_y = gaussian_weights(params.blur.to(images.device), size)
            weights_y = torch.bmm(blur_y, weights_y)
            weights_x = torch.bmm(blur_y, weights_x)  # the same std on both axes (square output)
        x = _normalised_float(images, self.config.mean, self.config.std)
        out = _resample(x, weights_y, weights_x)
        if params.colour is not None:
            out = _colour_distort(out, params.colour.to(images.device), self.config.mean, self.config.std)
        if params.noise is not None:  # pixel units -> normalised units, per channel; no clamp (as sensor noise)
            inverse_std = torch.tensor([1.0 / s for s in self.config.std], device=images.device).view(1, -1, 1, 1)
            out = out + params.noise.to(images.device) * inverse_std
        return out

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment ``(B, C, H, W)`` uint8 images; all randomness comes from ``generator``.

        Returns:
            ``(B, C, S, S)`` float32, normalised, on the device of ``images``.
        """
        params = self.sample(images.shape[0], images.shape[2], images.shape[3], generator, channels=images.shape[1])
        return self.apply(images, params)


#: ITU-R 601 luma weights (torchvision's ``rgb_to_grayscale``).
_LUMA = (0.2989, 0.587, 0.114)


def _luma(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` grey level (the image itself when ``C != 3``)."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _colour_distort(x: Tensor, colour: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Brightness, contrast, saturation, then grayscale, on normalised ``(B, C, S, S)`` images.

    The operations are torchvision's ``ColorJitter`` (in a fixed order, without hue) and
    ``RandomGrayscale``, applied to the resampled crop in ``[0, 1]`` with a clamp after each, then
    normalised again. A factor of 1 and a flag of 0 leave a sample unchanged.
    """
    channels = x.shape[1]
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, channels, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, channels, 1, 1)
    factor = colour.to(x.dtype).view(-1, 4, 1, 1)
    x = (x * s + m).clamp_(0.0, 1.0)
    x = (x * factor[:, 0:1]).clamp_(0.0, 1.0)  # brightness
    grey_mean = _luma(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - grey_mean) * factor[:, 1:2] + grey_mean).clamp_(0.0, 1.0)  # contrast
    grey = _luma(x)
    x = ((x - grey) * factor[:, 2:3] + grey).clamp_(0.0, 1.0)  # saturation
    x = torch.lerp(x, _luma(x).expand_as(x), factor[:, 3:4])  # grayscale where the flag is 1
    return (x - m) / s


def eval_transform(images: Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Evaluation transform: resize the whole image to ``image_size`` and normalise; no randomness.

    Args:
        images: ``(B, C, H, W)`` uint8.
        image_size: output side ``S``; when it equals ``H`` and ``W`` the pixels are not resampled.

    Returns:
        ``(B, C, S, S)`` float32 on the device of ``images``, resampled with the same kernel as
        :class:`BatchAugment` (so ``crop_scale: [1, 1]`` training and evaluation see the same image).
    """
    x = _normalised_float(images, mean, std)
    batch, _, height, width = images.shape
    if height == image_size and width == image_size:
        return x
    device = images.device
    zeros = torch.zeros(batch, device=device)
    weights_y = resample_weights(zeros, torch.full((batch,), float(height), device=device), height, image_size)
    weights_x = resample_weights(zeros, torch.full((batch,), float(width), device=device), width, image_size)
    return _resample(x, weights_y, weights_x)
