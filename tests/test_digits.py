"""The embedded ``digits`` dataset: real handwritten digits, offline."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from hjepa_kit.contracts import BuildContext
from hjepa_kit.errors import DataError
from hjepa_kit.plugins.digits import DigitsParams, build_digits, digits_split_indices, load_raw_digits
from hjepa_kit.registry import Registry


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the digits dataset must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_the_embedded_file_holds_the_uci_digits(no_network) -> None:
    images, labels = load_raw_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # The first digit of the UCI set is a 0 with this top row.
    assert labels[0] == 0 and images[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


def test_the_split_is_fixed_stratified_and_disjoint() -> None:
    _, labels = load_raw_digits()
    train, test = digits_split_indices(labels, "train"), digits_split_indices(labels, "test")
    assert len(train) == 1258 and len(test) == 539
    assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
    assert np.array_equal(train, digits_split_indices(labels, "train"))  # fixed
    per_class = np.bincount(labels[train]) / np.bincount(labels)
    assert np.all(np.abs(per_class - 0.7) < 0.01)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_splits_are_resized_rgb_uint8_with_labels(no_network, interpolation) -> None:
    data = build_digits(DigitsParams(interpolation=interpolation), BuildContext(image_size=32))
    assert data.num_classes == 10 and data.splits == ("train", "test") and data.image_size == 32
    train = data.load("train")
    assert train.images.shape == (1258, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.classes[3] == "3"
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grey
    assert data.estimate_bytes("test") == 539 * 3 * 32 * 32
    raw, labels = load_raw_digits()
    first = digits_split_indices(labels, "train")[0]
    source = torch.from_numpy(raw[first]).float() * 255 / 16
    if interpolation == "nearest":
        # Every source pixel becomes a solid 4x4 square of its own value.
        assert torch.equal(train.images[0, 0, ::4, ::4].float(), source.round())
        assert torch.equal(train.images[0, 0, 3::4, 3::4].float(), source.round())
    else:
        # Smooth: the mean brightness is kept and ink spreads to neighbours.
        assert train.images[0, 0].float().mean().item() == pytest.approx(source.mean().item(), abs=2.0)


def test_image_size_comes_from_params_then_the_run_then_32() -> None:
    assert build_digits(DigitsParams(image_size=16), BuildContext(image_size=64)).image_size == 16
    assert build_digits(DigitsParams(), BuildContext(image_size=64)).image_size == 64
    assert build_digits(DigitsParams(), BuildContext(image_size=0)).image_size == 32
    assert build_digits(DigitsParams(image_size=8), BuildContext(image_size=0)).load("test").images.shape[-1] == 8


def test_an_unknown_split_names_the_ones_there_are() -> None:
    with pytest.raises(DataError, match="digits has no split 'unlabeled'; it has train, test"):
        build_digits(DigitsParams(), BuildContext(image_size=32)).load("unlabeled")


def test_digits_is_a_registered_dataset() -> None:
    component = Registry().get("dataset", "digits")
    assert "handwritten" in component.summary
