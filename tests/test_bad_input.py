"""User mistakes, counted: each is exit status 2, one message naming the file, key or plugin, no traceback, nothing overwritten.

Every case runs the real command in this process (:func:`hjepa_kit.cli.main` with its arguments)
in a folder that already holds a finished run (``results/``, its checkpoint a hard link to the
session's tiny checkpoint) and earlier outputs of evaluate, export and embed. After the command
every file that was there is as it was (``training.log`` may only have grown). The table of
these messages is in docs/troubleshooting.md ("Other messages").

Mistakes already tested elsewhere through the command line (not repeated here): damaged datasets,
an unknown ``--set`` key, a memory budget, crafted and truncated checkpoints
(test_reliability.py), a second run in a busy folder and a full disk (test_run_faults.py), an
existing ``--out`` or export folder (test_embed.py, test_export.py), an unknown ``--eval-type``
(test_evaluate.py), a broken plugin (test_cli.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from hjepa_kit.cli import main


class Workspace:
    """A folder with a finished run ``tiny`` under ``results/``, its configuration, and earlier command outputs."""

    def __init__(self, root: Path, checkpoint: Path) -> None:
        self.root = root
        self.checkpoint_dir = root / "results" / "checkpoints" / "tiny"
        self.log_dir = root / "results" / "logs" / "tiny"
        self.checkpoint_dir.mkdir(parents=True)
        self.latest = self.checkpoint_dir / "latest.pth"
        try:
            os.link(checkpoint, self.latest)  # the session's tiny checkpoint, without copying 88 MB
        except OSError:
            shutil.copyfile(checkpoint, self.latest)
        shutil.copytree(checkpoint.parents[2] / "logs" / "tiny", self.log_dir)
        self.config = root / "run.yaml"
        self.config.write_text(yaml.safe_dump(tiny_config(root, training={"epochs": 1}, callbacks=[], evaluation={"online": None})))
        (root / "eval").mkdir()
        (root / "eval" / "results.json").write_text('{"earlier": true}\n')
        (root / "features.npy").write_bytes(b"earlier features")
        self.blocker = root / "a-file"
        self.blocker.write_text("a file where a folder would be\n")
        self.images = root / "images"

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path


def snapshot(root: Path) -> dict[Path, tuple]:
    """Every file under ``root``: (inode, size, mtime) and, for small files, the bytes."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            found[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, path.read_bytes() if stat.st_size < 1_000_000 else None)
    return found


def assert_nothing_overwritten(before: dict[Path, tuple], log: Path) -> None:
    for path, (inode, size, mtime, data) in before.items():
        assert path.is_file(), f"{path} was removed"
        if path == log:  # a refused run may append its lines, never rewrite
            assert path.read_bytes().startswith(data), f"{path} was rewritten"
            continue
        stat = path.stat()
        assert (stat.st_ino, stat.st_size, stat.st_mtime_ns) == (inode, size, mtime), f"{path} was overwritten"


