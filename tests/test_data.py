"""Batched augmentation, evaluation batches and the training loaders (order, shards, resume)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hjepa_kit.config import AugmentationConfig, DataConfig
from hjepa_kit.contracts import ImageData
from hjepa_kit.data.augment import BatchAugment, eval_transform, sample_crop_boxes
from hjepa_kit.data.loader import (
    InMemoryTrainLoader,
    StreamingTrainLoader,
    build_train_loader,
    choose_in_memory,
    iter_eval_batches,
)
from hjepa_kit.errors import DataError

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def gradient_images(batch: int, size: int = 32) -> torch.Tensor:
    """(B, 3, S, S) uint8, every image the same: red grows left to right, green top to bottom."""
    ramp = torch.linspace(0, 255, size)
    image = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), torch.full((size, size), 128.0)])
    return image.round().to(torch.uint8).expand(batch, 3, size, size).contiguous()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- BatchAugment -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 224])
def test_augment_shape_dtype_and_normalisation_range(size):
    config = AugmentationConfig()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = BatchAugment(config, size)(images, gen())
    assert out.shape == (8, 3, size, size) and out.dtype == torch.float32
    for c in range(3):
        low = (0 - config.mean[c]) / config.std[c]
        high = (1 - config.mean[c]) / config.std[c]
        assert float(out[:, c].min()) >= low - 1e-4 and float(out[:, c].max()) <= high + 1e-4


def test_each_sample_gets_its_own_crop():
    out = BatchAugment(AugmentationConfig(hflip=False, **PLAIN), 32)(gradient_images(16), gen())
    flat = out.flatten(1)
    distinct = sum(not torch.allclose(flat[i], flat[j]) for i in range(16) for j in range(i + 1, 16))
    assert distinct == 16 * 15 // 2
    # The crops come from the image: values stay within the gradient's range.
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_flips_happen_about_half_the_time_and_mirror_the_image():
    augment = BatchAugment(AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **PLAIN), 32)
    images = gradient_images(400)
    params = augment.sample(400, 32, 32, gen(1))
    assert 0.4 < params.flips.float().mean().item() < 0.6
    out = augment.apply(images, params)
    plain = images.float() / 255
    assert torch.allclose(out[params.flips], plain[params.flips].flip(-1), atol=1e-5)
    assert torch.allclose(out[~params.flips], plain[~params.flips], atol=1e-5)
    no_flip = BatchAugment(AugmentationConfig(hflip=False), 32).sample(400, 32, 32, gen(1))
    assert not bool(no_flip.flips.any())


@pytest.mark.parametrize("size", [48, 224, 20])
def test_full_crop_without_flip_equals_plain_resize(size):
    config = AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = BatchAugment(config, size)(images, gen())
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    resized = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    reference = (resized - mean) / std
    assert torch.allclose(out, reference, atol=1e-4)
    assert torch.allclose(eval_transform(images, size, config.mean, config.std), reference, atol=1e-4)


def test_colour_jitter_and_grayscale_match_torchvision_per_sample():
    from torchvision.transforms import functional as TF

    config = AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False,
                                color_jitter=0.6, color_jitter_prob=0.8, grayscale_prob=0.3)
    augment = BatchAugment(config, 32)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    params = augment.sample(64, 32, 32, gen(3))
    out = augment.apply(images, params)
    colour = params.colour
    jittered = (colour[:, :3] != 1.0).any(dim=1)
    assert 0.6 < jittered.float().mean() < 0.95 and 0.1 < colour[:, 3].mean() < 0.5
    assert float(colour[:, :3].min()) >= 0.4 and float(colour[:, :3].max()) <= 1.6
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    for i in range(64):
        x = images[i].float() / 255
        b, c, s, grey = colour[i].tolist()
        x = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
        if grey:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        assert torch.allclose(out[i], (x - mean) / std, atol=1e-4), i


def test_nearest_resampling_matches_torch_nearest_exact_per_sample():
    config = AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, nearest_prob=0.5, **PLAIN)
    augment = BatchAugment(config, 32)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    params = augment.sample(64, 8, 8, gen(2))
    assert 0.3 < params.nearest.float().mean() < 0.7
    out = augment.apply(images, params)
    x = images.float() / 255
    blocky = F.interpolate(x, size=(32, 32), mode="nearest-exact")
    smooth = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out[params.nearest], blocky[params.nearest], atol=1e-6)
    assert torch.allclose(out[~params.nearest], smooth[~params.nearest], atol=1e-5)


def test_nearest_crops_only_hold_pixels_of_the_image_and_flip_as_the_bilinear_ones():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    config = AugmentationConfig(nearest_prob=1.0, **PLAIN)
    params = BatchAugment(config, 48).sample(32, 32, 32, gen(4))
    out = BatchAugment(config, 48).apply(images, params)
    levels = torch.arange(256, dtype=torch.float32) / 255  # no value between two pixels: no blur
    assert torch.isclose(out.flatten()[:, None], levels[None]).any(dim=1).all()
    # With the crop boxes of the draw, each sample is torch's nearest resize of its (flipped) crop.
    for i in range(32):
        top, left, h, w = params.boxes[i].tolist()
        crop = images[i : i + 1, :, top : top + h, left : left + w].float() / 255
        if params.flips[i]:
            crop = crop.flip(-1)
        assert torch.allclose(out[i], F.interpolate(crop, size=(48, 48), mode="nearest-exact")[0], atol=1e-6), i


def test_blur_is_a_gaussian_folded_into_the_resize():
    from torchvision.transforms import functional as TF

    config = AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, blur_prob=0.5,
                                blur_sigma=(0.5, 1.5), **PLAIN)
    augment = BatchAugment(config, 32)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    params = augment.sample(64, 32, 32, gen(6))
    blurred = params.blur > 0
    assert 0.3 < blurred.float().mean() < 0.7
    assert float(params.blur[blurred].min()) >= 0.5 and float(params.blur.max()) <= 1.5
    out = augment.apply(images, params)
    x = images.float() / 255
    assert torch.allclose(out[~blurred], x[~blurred], atol=1e-5)  # sigma 0: the crop alone
    for i in blurred.nonzero().flatten().tolist():
        sigma = float(params.blur[i])
        reference = TF.gaussian_blur(x[i], kernel_size=[31, 31], sigma=[sigma, sigma])
        inner = slice(6, 26)  # away from the border, where torchvision reflects and this renormalises
        assert torch.allclose(out[i][:, inner, inner], reference[:, inner, inner], atol=2e-3), i
    # blurring averages: a constant image stays constant, noise loses variance
    flat = torch.full((64, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.allclose(augment.apply(flat, params), torch.full((64, 3, 32, 32), 77 / 255), atol=1e-5)
    assert float(out[blurred].std()) < 0.8 * float(x[blurred].std())


def test_pixel_noise_is_added_per_image_at_its_drawn_std():
    config = AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, noise_prob=0.5,
                                noise_std=(0.05, 0.1), std=(0.5, 0.25, 0.2), mean=(0.0, 0.0, 0.0))
    augment = BatchAugment(config, 32)
    images = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    params = augment.sample(64, 32, 32, gen(9))
    out = augment.apply(images, params)
    pixels = out * torch.tensor(config.std).view(1, 3, 1, 1)  # back to [0, 1] units
    spread = pixels.flatten(1).std(dim=1)
    noisy = spread > 0
    assert 0.3 < noisy.float().mean() < 0.7
    assert float(spread[noisy].min()) > 0.04 and float(spread[noisy].max()) < 0.11
    assert torch.allclose(pixels[~noisy], torch.full_like(pixels[~noisy], 128 / 255), atol=1e-5)
    assert torch.allclose(pixels, 128 / 255 + params.noise, atol=1e-5)


@pytest.mark.parametrize(
    "attribute, setting, shape",
    [("colour", {"color_jitter": 0.4}, (8, 4)), ("nearest", {"nearest_prob": 0.3}, (8,)),
     ("blur", {"blur_prob": 1.0}, (8,)), ("noise", {"noise_prob": 0.1}, (8, 3, 32, 32))],
)
def test_an_augmentation_draws_only_when_on(attribute, setting, shape):
    # Off, it draws nothing from the generator, so runs from before it existed replay exactly.
    generator = gen(5)
    assert getattr(BatchAugment(AugmentationConfig(), 32).sample(8, 32, 32, generator), attribute) is None
    after_plain = torch.rand(1, generator=generator)
    generator = gen(5)
    assert getattr(BatchAugment(AugmentationConfig(**setting), 32).sample(8, 32, 32, generator), attribute).shape == shape
    assert not torch.equal(torch.rand(1, generator=generator), after_plain)


@pytest.mark.parametrize(
    "setting, key",
    [({"nearest_prob": 1.5}, "nearest_prob"), ({"blur_prob": -0.1}, "blur_prob"),
     ({"blur_sigma": (2.0, 1.0)}, "blur_sigma"), ({"noise_std": (0.2, 0.1)}, "noise_std")],
)
def test_augmentation_settings_out_of_range_name_their_key(setting, key):
    with pytest.raises(ValueError, match=key):
        AugmentationConfig(**setting)


def test_augment_is_reproducible_with_the_same_generator():
    augment = BatchAugment(AugmentationConfig(), 32)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(augment(images, gen(5)), augment(images, gen(5)))
    assert not torch.equal(augment(images, gen(5)), augment(images, gen(6)))


def test_crop_boxes_follow_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    scale, ratio = (0.3, 1.0), (0.75, 4 / 3)
    boxes = sample_crop_boxes(4000, 32, 32, scale, ratio, gen(2))
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all())
    assert bool((boxes[:, 0] + boxes[:, 2] <= 32).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all())
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32)
    reference = torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(4000)])
    for name, ours, theirs in (
        ("area", boxes[:, 2] * boxes[:, 3] / 1024, reference[:, 2] * reference[:, 3] / 1024),
        ("log ratio", torch.log(boxes[:, 3] / boxes[:, 2]), torch.log(reference[:, 3].float() / reference[:, 2])),
        ("top", boxes[:, 0].float(), reference[:, 0].float()),
    ):
        ours, theirs = ours.double(), theirs.double()
        assert abs(ours.mean() - theirs.mean()) < 4 * theirs.std() / math.sqrt(4000) + 1e-3, name
        assert abs(ours.std() - theirs.std()) < 0.1 * theirs.std() + 1e-3, name


def test_crop_falls_back_to_a_centre_crop():
    boxes = sample_crop_boxes(5, 32, 32, (0.9, 1.0), (3.0, 4.0), gen())  # no such box fits a square
    assert boxes.tolist() == [[10, 0, 11, 32]] * 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_augment_runs_on_the_device_of_its_input():
    augment = BatchAugment(AugmentationConfig(), 64)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    on_gpu = augment(images.cuda(), gen(3))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), augment(images, gen(3)), atol=1e-4)


# --- evaluation batches -----------------------------------------------------------------------


def test_eval_transform_only_normalises_at_native_size():
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = eval_transform(images, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(out, (images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_iter_eval_batches_keeps_order_and_the_last_partial_batch():
    data = ImageData(images=torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8), labels=torch.arange(10))
    batches = list(iter_eval_batches(data, image_size=16, batch_size=4, **PLAIN))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(10))
    assert batches[0][0].shape == (4, 3, 16, 16)
    unlabelled = ImageData(images=data.images)
    assert all(labels is None for _, labels in iter_eval_batches(unlabelled, image_size=8, batch_size=4, **PLAIN))


def test_iter_eval_batches_reads_a_stream_like_ram():
    data = ImageData(images=torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8), labels=torch.arange(7))
    from_ram = list(iter_eval_batches(data, image_size=8, batch_size=3, **PLAIN))
    from_stream = list(iter_eval_batches(_Stream(data), image_size=8, batch_size=3, **PLAIN))
    for (a, la), (b, lb) in zip(from_ram, from_stream):
        assert torch.equal(a, b) and torch.equal(la, lb)


# --- training loaders -------------------------------------------------------------------------


class _Stream(torch.utils.data.Dataset):
    """A stream over an ImageData, as a dataset's ``open_stream`` returns."""

    def __init__(self, data: ImageData) -> None:
        self.data = data
        self.labelled = data.labels is not None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.images[i], (-1 if self.data.labels is None else int(self.data.labels[i]))


