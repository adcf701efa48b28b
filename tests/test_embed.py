"""`hjepa embed`: features of a folder of images or a dataset, as evaluation computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hjepa_kit
from hjepa_kit.cli import main
from hjepa_kit.evaluation.features import extract_features
from hjepa_kit.evaluation.pretrained import load_pretrained

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def evaluated(checkpoint):
    """The run's test split and every representation's features of it, extracted as `hjepa evaluate` does."""
    pretrained = load_pretrained(checkpoint)
    data = pretrained.build_dataset().load("test")
    features = extract_features(pretrained.model, data, image_size=16, batch_size=64, mean=pretrained.mean,
                                std=pretrained.std, device=torch.device("cpu"))
    return data, features


def write_folder(root: Path, data, count: int = 20) -> list[Path]:
    """The first ``count`` test images as lossless PNGs in one subfolder per class name (sorted = split order)."""
    paths = []
    for i in range(count):
        name = data.classes[int(data.labels[i])]
        path = root / name / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def test_a_folder_gives_the_same_features_as_evaluation_with_paths_and_labels(checkpoint, evaluated, tmp_path, capsys):
    data, features = evaluated
    folder = tmp_path / "images"
    paths = write_folder(folder, data)
    out = tmp_path / "features.npz"
    assert main(["embed", "--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out),
                 "--device", "cpu", "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    assert "embedding: 20/20 images" in captured.err and f"20 images -> {out}" in captured.out
    saved = np.load(out)
    order = sorted(range(len(paths)), key=lambda i: (paths[i].parent.name, paths[i].name))  # folder by folder
    assert list(saved["paths"]) == [str(paths[i]) for i in order]
    classes = sorted({p.parent.name for p in paths})
    assert list(saved["classes"]) == classes
    assert list(saved["labels"]) == [classes.index(paths[i].parent.name) for i in order]
    assert str(saved["representation"]) == "encoder" and saved["skipped"].shape == (0,)
    assert saved["features"].dtype == np.float32 and saved["features"].shape == (20, 192)
    np.testing.assert_allclose(saved["features"], features["encoder"][order].numpy(), atol=1e-5)


def test_a_dataset_split_and_a_level_as_npy(checkpoint, evaluated, tmp_path):
    data, features = evaluated
    out = tmp_path / "level1.npy"
    result = hjepa_kit.embed(checkpoint, out, dataset="synthetic", splits=["test"], representation="level1", device="cpu")
    assert (result.count, result.feature_dim, result.representation) == (48, 192, "level1")
    saved = np.load(out)
    np.testing.assert_allclose(saved, features["level1"].numpy(), atol=1e-5)
    assert not np.allclose(saved, features["encoder"].numpy(), atol=1e-3)  # a level is not the encoder


def test_the_default_representation_is_the_one_the_run_evaluated(checkpoint, level0_checkpoint, evaluated, tmp_path, capsys):
    """A run graded on level0 (as the quickstart) embeds level0 unless told otherwise: users get what was graded."""
    _, features = evaluated
    out = tmp_path / "default.npz"
    assert main(["embed", "--checkpoint", str(level0_checkpoint), "--dataset", "synthetic", "--split", "test",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "representation level0: the run's evaluated representation (evaluation.representation)" in capsys.readouterr().out
    saved = np.load(out)
    assert str(saved["representation"]) == "level0"
    np.testing.assert_allclose(saved["features"], features["level0"].numpy(), atol=1e-5)

    result = hjepa_kit.embed(checkpoint, tmp_path / "encoder.npy", dataset="synthetic", splits=["test"], device="cpu")
    assert result.representation == result.evaluated_representation == "encoder"  # a run graded on the encoder
    result = hjepa_kit.embed(level0_checkpoint, tmp_path / "explicit.npy", dataset="synthetic", splits=["test"],
                             representation="encoder", device="cpu")
    assert (result.representation, result.evaluated_representation) == ("encoder", "level0")
    np.testing.assert_allclose(np.load(tmp_path / "explicit.npy"), features["encoder"].numpy(), atol=1e-5)


def test_every_split_of_a_dataset_goes_to_one_npz(checkpoint, evaluated, tmp_path):
    data, features = evaluated
    out = tmp_path / "all.npz"
    hjepa_kit.embed(checkpoint, out, dataset="synthetic", device="cpu")
    saved = np.load(out)
    assert list(saved["split"]) == ["train"] * 96 + ["test"] * 48
    assert list(saved["index"][-48:]) == list(range(48))
    np.testing.assert_array_equal(saved["labels"][-48:], data.labels.numpy())
    np.testing.assert_allclose(saved["features"][-48:], features["encoder"].numpy(), atol=1e-5)
    assert str(saved["dataset"]) == "synthetic" and len(saved["classes"]) == 10


def test_an_unreadable_image_is_named_or_skipped(checkpoint, evaluated, tmp_path, capsys):
    data, _ = evaluated
    folder = tmp_path / "images"
    write_folder(folder, data, count=6)
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    out = tmp_path / "features.npz"
    assert main(["embed", "--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: cannot be decoded as an image" in err and "--skip-bad" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images"]

    assert main(["embed", "--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"skipped unreadable image {bad}" in captured.err and "1 skipped" in captured.out
    saved = np.load(out)
    assert saved["features"].shape == (6, 192) and list(saved["skipped"]) == [str(bad)]
    assert str(bad) not in list(saved["paths"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/f.csv"], "--out {tmp}/f.csv: name a .npy file"),
        (["--representation", "level5"], "--representation 'level5': unknown representation; this model has encoder, level0, level1"),
        (["--split", "validation"], "--split 'validation': dataset 'synthetic' has the splits train, test"),
        (["--set", "evaluation.representation=level7"],
         "--representation defaults to the run's evaluated representation (evaluation.representation) 'level7', "
         "which this model does not have; pass --representation with one of encoder, level0, level1"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(checkpoint, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "f.npz")]
    assert main(["embed", "--checkpoint", str(checkpoint), "--dataset", "synthetic", *args]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_kept_unless_forced(checkpoint, tmp_path, capsys):
    out = tmp_path / "features.npy"
    out.write_bytes(b"precious")
    assert main(["embed", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--split", "test", "--out", str(out)]) == 2
    assert "already exists; choose another name or pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["embed", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--split", "test", "--out", str(out), "--force"]) == 0
    assert np.load(out).shape == (48, 192)
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]  # no temporary left
    unwritable = out / "below_a_file.npz"
    assert main(["embed", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--split", "test", "--out", str(unwritable)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot create the folder for below_a_file.npz" in err and "Traceback" not in err


def test_a_foreign_checkpoint_and_a_missing_folder_are_clear_errors(tmp_path, capsys):
    foreign = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(3)}, foreign)
    (tmp_path / "images").mkdir()
    assert main(["embed", "--checkpoint", str(foreign), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert "--images" in err and "no images" in err  # the folder is checked first: it is cheaper
    PIL.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    assert main(["embed", "--checkpoint", str(foreign), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "f.npy")]) == 2
    assert f"{foreign}: not an hjepa-kit checkpoint" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(foreign), "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f.npy")]) == 2
    assert f"--images {tmp_path / 'nowhere'}: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_features(checkpoint, evaluated, tmp_path):
    _, features = evaluated
    result = hjepa_kit.embed(checkpoint, tmp_path / "cuda.npy", dataset="synthetic", splits=["test"], device="cuda")
    assert result.device.startswith("cuda")
    np.testing.assert_allclose(np.load(tmp_path / "cuda.npy"), features["encoder"].numpy(), atol=2e-3)
