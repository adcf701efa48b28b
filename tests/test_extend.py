"""Extending a finished run: ``hjepa train --resume auto --extend-epochs N`` (``hjepa_kit.train(extend_epochs=N)``).

One tiny run (2 epochs x 3 steps of 48 synthetic 16-pixel images, one thread) is trained once for
the module; each test works on a copy of its folders. The schedules are read back from the
``metrics.jsonl`` line written at every step, the extension from the checkpoints and the resolved
``config.yaml``; the kill during an extension reuses the subprocess machinery of the reliability tests.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
import yaml

import hjepa_kit
from conftest import tiny_config
from hjepa_kit.cli import main
from hjepa_kit.config import load_config
from hjepa_kit.errors import UserError
from hjepa_kit.training.checkpoint import load_checkpoint
from hjepa_kit.training.optim import Schedules
from test_reliability import TrainProcess, assert_same_weights, resumed_from, run_dirs

STEPS = 3  # optimizer steps per epoch
EPOCHS = 2


def write_run_config(root: Path) -> Path:
    """The run's YAML under ``root``: 2 epochs, a metrics line per step, few checkpoint writes.

    ``latest.pth`` only, but for ``best_model.pth`` chosen by the largest mean learning rate of an
    epoch: written once, in epoch 1 (each write is about 90 MB).
    """
    config = tiny_config(
        root, callbacks=[], logging={"interval_steps": 1, "feature_stats_every_steps": 2, "health_samples": 0},
        checkpoint={"every_epochs": 10, "best_metric": "lr", "save_final": False}, evaluation={"online": None},
        data={"dataset": {"name": "synthetic", "params": {"num_train": 48, "num_test": 16, "image_size": 16}},
              "batch_size": 16},
    )
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def copy_run(finished: Path, root: Path) -> Path:
    """A copy of the finished run under ``root``; returns its configuration file."""
    shutil.copytree(finished / "results", root / "results")
    return write_run_config(root)


def schedule(root: Path) -> dict[int, dict]:
    """Step -> the step's metrics line (the last written, for steps logged twice)."""
    lines = (run_dirs(root)[1] / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def run_error(args: list[str], capsys) -> str:
    """Run ``hjepa train ARGS`` in this process; assert exit 2, one message and no traceback; return stderr."""
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The root of a finished 2-epoch run."""
    root = tmp_path_factory.mktemp("finished")
    result = hjepa_kit.train(write_run_config(root), console=False)
    assert result.status == "completed" and result.steps == EPOCHS * STEPS
    return root


@pytest.fixture(scope="module")
def extended(finished, tmp_path_factory) -> Path:
    """The finished run extended by 2 epochs in the default mode (a new cosine tail), uninterrupted."""
    root = tmp_path_factory.mktemp("extended")
    result = hjepa_kit.train(copy_run(finished, root), resume="auto", extend_epochs=2, console=False)
    assert result.status == "completed" and (result.steps, result.epochs) == (4 * STEPS, 4)
    return root


def test_a_tail_extension_continues_every_schedule_and_is_recorded(extended):
    steps = schedule(extended)
    junction = 2 * STEPS
    lrs = [steps[s]["lr"] for s in range(junction, 4 * STEPS + 1)]
    momenta = [steps[s]["momentum"] for s in range(junction, 4 * STEPS + 1)]
    # The learning rate goes on down from where it was (no jump up), to training.min_lr at the end.
    assert 0.8 * lrs[0] < lrs[1] <= lrs[0], lrs
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(1e-6)
    # The EMA momentum never drops and reaches 1; weight decay goes on rising to its final value.
    assert all(a <= b for a, b in zip(momenta, momenta[1:])) and momenta[-1] == pytest.approx(1.0)
    wds = [steps[s]["wd"] for s in range(junction, 4 * STEPS + 1)]
    assert all(a <= b for a, b in zip(wds, wds[1:])) and wds[-1] == pytest.approx(0.4)

    checkpoint_dir, log_dir = run_dirs(extended)
    state = load_checkpoint(checkpoint_dir / "latest.pth")
    training = state["config"]["training"]
    assert training["epochs"] == 4 and (state["epoch"], state["step"]) == (4, 4 * STEPS)
    [ext] = training["extensions"]
    assert {k: ext[k] for k in ("from_epoch", "epochs", "mode", "warmup_epochs")} == \
        {"from_epoch": 2, "epochs": 2, "mode": "tail", "warmup_epochs": 0.0}
    assert ext["lr"] == [lrs[0], lrs[0], 1e-6] and ext["ema_momentum"] == [momenta[0], 1.0]
    # The resolved config.yaml says the same, and read back it gives the schedules the run followed.
    resolved = load_config(log_dir / "config.yaml")
    assert resolved.training.epochs == 4 and resolved.training.extensions[0].lr == tuple(ext["lr"])
    again = Schedules.from_training(resolved.training, STEPS)
    assert [again.lr_at(s - 1) for s in range(1, 4 * STEPS + 1)] == [steps[s]["lr"] for s in range(1, 4 * STEPS + 1)]
    log = (log_dir / "training.log").read_text()
    assert re.search(r"extension by 2 epochs \(epochs 3-4, steps 7-12\): lr \S+ -> 1e-06 \(a new cosine tail from the "
                     r"current learning rate\); weight decay \S+ -> 0\.4; EMA momentum \S+ -> 1; recorded as "
                     r"training\.extensions\[0\]", log), log[-2000:]


def test_a_restart_warms_up_to_the_peak_then_decays_and_a_repeated_command_continues_it(finished, tmp_path, capsys):
    config = copy_run(finished, tmp_path)
    restart = ["--config", str(config), "--resume", "auto", "--extend-epochs", "2", "--extend-mode", "restart",
               "--set", "checkpoint.save_final=true"]
    # Stopped after one step of the extension (max_steps, final.pth), then the same command again: it continues.
    assert main(["train", *restart, "--set", "training.max_steps=7"]) == 0
    assert main(["train", *restart, "--set", "training.max_steps=8"]) == 0
    capsys.readouterr()
    checkpoint_dir, log_dir = run_dirs(tmp_path)
    assert "extension by 2 epochs from epoch 2 is in progress (epoch 2 of 4 done): continuing it" in \
        (log_dir / "training.log").read_text()
    state = load_checkpoint(checkpoint_dir / "final.pth")
    assert state["step"] == 8
    [ext] = state["config"]["training"]["extensions"]
    assert ext["mode"] == "restart" and ext["warmup_epochs"] == 0.5 and ext["lr"][1:] == [1e-3, 1e-6]

    steps = schedule(tmp_path)
    last = steps[2 * STEPS]["lr"]
    assert ext["lr"][0] == last
    # One warmup step up from the run's last learning rate, the peak at the end of the warmup (2 steps) ...
    assert steps[7]["lr"] == pytest.approx((last + 1e-3) / 2) and steps[8]["lr"] == pytest.approx(1e-3)
    assert steps[7]["momentum"] >= steps[6]["momentum"]
    # ... then the recorded schedules decay it by a cosine to training.min_lr.
    plan = Schedules.from_training(load_config(log_dir / "config.yaml").training, STEPS)
    rest = [plan.lr_at(s) for s in range(8, 4 * STEPS)]
    assert all(a > b for a, b in zip(rest, rest[1:])) and rest[-1] == pytest.approx(1e-6)

    # Another extension while this one is in progress is refused, naming what to do.
    err = run_error(["--config", str(config), "--resume", "auto", "--extend-epochs", "3"], capsys)
    assert "--extend-epochs 3: the run in" in err and "has not finished (epoch 2 of 4, micro-batch 2)" in err
    assert "resume it without --extend-epochs to finish it, then extend it" in err


@pytest.mark.slow
def test_a_kill_during_an_extension_resumes_to_the_uninterrupted_weights(finished, extended, tmp_path):
    config = copy_run(finished, tmp_path)
    checkpoint_dir, _ = run_dirs(tmp_path)
    run = TrainProcess(tmp_path, config, "--resume", "auto", "--extend-epochs", "2")
    # Killed as soon as epoch 3's latest.pth is written: in the last epoch of the extension.
    run.wait_until(lambda: f"written (latest, step {3 * STEPS})" in run.new_log(), "epoch 3's checkpoint", poll=0.002)
    assert run.send(signal.SIGKILL) == -signal.SIGKILL
    assert sorted(p.name for p in checkpoint_dir.iterdir() if not p.name.startswith(".")) == ["best_model.pth", "latest.pth"]
    latest = load_checkpoint(checkpoint_dir / "latest.pth")
    assert (latest["epoch"], latest["step"]) == (3, 3 * STEPS) and latest["config"]["training"]["epochs"] == 4

    # --resume auto alone: the configuration file still says 2 epochs; the checkpoint's extension holds.
    result = hjepa_kit.train(config, resume="auto", console=False)
    assert result.status == "completed" and (result.steps, result.epochs) == (4 * STEPS, 4)
    text = run.new_log()
    assert resumed_from(text)[1:] == (3, 3 * STEPS)
    assert "the run was extended: its schedules go on over 4 epochs" in text
    reference = load_checkpoint(run_dirs(extended)[0] / "latest.pth")["model"]
    assert_same_weights(checkpoint_dir / "latest.pth", reference)


def test_more_epochs_for_a_finished_run_without_extend_epochs_is_refused(finished, tmp_path, capsys):
    config = copy_run(finished, tmp_path)
    checkpoint_dir, log_dir = run_dirs(tmp_path)
    before = (checkpoint_dir / "latest.pth").read_bytes()
    err = run_error(["--config", str(config), "--resume", "auto", "--set", "training.epochs=4"], capsys)
    # What the schedules would do, measured on this run, and the two ways to extend it.
    assert re.search(r"training\.epochs is 4, but the run in \S+ has finished its 2 epochs and its schedules have ended\. "
                     r"Resuming it so would stretch the original schedules over 4 epochs: at step 7, lr (\S+) -> (\S+), "
                     r"weight decay \S+ -> \S+, EMA momentum (\S+) -> (\S+)\. To train it 2 epochs more, leave "
                     r"training\.epochs at 2 and add --extend-epochs 2 \(a new cosine tail", err), err
    lr_from, lr_to, m_from, m_to = map(float, re.search(r"lr (\S+) -> (\S+), .* momentum (\S+) -> (\S+)\.", err).groups())
    assert lr_to > lr_from and m_to < m_from  # the jump and the drop an extension avoids
    assert "--extend-epochs 2 --extend-mode restart" in err
    assert (checkpoint_dir / "latest.pth").read_bytes() == before
    assert load_config(log_dir / "config.yaml").training.epochs == 2


def test_bad_extension_requests_are_clear_errors(tmp_path, capsys):
    config = write_run_config(tmp_path)  # a run folder without any checkpoint
    for value in ("0", "-2"):
        err = run_error(["--config", str(config), "--resume", "auto", "--extend-epochs", value], capsys)
        assert f"--extend-epochs {value} (extend_epochs): the epochs to add to a finished run must be at least 1" in err
    err = run_error(["--config", str(config), "--extend-epochs", "2"], capsys)
    assert "--extend-epochs 2 extends a finished run: add --resume auto" in err
    err = run_error(["--config", str(config), "--resume", "auto", "--extend-epochs", "2"], capsys)
    assert f"there is no checkpoint in {run_dirs(tmp_path)[0]} to extend" in err
    assert not run_dirs(tmp_path)[1].exists()  # refused before the run folder was made
    with pytest.raises(SystemExit) as exit_info:  # argparse: exit 2 naming the choices
        main(["train", "--config", str(config), "--resume", "auto", "--extend-epochs", "2", "--extend-mode", "sideways"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
    # The library says the same.
    with pytest.raises(UserError, match=r"--extend-mode 'restrat' \(extend_mode\): unknown mode \(did you mean 'restart'"):
        hjepa_kit.train(config, resume="auto", extend_epochs=2, extend_mode="restrat", console=False)
    with pytest.raises(UserError, match=r"expected a whole number of epochs to add, got 2\.5"):
        hjepa_kit.train(config, resume="auto", extend_epochs=2.5, console=False)
    with pytest.raises(UserError, match=r"--extend-mode restart \(extend_mode\) needs --extend-epochs N"):
        hjepa_kit.train(config, resume="auto", extend_mode="restart", console=False)


# --- the planning alone (no training) ---------------------------------------------------------------


def fake_trainer(epochs: int, *, epoch: int, batch: int = 0, extend=None, **training):
    """The :class:`ResumePoint` of a tiny run restored at ``epoch`` (+ ``batch`` micro-batches)."""
    from hjepa_kit.training.extension import ResumePoint, extend_request

    config = load_config({"training": {"epochs": epochs, "warmup_epochs": 0.5, **training}})
    return ResumePoint(training=config.training, request=extend_request(*(extend or (None,))), source="run.yaml",
                       steps_per_epoch=STEPS, epoch=epoch, step=epoch * STEPS + batch, batch_in_epoch=batch,
                       lr=2e-5, weight_decay=0.39)


def saved(epochs: int, extensions=()) -> dict:
    return {"config": {"training": {"epochs": epochs, "extensions": list(extensions)}}}


def test_the_plan_of_a_resume(caplog):
    from hjepa_kit.training.extension import plan_resume

    path = Path("ckpt/latest.pth")
    # A run in progress with another length: a warning with the figures, the schedules recomputed.
    training = plan_resume(fake_trainer(4, epoch=1), saved(2), path)
    assert training.epochs == 4 and "training.epochs changed from 2 (in ckpt/latest.pth) to 4" in caplog.text
    assert re.search(r"at step 4, lr \S+ -> \S+, weight decay \S+ -> \S+, EMA momentum \S+ -> \S+", caplog.text)
    # An extension: from the optimizer's last learning rate and weight decay, the momentum of the last step.
    extended = plan_resume(fake_trainer(2, epoch=2, extend=(3, "restart")), saved(2), path)
    [ext] = extended.extensions
    assert extended.epochs == 5 and (ext.from_epoch, ext.epochs, ext.mode, ext.warmup_epochs) == (2, 3, "restart", 0.5)
    assert ext.lr == (2e-5, 1e-3, 1e-6) and ext.weight_decay == (0.39, 0.4)
    assert ext.ema_momentum == (pytest.approx(0.996 + 0.004 * 5 / 6), 1.0)
    records = [{"from_epoch": 2, "epochs": 3, "mode": "restart", "warmup_epochs": 0.5, "lr": list(ext.lr),
                "weight_decay": list(ext.weight_decay), "ema_momentum": list(ext.ema_momentum)}]
    # Its checkpoint resumed from the original file (2 epochs): the checkpoint's extension holds; the same request continues it.
    assert plan_resume(fake_trainer(2, epoch=3), saved(5, records), path) == extended
    assert plan_resume(fake_trainer(2, epoch=3, extend=(3, "restart")), saved(5, records), path) == extended
    with pytest.raises(UserError, match=r"--extend-epochs 3: the run in ckpt/latest.pth has not finished \(epoch 3 of 5\)"):
        plan_resume(fake_trainer(2, epoch=3, extend=(3, "tail")), saved(5, records), path)
    # An extended run resumed with yet another length: refused, naming --extend-epochs.
    with pytest.raises(UserError, match=r"training.epochs is 7, but the run in ckpt/latest.pth was extended to 5 epochs"):
        plan_resume(fake_trainer(7, epoch=3), saved(5, records), path)


def test_extension_records_must_follow_each_other_and_end_at_epochs():
    record = {"from_epoch": 2, "epochs": 2, "mode": "tail", "lr": [1e-4, 1e-4, 1e-6], "weight_decay": [0.4, 0.4],
              "ema_momentum": [0.999, 1.0]}
    assert load_config({"training": {"epochs": 4, "extensions": [record]}}).training.extensions[0].epochs == 2
    with pytest.raises(UserError, match=r"training: epochs is 6, but training.extensions plans 4 epochs"):
        load_config({"training": {"epochs": 6, "extensions": [record]}})
    with pytest.raises(UserError, match=r"extensions\[1\].from_epoch is 5, but extensions\[0\] ends at epoch 4"):
        load_config({"training": {"epochs": 7, "extensions": [record, {**record, "from_epoch": 5}]}})
    with pytest.raises(UserError, match=r"training.extensions\[0\].mode: expected one of 'tail', 'restart'"):
        load_config({"training": {"epochs": 4, "extensions": [{**record, "mode": "cosine"}]}})