class _Dataset:
    """A minimal dataset component; labels are the sample indices, so batches reveal the order."""

    splits = ("train",)
    num_classes = 3

    def __init__(self, n: int, size: int = 8, streamable: bool = True) -> None:
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen(9))
        self.data = ImageData(images=images, labels=torch.arange(n))
        self.image_size = size
        self.loads = 0
        if streamable:
            self.open_stream = lambda split: _Stream(self.data)

    def load(self, split: str) -> ImageData:
        self.loads += 1
        return self.data

    def estimate_bytes(self, split: str) -> int:
        return self.data.images.numel()


def loader(n: int = 48, batch_size: int = 8, *, rank: int = 0, world_size: int = 1, in_memory: str = "always", **kwargs):
    cfg = DataConfig(batch_size=batch_size, in_memory=in_memory, **kwargs)
    return build_train_loader(_Dataset(n), cfg, image_size=8, seed=7, rank=rank, world_size=world_size)


def epoch_labels(train_loader) -> list[int]:
    return torch.cat([labels for _, labels in train_loader]).tolist()


def test_loader_length_drops_the_incomplete_batch():
    assert len(loader(50, 8)) == 6
    batches = list(loader(50, 8))
    assert len(batches) == 6 and all(images.shape == (8, 3, 8, 8) and images.dtype == torch.float32 for images, _ in batches)


