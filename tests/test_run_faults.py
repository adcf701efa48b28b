"""Faults of a shared machine: two runs in one folder, and a full disk.

- **Two runs in one folder.** Rank 0 holds an exclusive ``flock`` on ``<log folder>/.hjepa-run.lock``
  for the whole of ``Trainer.fit``; a second run there stops with exit 2, naming the folder and the
  holder's pid and host. The lock is the process's: one left by a killed process is taken over.
- **A full disk.** A checkpoint, report, export or embedding write that fails with ``ENOSPC`` (here:
  a writer that raises it halfway through the file) leaves the previous file and no temporary,
  and stops with exit 2 and one message: the folder, the bytes needed against the bytes free,
  and what to do. A run warns at its start when the checkpoints it will keep do not fit.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hjepa_kit
from conftest import tiny_config
from hjepa_kit import helpers
from hjepa_kit.cli import main
from hjepa_kit.errors import CheckpointError, DiskFull, OutputError
from hjepa_kit.training.checkpoint import checkpoint_space, load_checkpoint
from hjepa_kit.training.runlock import LOCK_NAME, RunFolderBusy, RunLock

WAIT_S = 180.0
REPO = Path(__file__).resolve().parents[1]


def config_file(root: Path, **sections) -> Path:
    """The tiny run (16 synthetic 16-px images a batch, 6 steps an epoch), no callbacks, one thread."""
    base = dict(callbacks=[], checkpoint={"every_epochs": 10}, evaluation={"online": None}, training={"epochs": 2, "threads": 1})
    base.update(sections)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, **base)))
    return path


def run_dirs(root: Path) -> tuple[Path, Path]:
    return root / "results" / "checkpoints" / "tiny", root / "results" / "logs" / "tiny"


def wait_for(condition, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)


# --- two runs in one folder -----------------------------------------------------------------------


def test_a_second_lock_on_the_folder_is_refused_in_one_process_too(tmp_path):
    first = RunLock(tmp_path).acquire()
    assert first.held and (tmp_path / LOCK_NAME).read_text().startswith(f"pid={os.getpid()} host={socket.gethostname()}")
    with pytest.raises(RunFolderBusy) as caught:
        RunLock(tmp_path).acquire()  # another open file description: flock conflicts within a process
    message = str(caught.value)
    assert str(tmp_path) in message and f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "--name or --output-dir" in message and "--resume auto" in message
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()  # a run that ended removes its lock file
    with RunLock(tmp_path) as second:
        assert second.held and second.taken_over is None


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from hjepa_kit.training.runlock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        killed(holder)
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL: the file stays, the lock went with the process
    lock = RunLock(tmp_path).acquire()
    assert lock.held and lock.taken_over is not None and f"pid {holder.pid}" in lock.taken_over
    lock.release()


def test_a_second_hjepa_train_in_the_folder_exits_2_and_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    config = config_file(tmp_path, training={"epochs": 100, "threads": 1})
    checkpoint_dir, log_dir = run_dirs(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HJEPA_STRICT_PLUGINS"}
    first = subprocess.Popen([sys.executable, "-m", "hjepa_kit.cli", "train", "--config", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path), env=env)
    try:
        wait_for(lambda: (checkpoint_dir / "latest.pth").exists(), "the first run's latest.pth", first)
        for args in ([], ["--resume", "auto"]):
            before = (log_dir / "training.log").read_text()
            assert main(["train", "--config", str(config), *args]) == 2
            err = capsys.readouterr().err
            assert err.count("hjepa train: error: ") == 1 and "Traceback" not in err, err
            assert f"{log_dir}: another run is using this run folder: pid {first.pid} on host {socket.gethostname()}" in err
            assert "--resume auto" in err
            assert "resumed from" not in (log_dir / "training.log").read_text()[len(before):]  # the refused run wrote nothing
    finally:
        killed(first)
    assert main(["train", "--config", str(config), "--resume", "auto", "--set", "training.max_steps=1"]) == 0
    log = (log_dir / "training.log").read_text()
    assert f"took over the lock left by pid {first.pid} on host {socket.gethostname()}" in log
    assert "resumed from" in log and not (log_dir / LOCK_NAME).exists()


# --- a full disk --------------------------------------------------------------------------------------


class HalfDisk:
    """A file handle on a disk with room for ``room`` bytes: past them a write raises ENOSPC."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data) -> int:
        data = bytes(data)
        if self.written + len(data) > self.room:
            self.handle.write(data[: self.room - self.written])
            self.written = self.room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_write_atomic_on_a_full_disk_keeps_the_previous_file_and_says_what_is_needed(tmp_path):
    path = helpers.write_atomic(tmp_path / "results.json", "previous\n")
    with pytest.raises(DiskFull) as caught:
        helpers.write_atomic(path, lambda handle: HalfDisk(handle, 1000).write(b"x" * 5000), needed=5000)
    assert path.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    error = caught.value
    assert isinstance(error, OutputError) and isinstance(error, CheckpointError)  # caught as either
    free = shutil.disk_usage(tmp_path).free
    assert error.needed == 5000 and error.folder == tmp_path and abs(error.free - free) < 50e6
    assert str(error).startswith(f"{path}: writing failed: No space left on device: results.json needs about 5.0 kB, "
                                 f"and {tmp_path} has ")
    assert "run the command again" in str(error)


