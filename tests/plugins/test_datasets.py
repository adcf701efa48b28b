"""Dataset plugins read tiny real-format files written here: CIFAR pickles, STL-10 binaries, PNG folders."""

from __future__ import annotations

import os
import pickle
import socket
import tarfile
import time
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from hjepa_kit.contracts import BuildContext, Dataset, ImageData
from hjepa_kit.errors import DataError
from hjepa_kit.plugins import datasets as ds

from datafiles import _pickle, write_cifar10, write_cifar100, write_image_folder, write_stl10

CTX = BuildContext(image_size=32)


# --- CIFAR ------------------------------------------------------------------------------------


def test_cifar10_reads_labels_shapes_and_class_names(tmp_path):
    written = write_cifar10(tmp_path)
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), verify=False), CTX)
    assert isinstance(dataset, Dataset)
    assert dataset.splits == ("train", "test") and dataset.image_size == 32 and dataset.num_classes == 10
    train = dataset.load("train")
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    test = dataset.load("test")
    assert len(test) == 20 and test.labels.tolist() == written["test_batch"][1]
    assert dataset.estimate_bytes("train") == 50_000 * 3072  # the real archive's size


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path):
    write_cifar10(tmp_path)
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path / "cifar-10-batches-py"), verify=False), CTX)
    assert len(dataset.load("test")) == 20


def test_cifar100_fine_and_coarse_labels(tmp_path):
    written = write_cifar100(tmp_path)
    fine = ds.build_cifar100(ds.Cifar100Params(root=str(tmp_path), verify=False), CTX)
    train = fine.load("train")
    assert fine.num_classes == 100 and train.images.shape == (30, 3, 32, 32)
    assert train.labels.tolist() == written["train"][b"fine_labels"]
    assert len(train.classes) == 100 and train.classes[3] == "fine3"
    coarse = ds.build_cifar100(ds.Cifar100Params(root=str(tmp_path), verify=False, labels="coarse"), CTX)
    assert coarse.num_classes == 20
    assert coarse.load("test").labels.tolist() == written["test"][b"coarse_labels"]
    assert coarse.load("test").classes[0] == "coarse0"


def test_checksums_are_verified_by_default(tmp_path):
    write_cifar10(tmp_path)
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path)), CTX)  # verify defaults to True
    with pytest.raises(DataError) as info:
        dataset.load("test")
    message = str(info.value)
    assert "test_batch" in message and "checksum" in message and "verify: false" in message


def test_missing_file_names_file_archive_layout_and_download_switch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), verify=False), CTX)
    message = str(info.value)
    assert "data_batch_3: missing" in message
    assert "cifar-10-python.tar.gz" in message and "data_batch_1..5" in message and "download: true" in message


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path / "nowhere")), CTX)


def test_truncated_pickle_is_a_data_error(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), verify=False), CTX)
    with pytest.raises(DataError) as info:
        dataset.load("test")
    assert "test_batch" in str(info.value) and "truncated or damaged" in str(info.value)


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": _RunsShell(f"touch {marker}")}, 2)
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), verify=False), CTX)
    with pytest.raises(DataError) as info:
        dataset.load("test")
    assert "system" in str(info.value) and "test_batch" in str(info.value) and "Nothing was executed" in str(info.value)
    assert not marker.exists()


def test_wrong_content_is_a_data_error(tmp_path):
    write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, 2)
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), verify=False), CTX)
    with pytest.raises(DataError, match=r"test_batch: b'data' is .*\(N, 3072\)"):
        dataset.load("test")


def test_failed_download_says_how_to_place_files_by_hand(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as info:
        ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), download=True), CTX)
    message = str(info.value)
    assert "failed" in message and "no network" in message and "cifar-10-python.tar.gz" in message and "tar xzf" in message


@pytest.fixture
def no_network(monkeypatch):
    """Every connection (and name lookup) fails, as on a machine without network access."""

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("network blocked by the test")

    def no_lookup(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)