def test_every_image_once_per_epoch_and_a_new_order_each_epoch():
    train = loader(48, 8)
    train.set_epoch(0)
    first = epoch_labels(train)
    assert sorted(first) == list(range(48))
    assert epoch_labels(train) == first  # iterating again repeats the epoch
    train.set_epoch(1)
    second = epoch_labels(train)
    assert sorted(second) == list(range(48)) and second != first


def test_ddp_shards_are_disjoint_and_cover_the_epoch():
    shards = []
    for rank in range(3):
        train = loader(48, 4, rank=rank, world_size=3)
        train.set_epoch(2)
        shards.append(epoch_labels(train))
        assert len(train) == 4
    assert all(len(s) == 16 for s in shards)
    assert sorted(sum(shards, [])) == list(range(48))
    # Different ranks augment with different draws.
    ranks = [loader(48, 4, rank=r, world_size=3) for r in (0, 1)]
    assert ranks[0].batch_generator(0).initial_seed() != ranks[1].batch_generator(0).initial_seed()


def test_resume_inside_an_epoch_reproduces_the_batches():
    uninterrupted = loader(64, 8)
    uninterrupted.set_epoch(3)
    expected = list(uninterrupted)

    resumed = loader(64, 8)
    resumed.set_epoch(3)
    resumed.skip(5)
    got = list(resumed)
    assert len(got) == 3
    for (a, la), (b, lb) in zip(expected[5:], got):
        assert torch.equal(a, b) and torch.equal(la, lb)

    # state_dict taken while iterating, restored into a fresh loader.
    partial = loader(64, 8)
    partial.set_epoch(3)
    iterator = iter(partial)
    for _ in range(2):
        next(iterator)
    state = partial.state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == 2
    fresh = loader(64, 8)
    fresh.load_state_dict(state)
    for (a, _), (b, _) in zip(expected[2:], fresh):
        assert torch.equal(a, b)