def make_unwritable(folder: Path) -> callable:
    """Make ``folder`` refuse new files (chmod; as root, which chmod does not stop, ``chattr +i``); returns the undo."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root, where chmod does not deny writes, and chattr +i is not available or not permitted")
    return lambda: subprocess.run([chattr, "-i", str(folder)], check=True)


# Each case: the command's arguments in the workspace, and the texts its one message must hold.

def _folder_as_checkpoint_train(w: Workspace):
    return (["train", "--config", str(w.config), "--resume", str(w.checkpoint_dir)],
            [f"{w.checkpoint_dir}: is a folder, not a checkpoint", "it holds latest.pth"])


def _checkpoint_of_another_model(w: Workspace):
    return (["train", "--config", str(w.config), "--resume", str(w.latest), "--set", "model.predictor.params.depth=2"],
            [f"{w.latest}: the checkpoint does not match this configuration's model"])


def _yaml_with_tabs(w: Workspace):
    path = w.write("tabs.yaml", "name: tiny\ntraining:\n\tepochs: 3\n")
    return ["train", "--config", str(path)], [f"{path}: YAML syntax error at line 3, column 1", "a tab: YAML indents with spaces"]


def _negative_epochs(w: Workspace):
    config = yaml.safe_load(w.config.read_text())
    config["training"]["epochs"] = -3
    path = w.write("negative.yaml", yaml.safe_dump(config))
    return ["train", "--config", str(path)], [f"{path}: training.epochs: must be >= 1, got -3"]


def _unwritable_output_train(w: Workspace):
    return (["train", "--config", str(w.config), "--output-dir", str(w.blocker / "results")],
            [str(w.blocker / "results"), "cannot be written", "--output-dir"])


def _image_folder_without_images_train(w: Workspace):
    (w.images / "train" / "cats").mkdir(parents=True)
    (w.images / "train" / "cats" / "notes.txt").write_text("no image here")
    config = yaml.safe_load(w.config.read_text())
    config["data"]["dataset"] = {"name": "image_folder", "params": {"root": str(w.images)}}
    path = w.write("folder.yaml", yaml.safe_dump(config))
    return ["train", "--config", str(path)], [f"{w.images / 'train' / 'cats'}: no images (endings .jpg"]


def _missing_config(w: Workspace):
    return ["train", "--config", str(w.root / "nowhere.yaml")], [f"{w.root / 'nowhere.yaml'}: file not found"]


def _folder_as_config(w: Workspace):
    return ["train", "--config", str(w.log_dir)], [f"{w.log_dir}: is a folder, not a YAML file"]


def _unknown_encoder(w: Workspace):
    return (["train", "--config", str(w.config), "--set", "model.encoder.name=vit_huge"],
            [f"{w.config}: model.encoder.name: unknown encoder 'vit_huge' (did you mean", "vit_tiny [vit]"])


def _yaml_as_checkpoint_evaluate(w: Workspace):
    return (["evaluate", "--checkpoint", str(w.config), "--output-dir", str(w.root / "eval")],
            [f"{w.config}: not a checkpoint: torch.save did not write this file"])


def _unwritable_output_evaluate(w: Workspace):
    out = w.blocker / "eval"
    return (["evaluate", "--checkpoint", str(w.latest), "--output-dir", str(out)],
            [f"--output-dir {out}: cannot be created: {w.blocker} is a file, not a folder"])


def _unknown_dataset_evaluate(w: Workspace):
    return (["evaluate", "--checkpoint", str(w.latest), "--dataset", "imagenet9", "--output-dir", str(w.root / "eval")],
            [f"{w.latest} (configuration): data.dataset.name: unknown dataset 'imagenet9'; available: "])


def _folder_as_checkpoint_export(w: Workspace):
    return (["export", "--checkpoint", str(w.checkpoint_dir), "--out", str(w.root / "export")],
            [f"{w.checkpoint_dir}: is a folder, not a checkpoint"])


def _unknown_export_format(w: Workspace):
    return (["export", "--checkpoint", str(w.latest), "--out", str(w.root / "export"), "--format", "tflite"],
            ["--format 'tflite': unknown export format; allowed: timm, onnx"])


def _missing_images_path(w: Workspace):
    return (["embed", "--checkpoint", str(w.latest), "--images", str(w.images), "--out", str(w.root / "f.npy")],
            [f"--images {w.images}: not a folder (nothing is there)"])


def _image_folder_without_images_embed(w: Workspace):
    (w.images / "cats").mkdir(parents=True)
    (w.images / "cats" / "notes.txt").write_text("no image here")
    return (["embed", "--checkpoint", str(w.latest), "--images", str(w.images), "--out", str(w.root / "f.npy")],
            [f"--images {w.images}: no images (file endings .jpg"])


def _embed_out_with_another_ending(w: Workspace):
    return (["embed", "--checkpoint", str(w.latest), "--dataset", "synthetic", "--out", str(w.root / "features.csv")],
            [f"--out {w.root / 'features.csv'}: name a .npy file"])


def _embed_over_an_existing_file(w: Workspace):
    return (["embed", "--checkpoint", str(w.latest), "--dataset", "synthetic", "--out", str(w.root / "features.npy")],
            [f"--out {w.root / 'features.npy'}: already exists", "--force"])


def _non_utf8_config(w: Workspace):
    path = w.write("latin1.yaml", "name: caf\xe9\n".encode("latin-1"))
    return ["config", "show", "--config", str(path)], [f"{path}: not UTF-8 text: byte 0xe9 at line 1, column 10"]


def _set_without_a_value(w: Workspace):
    return (["config", "validate", "--config", str(w.config), "--set", "training.epochs"],
            ["--set 'training.epochs': expected KEY=VALUE"])


def _a_key_given_twice(w: Workspace):
    path = w.write("twice.yaml", "name: tiny\ntraining:\n  epochs: 3\n  epochs: 4\n")
    return ["config", "validate", "--config", str(path)], [f"{path}: YAML syntax error at line 4", "key 'epochs' appears twice"]


def _config_without_an_action(w: Workspace):
    return ["config"], ["choose an action: hjepa config show or hjepa config validate"]


def _online_fine_tune(w: Workspace):
    return (["train", "--config", str(w.config), "--set", "evaluation.online={name: fine_tune}"],
            ["evaluation.online: 'fine_tune' trains the encoder", "hjepa evaluate --eval-type fine_tune"])


MISTAKES = {
    "train: an evaluator that trains the encoder as the online evaluation": _online_fine_tune,
    "train: a folder instead of a checkpoint": _folder_as_checkpoint_train,
    "train: a checkpoint of another model": _checkpoint_of_another_model,
    "train: a YAML with tabs": _yaml_with_tabs,
    "train: a negative epoch count": _negative_epochs,
    "train: an unwritable output folder": _unwritable_output_train,
    "train: an image folder with no images": _image_folder_without_images_train,
    "train: a configuration that does not exist": _missing_config,
    "train: a folder instead of a configuration": _folder_as_config,
    "train: an unknown component name": _unknown_encoder,
    "evaluate: a YAML file instead of a checkpoint": _yaml_as_checkpoint_evaluate,
    "evaluate: an unwritable output folder": _unwritable_output_evaluate,
    "evaluate: an unknown dataset": _unknown_dataset_evaluate,
    "export: a folder instead of a checkpoint": _folder_as_checkpoint_export,
    "export: an unknown format": _unknown_export_format,
    "embed: an --images path that does not exist": _missing_images_path,
    "embed: an image folder with no images": _image_folder_without_images_embed,
    "embed: an --out of another kind": _embed_out_with_another_ending,
    "embed: an existing --out without --force": _embed_over_an_existing_file,
    "config: a non-UTF-8 configuration": _non_utf8_config,
    "config: a --set without a value": _set_without_a_value,
    "config: a key given twice": _a_key_given_twice,
    "config: no action": _config_without_an_action,
}


def run_mistake(argv: list[str], expected: list[str], workspace: Workspace, capsys) -> str:
    before = snapshot(workspace.root)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    errors = [line for line in err.splitlines() if line.startswith(f"hjepa {argv[0]}: error: ")]
    assert len(errors) == 1 and err.count("error: ") == 1, err
    assert "Traceback" not in err + captured.out, err
    message = err.split(f"hjepa {argv[0]}: error: ", 1)[1]
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"
    assert_nothing_overwritten(before, workspace.log_dir / "training.log")
    return message


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_one_message_with_exit_2_and_nothing_is_overwritten(mistake, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workspace = Workspace(tmp_path, checkpoint)
    argv, expected = MISTAKES[mistake](workspace)
    run_mistake(argv, expected, workspace, capsys)


def test_resume_into_a_read_only_checkpoint_folder_is_one_message(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workspace = Workspace(tmp_path, checkpoint)
    undo = make_unwritable(workspace.checkpoint_dir)
    try:
        with pytest.raises(OSError):  # the folder really refuses a new file
            (workspace.checkpoint_dir / "probe").write_text("")
        run_mistake(["train", "--config", str(workspace.config), "--resume", "auto"],
                    [f"{workspace.checkpoint_dir}: the output folder cannot be written",
                     "--output-dir NEW --resume CHECKPOINT"], workspace, capsys)
    finally:
        undo()


def test_at_least_fifteen_mistakes_across_the_five_commands():
    commands = {name.split(":")[0] for name in MISTAKES}
    assert len(MISTAKES) + 1 >= 15 and commands == {"train", "evaluate", "export", "embed", "config"}