def test_failed_download_names_the_missing_files_first(tmp_path, no_network):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), download=True, verify=False), CTX)
    message = str(info.value)
    assert message.startswith(f"{folder / 'data_batch_3'}: missing")
    assert "data_batch_1..5" in message  # the archive's layout, as with download: false
    failed = message.index(" failed (")  # (the test's tmp_path holds the word too)
    assert message.index("data_batch_3") < failed and "network blocked by the test" in message[failed:]
    assert "cifar-10-python.tar.gz" in message and "tar xzf" in message and "download: false" in message
    (folder / "test_batch").unlink()
    with pytest.raises(DataError) as info:
        ds.build_cifar10(ds.Cifar10Params(root=str(tmp_path), download=True, verify=False), CTX)
    assert str(info.value).startswith(f"{folder}: missing data_batch_3, test_batch (")


def test_archive_left_in_root_is_extracted(tmp_path):
    source = tmp_path / "source"
    write_cifar10(source)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dataset = ds.build_cifar10(ds.Cifar10Params(root=str(root), verify=False), CTX)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert len(dataset.load("train")) == 100


def test_safe_unpickle_reads_numpy_arrays_of_both_protocols(tmp_path):
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}"
        _pickle(path, {b"a": np.arange(6, dtype=np.int16).reshape(2, 3), b"b": [b"x", 1.5]}, protocol)
        value = ds.safe_unpickle(path, "hint")
        assert value[b"a"].tolist() == [[0, 1, 2], [3, 4, 5]] and value[b"b"] == [b"x", 1.5]


# --- STL-10 -----------------------------------------------------------------------------------


def test_stl10_reads_binary_files(tmp_path):
    written = write_stl10(tmp_path, {"train": 4, "test": 3, "unlabeled": 5})
    dataset = ds.build_stl10(ds.Stl10Params(root=str(tmp_path), verify=False), CTX)
    assert dataset.image_size == 96 and set(dataset.splits) == {"train", "test", "unlabeled", "train+unlabeled"}
    train = dataset.load("train")
    assert train.images.shape == (4, 3, 96, 96) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), written["train_X"])  # H and W not swapped
    assert train.labels.tolist() == (written["train_y"].astype(int) - 1).tolist()
    assert train.classes[0] == "airplane"
    unlabeled = dataset.load("unlabeled")
    assert unlabeled.labels is None and len(unlabeled) == 5
    both = dataset.load("train+unlabeled")
    assert len(both) == 9 and both.labels is None
    assert dataset.estimate_bytes("unlabeled") == 5 * 3 * 96 * 96
    stream = dataset.open_stream("test")
    image, label = stream[2]
    assert torch.equal(image, dataset.load("test").images[2]) and label == int(written["test_y"][2]) - 1
    assert stream.labelled and not dataset.open_stream("unlabeled").labelled
    assert dataset.open_stream("train+unlabeled")[7][1] == -1


def test_stl10_truncated_file_and_checksum(tmp_path):
    write_stl10(tmp_path, {"train": 2, "test": 2, "unlabeled": 2})
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-10])
    dataset = ds.build_stl10(ds.Stl10Params(root=str(tmp_path), verify=False), CTX)
    with pytest.raises(DataError, match=r"test_X.bin: .* not a whole number of 3 x 96 x 96 images"):
        dataset.load("test")
    checked = ds.build_stl10(ds.Stl10Params(root=str(tmp_path)), CTX)
    with pytest.raises(DataError, match="train_X.bin: checksum mismatch"):
        checked.load("train")


def test_stl10_missing_file(tmp_path):
    write_stl10(tmp_path, {"train": 2, "test": 2})
    with pytest.raises(DataError) as info:
        ds.build_stl10(ds.Stl10Params(root=str(tmp_path), verify=False), CTX)
    assert "unlabeled_X.bin: missing" in str(info.value) and "stl10_binary.tar.gz" in str(info.value)


# --- image folders ----------------------------------------------------------------------------


