"""``image_folder`` restricted to a class subset: ``classes`` / ``classes_file``, and the shipped ImageNet-100 list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hjepa_kit.plugins.datasets as ds
from hjepa_kit.build import build_component
from hjepa_kit.contracts import BuildContext
from hjepa_kit.errors import ConfigError, DataError
from hjepa_kit.plugins.datasets.image_folder import CLASS_LISTS, read_class_list
from hjepa_kit.registry import Registry

CTX = BuildContext(image_size=8)
SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361")


def _folder(root: Path, classes=SYNSETS, val=SYNSETS[:3]) -> Path:
    """root/train/<synset>/{0,1}.png and root/val/<synset>/0.png; the red channel holds the class's index."""
    for split, names, count in (("train", classes, 2), ("val", val, 1)):
        for index, name in enumerate(classes):
            if name not in names:
                continue
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((10, 12, 3), 10 * index + i, np.uint8)).save(folder / f"{i}.png")
    return root


def _build(root: Path, **params):
    return ds.build_image_folder(ds.ImageFolderParams(root=str(root), image_size=8, **params), CTX)


def _red(data) -> list[int]:
    return [int(v) for v in data.images[:, 0].float().mean(dim=(1, 2)).round()]


def test_classes_reads_only_those_subfolders_in_the_given_order(tmp_path):
    root = _folder(tmp_path)
    dataset = _build(root, classes=[SYNSETS[2], SYNSETS[0]])
    assert dataset.classes == (SYNSETS[2], SYNSETS[0]) and dataset.num_classes == 2
    train = dataset.load("train")
    assert train.classes == (SYNSETS[2], SYNSETS[0])
    assert train.labels.tolist() == [0, 0, 1, 1] and _red(train) == [20, 21, 0, 1]
    test = dataset.load("test")  # the same subset and order; val's other folders are skipped
    assert test.labels.tolist() == [0, 1] and _red(test) == [20, 0]
    stream = dataset.open_stream("train")
    assert len(stream) == 4 and stream[2][1] == 1


def test_a_class_missing_from_the_test_split_is_no_error(tmp_path):
    dataset = _build(_folder(tmp_path), classes=[SYNSETS[3], SYNSETS[1]])  # val has no SYNSETS[3]
    assert dataset.load("test").labels.tolist() == [1]


def test_classes_file_with_comments_and_blank_lines(tmp_path):
    root = _folder(tmp_path / "images")
    listing = tmp_path / "subset.txt"
    listing.write_text(f"# my subset\n{SYNSETS[1]}   # second synset\n\n  {SYNSETS[3]}\n")
    dataset = _build(root, classes_file=str(listing))
    assert dataset.classes == (SYNSETS[1], SYNSETS[3])
    assert dataset.load("train").labels.tolist() == [0, 0, 1, 1]


def test_an_unknown_class_lists_the_nearest_existing_ones(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DataError) as info:
        _build(root, classes=[SYNSETS[0], "n01440765", "zebra"])
    message = str(info.value)
    assert "2 of the 3 classes" in message and "'n01440765' (nearest: n01440764" in message
    assert "'zebra' (no similar folder)" in message and str(root / "train") in message


def test_subset_errors(tmp_path):
    root = _folder(tmp_path)
    listing = tmp_path / "one.txt"
    listing.write_text(SYNSETS[0] + "\n")
    with pytest.raises(ConfigError, match="give classes or classes_file, not both"):
        _build(root, classes=[SYNSETS[0]], classes_file=str(listing))
    with pytest.raises(ConfigError, match="an empty list selects no class"):
        _build(root, classes=[])
    with pytest.raises(DataError, match="more than once: n01440764"):
        _build(root, classes=[SYNSETS[0], SYNSETS[0]])
    with pytest.raises(DataError, match="classes_file not found.*imagenet100"):
        _build(root, classes_file=str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="lists no class"):
        _build(root, classes_file=str(tmp_path / "empty.txt"))


def test_both_given_in_a_run_configuration_names_the_key(tmp_path):
    registry = Registry()
    config = {"data": {"dataset": {"name": "image_folder", "params": {
        "root": str(_folder(tmp_path)), "classes": [SYNSETS[0]], "classes_file": "imagenet100"}}}}
    from hjepa_kit.config import load_config

    resolved = registry.resolve(load_config(config), "run.yaml")
    with pytest.raises(ConfigError, match=r"run\.yaml: data\.dataset\.params: give classes or classes_file"):
        build_component(resolved, "data.dataset", CTX)


def test_the_shipped_imagenet100_list():
    names = read_class_list("imagenet100")
    assert len(names) == 100 and len(set(names)) == 100 and all(len(n) == 9 and n[0] == "n" and n[1:].isdigit() for n in names)
    assert names[:3] == ("n02869837", "n01749939", "n02488291") and names[-1] == "n02090622"  # CMC's order
    shipped = Path(ds.image_folder.__file__).with_name(CLASS_LISTS["imagenet100"])
    assert "HobbitLong/CMC" in shipped.read_text() and read_class_list(str(shipped)) == names


def test_imagenet100_selects_its_synsets_from_a_larger_folder(tmp_path):
    names = read_class_list("imagenet100")
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for name in (*names[:100], "n01440764"):  # every ImageNet-100 synset and one other class
            (root / split / name).mkdir(parents=True)
    for name in names:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / name / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "n01440764" / "a.png")
    dataset = _build(root, classes_file="imagenet100")
    assert dataset.classes == names and dataset.num_classes == 100
    files, labels = dataset.files("train")
    assert len(files) == 100 and labels.tolist() == list(range(100)) and files[0].parent.name == names[0]
