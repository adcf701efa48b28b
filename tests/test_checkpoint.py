"""Atomic checkpoint writing and safe loading."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from hjepa_kit.training.checkpoint import FORMAT, find_latest, load_checkpoint, save_checkpoint
from hjepa_kit.errors import CheckpointError


def test_round_trip(tmp_path):
    path = save_checkpoint({"model": {"w": torch.arange(4.0)}, "step": 3, "config": {"name": "x"}}, tmp_path / "a.pth")
    state = load_checkpoint(path)
    assert state["format"] == FORMAT
    assert torch.equal(state["model"]["w"], torch.arange(4.0))
    assert state["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]  # no temporary file left


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "latest.pth")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "a.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_checkpoint(path)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not an hjepa-kit checkpoint"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_crafted_checkpoint_does_not_execute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"format": FORMAT, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot write checkpoints"):
        save_checkpoint({"step": 1}, blocker / "sub" / "a.pth")


def test_find_latest(tmp_path):
    assert find_latest(tmp_path) is None
    a = save_checkpoint({"step": 1}, tmp_path / "a.pth")
    b = save_checkpoint({"step": 2}, tmp_path / "b.pth")
    os.utime(a, ns=(1, 1))
    assert find_latest(tmp_path) == b