def test_image_folder_round_trip(tmp_path):
    write_image_folder(tmp_path)
    dataset = ds.build_image_folder(ds.ImageFolderParams(root=str(tmp_path), image_size=16), CTX)
    assert dataset.splits == ("train", "test") and dataset.num_classes == 2 and dataset.image_size == 16
    train = dataset.load("train")
    assert train.images.shape == (6, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and train.classes == ("cat", "dog")
    red = train.images[:, 0].float().mean(dim=(1, 2))
    assert torch.allclose(red, torch.tensor([0.0, 1, 2, 200, 201, 202]), atol=1)
    green = train.images[0, 1, 8].float()
    assert bool((green[1:] >= green[:-1]).all()) and green[-1] - green[0] > 100  # the gradient survives, left to right
    test = dataset.load("test")
    assert test.labels.tolist() == [0, 1]
    stream = dataset.open_stream("train")
    assert len(stream) == 6 and torch.equal(stream[4][0], train.images[4]) and stream[4][1] == 1
    assert dataset.estimate_bytes("train") == 6 * 3 * 16 * 16


def test_image_folder_image_size_defaults_to_the_run(tmp_path):
    write_image_folder(tmp_path)
    dataset = ds.build_image_folder(ds.ImageFolderParams(root=str(tmp_path)), BuildContext(image_size=24))
    assert dataset.load("test").images.shape == (2, 3, 24, 24)


def test_image_folder_without_class_folders_is_unlabelled(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 10 * i, np.uint8)).save(tmp_path / "train" / f"{i}.png")
    dataset = ds.build_image_folder(ds.ImageFolderParams(root=str(tmp_path), image_size=8), CTX)
    assert dataset.num_classes is None and dataset.splits == ("train",)
    data = dataset.load("train")
    assert data.labels is None and len(data) == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        ds.build_image_folder(ds.ImageFolderParams(root=str(tmp_path / "none")), CTX)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="missing train folder"):
        ds.build_image_folder(ds.ImageFolderParams(root=str(tmp_path / "images")), CTX)
    write_image_folder(tmp_path / "ok")
    (tmp_path / "ok" / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    dataset = ds.build_image_folder(ds.ImageFolderParams(root=str(tmp_path / "ok"), image_size=8), CTX)
    with pytest.raises(DataError, match="broken.png: cannot be decoded"):
        dataset.load("train")
    (tmp_path / "ok" / "val" / "bird").mkdir()
    with pytest.raises(DataError, match="'bird' is not a class of the train folder"):
        dataset.load("test")


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_fast():
    params = ds.SyntheticParams(num_train=600, num_test=100, image_size=32)
    start = time.perf_counter()
    first = ds.build_synthetic(params, CTX).load("train")
    elapsed = time.perf_counter() - start
    again = ds.build_synthetic(params, CTX).load("train")
    other = ds.build_synthetic(ds.SyntheticParams(num_train=600, seed=1), CTX).load("train")
    assert first.images.shape == (600, 3, 32, 32) and first.images.dtype == torch.uint8
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert torch.bincount(first.labels).tolist() == [60] * 10
    assert first.classes == ds.SHAPES
    assert elapsed < 5.0  # vectorised: about 0.03 s here on one core
    test = ds.build_synthetic(params, CTX).load("test")
    assert len(test) == 100 and not torch.equal(test.images[:10], first.images[:10])


def test_synthetic_colour_does_not_give_the_class_away():
    data = ds.build_synthetic(ds.SyntheticParams(num_train=2000, num_classes=4), CTX).load("train")
    mean_colour = data.images.float().mean(dim=(2, 3))  # (N, 3)
    per_class = torch.stack([mean_colour[data.labels == k].mean(0) for k in range(4)])
    spread = mean_colour.std(0)
    # Class-mean colours are close to each other compared to the spread of single images.
    assert float((per_class - per_class.mean(0)).abs().max()) < 0.25 * float(spread.min())


def test_synthetic_shapes_differ_by_class():
    labels = torch.arange(10)
    images = ds.render_shapes(labels, 32, noise=0.0, seed=3)
    assert images.shape == (10, 3, 32, 32)
    masks = (images.float() - images.float().mean(dim=(2, 3), keepdim=True)).abs().sum(1) > 0  # not flat
    assert bool(masks.flatten(1).any(1).all())


def test_params_are_validated():
    with pytest.raises(ValueError, match="num_classes"):
        ds.SyntheticParams(num_classes=11)
    with pytest.raises(ValueError, match="labels"):
        ds.Cifar100Params(labels="medium")


def test_registers_every_dataset_with_params_and_summary():
    registered = {}

    def register(name, factory, *, params=None, summary=""):
        registered[name] = (factory, params, summary)

    ds.hjepa_register_datasets(register)
    assert set(registered) == {"cifar10", "cifar100", "stl10", "image_folder", "synthetic"}
    assert all(params is not None and summary for _, params, summary in registered.values())
    synthetic = registered["synthetic"][0](ds.SyntheticParams(num_train=20, num_test=10), CTX)
    assert isinstance(synthetic.load("test"), ImageData)