def test_resume_with_other_settings_is_refused():
    state = loader(64, 8).state_dict()
    with pytest.raises(DataError, match="batch_size=8"):
        loader(64, 4).load_state_dict(state)


def test_too_few_images_for_one_batch():
    with pytest.raises(DataError, match="fewer than data.batch_size=8"):
        loader(10, 8, world_size=2)


def test_unknown_split_is_a_data_error():
    with pytest.raises(DataError, match="no split 'unlabeled'"):
        build_train_loader(_Dataset(16), DataConfig(train_split="unlabeled"), seed=0)


def test_auto_chooses_ram_or_stream_by_size():
    small = _Dataset(16)  # 16 * 192 bytes
    assert choose_in_memory(small, "train", "auto", memory_limit_mb=1)
    assert not choose_in_memory(small, "train", "auto", memory_limit_mb=0)
    assert not choose_in_memory(small, "train", "never", memory_limit_mb=100)
    assert choose_in_memory(small, "train", "always", memory_limit_mb=0)
    with pytest.warns(UserWarning, match="cannot stream"):
        assert choose_in_memory(_Dataset(16, streamable=False), "train", "never", memory_limit_mb=100)
    assert isinstance(loader(in_memory="auto", memory_limit_mb=1), InMemoryTrainLoader)


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_batches_equal_in_memory_batches(workers):
    in_ram = loader(32, 8, in_memory="always")
    streamed = loader(32, 8, in_memory="never", num_workers=workers)
    assert isinstance(in_ram, InMemoryTrainLoader) and isinstance(streamed, StreamingTrainLoader)
    assert not streamed.in_memory and len(streamed) == len(in_ram) == 4
    for loaders in ((in_ram, streamed),):
        for each in loaders:
            each.set_epoch(1)
            each.skip(1)
    for (a, la), (b, lb) in zip(in_ram, streamed):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_image_size_defaults_to_config_then_native():
    dataset = _Dataset(16)
    assert build_train_loader(dataset, DataConfig(batch_size=4), seed=0).image_size == 8
    assert build_train_loader(dataset, DataConfig(batch_size=4, image_size=12), seed=0).image_size == 12
    images, labels = next(iter(build_train_loader(dataset, DataConfig(batch_size=4, image_size=12), seed=0)))
    assert images.shape == (4, 3, 12, 12) and labels.shape == (4,)


def test_non_square_images_crop_and_resize_per_axis():
    images = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8)
    ratio = 40 / 24
    config = AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(ratio, ratio), hflip=False, **PLAIN)
    out = BatchAugment(config, 16)(images, gen())
    reference = F.interpolate(images.float() / 255, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(out, reference, atol=1e-4)
    boxes = sample_crop_boxes(200, 24, 40, (0.3, 1.0), (0.75, 4 / 3), gen())
    assert bool((boxes[:, 0] + boxes[:, 2] <= 24).all() and (boxes[:, 1] + boxes[:, 3] <= 40).all())