def test_a_folder_written_whole_on_a_full_disk_leaves_nothing(tmp_path):
    def fill(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"x" * 3000)
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(DiskFull, match=r"export: writing failed: Disk quota exceeded: export needs more than the 3.0 kB"):
        with helpers.atomic_folder(tmp_path / "export") as tmp:
            fill(tmp)
    assert list(tmp_path.iterdir()) == []


def test_the_checkpoint_space_warning_counts_the_checkpoints_the_schedule_keeps(tmp_path, monkeypatch):
    model = torch.nn.Linear(250, 100)  # 25,100 parameters: 100.4 kB, plus 200.8 kB of AdamW moments
    optimizer = torch.optim.AdamW(model.parameters())
    assert checkpoint_space(tmp_path, model, optimizer, epochs=10, every_epochs=5) is None
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**7, 10**7 - 10**6, 10**6))
    message = checkpoint_space(tmp_path, model, optimizer, epochs=10, every_epochs=5)
    assert message.startswith(f"{tmp_path}: 1.0 MB free, but the run keeps 5 checkpoints of about 301.2 kB "
                              "(latest.pth, best_model.pth, final.pth and 2 numbered every 5 epochs)")
    assert "about 1.8 MB in all" in message and "checkpoint.every_epochs" in message
    # resumed at epoch 5: one numbered file is still to come, and latest.pth and best_model.pth are rewritten
    for name in ("latest.pth", "best_model.pth"):
        (tmp_path / name).write_bytes(b"x" * 301_200)
    assert checkpoint_space(tmp_path, model, optimizer, epochs=10, start_epoch=5, every_epochs=5) is None


def test_a_full_disk_stops_the_run_with_one_message_and_resume_auto_continues(tmp_path, monkeypatch, capsys):
    config = config_file(tmp_path)
    checkpoint_dir, log_dir = run_dirs(tmp_path)
    real_save = torch.save
    latest_writes = []

    def save_on_a_filling_disk(obj, handle, *args, **kwargs):
        if Path(getattr(handle, "name", "")).name.startswith(".latest.pth."):
            latest_writes.append(obj["epoch"])
            if len(latest_writes) == 2:  # epoch 2's latest.pth: the disk fills 1 MB into the file
                return real_save(obj, HalfDisk(handle, 1_000_000), *args, **kwargs)
        return real_save(obj, handle, *args, **kwargs)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", save_on_a_filling_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1_000_000, 1_000_000))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("hjepa train: error: ") == 1 and "Traceback" not in err, err
    line = err.split("hjepa train: error: ")[1]
    assert line.startswith(f"{checkpoint_dir / 'latest.pth'}: writing failed: No space left on device: latest.pth needs about ")
    assert f"and {checkpoint_dir} has 1.0 MB free" in line and "--resume auto" in line
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == ["best_model.pth", "latest.pth"]  # no temporary
    assert load_checkpoint(checkpoint_dir / "latest.pth")["epoch"] == 1  # the previous file, intact
    log = (log_dir / "training.log").read_text()
    assert "1.0 MB free, but the run keeps 3 checkpoints" in log  # warned at the start

    monkeypatch.undo()
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    assert load_checkpoint(checkpoint_dir / "final.pth")["epoch"] == 2


def test_a_full_disk_while_embedding_leaves_no_file(checkpoint, tmp_path, monkeypatch, capsys):
    import hjepa_kit.evaluation.embedding as embedding

    out = tmp_path / "features.npy"
    out.write_bytes(b"earlier features")

    def save_on_a_full_disk(handle, array):
        HalfDisk(handle, 100).write(np.ascontiguousarray(array).tobytes())

    monkeypatch.setattr(embedding.np, "save", save_on_a_full_disk)
    assert main(["embed", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err
    assert f"{out}: writing failed: No space left on device: features.npy needs more than the 100 bytes" in err
    assert f"and {tmp_path} has " in err and "run the command again" in err
    assert out.read_bytes() == b"earlier features" and sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]
