"""Reliability through the real command line: kills, signals, NaN, bad input, safe loading.

Training runs here are subprocesses of ``python -m hjepa_kit.cli train`` on a tiny configuration
(3 epochs x 6 steps of 16 synthetic 16-pixel images, one thread, so they are deterministic and
take a few seconds). One uninterrupted run is shared by the module (``baseline``, trained in this
process); every run that is killed, interrupted and resumed must end with exactly its weights.

Bad-input cases go through :func:`hjepa_kit.cli.main` in this process (the command's own code
path, without the interpreter start-up of a few seconds), except the crafted checkpoint, which is
also fed to a real subprocess. Each must exit with status 2, print one error line naming the file
or key and no traceback, and leave an existing run's files as they were.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import hjepa_kit
from conftest import merge_sections, tiny_config
from datafiles import write_cifar10
from hjepa_kit.training.checkpoint import FORMAT, find_latest, load_checkpoint, save_checkpoint
from hjepa_kit.cli import main
from hjepa_kit.errors import CheckpointError
from hjepa_kit.testing import PluginSandbox

EPOCHS = 3
STEPS_PER_EPOCH = 6
TOTAL = EPOCHS * STEPS_PER_EPOCH
POLL_S = 0.02  # log lines; a write in progress is watched every 2 ms
WAIT_S = 180.0


# --- helpers -------------------------------------------------------------------------------------


def run_config(root: Path, **sections) -> dict:
    """The tiny configuration of every run here: 3 epochs, 1 thread, a log line per step."""
    config = tiny_config(root, callbacks=[], logging={"interval_steps": 1, "feature_stats_every_steps": 2},
                         checkpoint={"every_epochs": 10},  # latest.pth and best_model.pth only: fewer 90 MB writes
                         training={"epochs": EPOCHS, "threads": 1})
    return merge_sections(config, **sections)


def write_config(root: Path, config: dict, name: str = "run.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_dirs(root: Path, name: str = "tiny") -> tuple[Path, Path]:
    """(checkpoint folder, log folder) of run ``name`` under ``root/results``."""
    return root / "results" / "checkpoints" / name, root / "results" / "logs" / name


def cli_env(site: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("HJEPA_STRICT_PLUGINS", None)
    env["PYTHONUNBUFFERED"] = "1"
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return env


class TrainProcess:
    """``hjepa train --config CONFIG ARGS`` running in the background; output goes to files."""

    _count = 0

    def __init__(self, root: Path, config: Path, *args: str, site: Path | None = None) -> None:
        TrainProcess._count += 1
        self.root = root
        self.checkpoint_dir, log_dir = run_dirs(root)
        self.log = log_dir / "training.log"
        self.offset = self.log.stat().st_size if self.log.exists() else 0  # resumed runs append
        self.stdout_path = root / f"stdout-{TrainProcess._count}.txt"
        self.stderr_path = root / f"stderr-{TrainProcess._count}.txt"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hjepa_kit.cli", "train", "--config", str(config), *args],
                stdout=out, stderr=err, env=cli_env(site), cwd=str(root),
            )

    def new_log(self) -> str:
        """What this process has written to training.log so far."""
        try:
            with open(self.log, encoding="utf-8") as handle:
                handle.seek(self.offset)
                return handle.read()
        except FileNotFoundError:
            return ""

    def last_step(self) -> int:
        steps = re.findall(rf"step (\d+)/{TOTAL} loss", self.new_log())
        return int(steps[-1]) if steps else 0

    def wait_until(self, condition, what: str, poll: float = POLL_S) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(poll)

    def send(self, signum: int) -> int:
        """Send ``signum``, wait for the exit and return the exit status."""
        self.proc.send_signal(signum)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the run did not end:\n{self.output()}")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def output(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


def assert_checkpoints_intact(folder: Path) -> dict[str, dict]:
    """Every ``*.pth`` loads; leftovers are only hidden ``.*.tmp`` files, never taken for checkpoints."""
    names = sorted(p.name for p in folder.iterdir())
    checkpoints = [folder / n for n in names if n.endswith(".pth") and not n.startswith(".")]
    assert checkpoints, f"no checkpoint in {folder}: {names}"
    states = {}
    for path in checkpoints:
        try:
            states[path.name] = load_checkpoint(path)
        except CheckpointError as exc:  # pragma: no cover - the failure is the point
            pytest.fail(f"a checkpoint left by a killed run does not load: {exc}")
    leftovers = [n for n in names if not n.endswith(".pth")]
    assert all(n.startswith(".") and n.endswith(".tmp") for n in leftovers), leftovers
    latest = find_latest(folder)
    assert latest is not None and latest.name in states, (latest, names)
    return states


def assert_same_weights(path: Path, expected: dict[str, torch.Tensor]) -> None:
    model = load_checkpoint(path)["model"]
    assert model.keys() == expected.keys()
    different = [key for key in model if not torch.equal(model[key], expected[key])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def resumed_from(log_text: str) -> tuple[str, int, int]:
    found = re.findall(r"resumed from (\S+) at epoch (\d+), step (\d+)", log_text)
    assert found, f"no 'resumed from' line in:\n{log_text}"
    path, epoch, step = found[-1]
    return path, int(epoch), int(step)


def make_cli_site(root: Path) -> Path:
    """A site folder where a test plugin is installed the way pip does it: a module + a dist-info."""
    site = root / "site"
    site.mkdir()
    (site / "reliability_plugin.py").write_text(PLUGIN_SOURCE)
    dist = site / "reliability_plugin-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reliability-plugin\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[hjepa_kit]\nreliability_plugin = reliability_plugin\n")
    (dist / "RECORD").write_text("")
    return site


PLUGIN_SOURCE = textwrap.dedent('''
    """Test components: losses that turn NaN (in the value or in the gradients), a broken factory."""

    import attrs
    import torch

    from hjepa_kit import hookimpl
    from hjepa_kit.contracts import LossOutput
    from hjepa_kit.params import param


    @attrs.frozen(kw_only=True)
    class Params:
        after: int = param(3, help="Calls before the loss (or its gradient) turns NaN.", ge=0)


    class _NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")


    class NanAfter:
        """Mean squared error per level; level1 becomes NaN after ``after`` calls."""

        poison_gradient = False

        def __init__(self, params, ctx):
            self.after = params.after
            self.calls = 0

        def __call__(self, predictions, targets, context=None):
            self.calls += 1
            levels = [((p.float() - t.float()) ** 2).mean() for p, t in zip(predictions, targets)]
            if self.calls > self.after:
                if self.poison_gradient:
                    levels[-1] = _NanGradient.apply(levels[-1])
                else:
                    levels[-1] = levels[-1] * float("nan")
            return LossOutput(total=sum(levels), terms={f"level{i}": v.detach() for i, v in enumerate(levels)})

        def collapse_remedies(self):
            return [{"after": 1000}]  # this loss's own advice, shown with the core's


    class NanGradientAfter(NanAfter):
        """A finite loss whose gradients become NaN after ``after`` calls."""

        poison_gradient = True


    def broken_factory(params, ctx):
        raise ValueError("needs three hierarchy levels")


    @hookimpl
    def hjepa_register_losses(register):
        register("nan_after", NanAfter, params=Params, summary="NaN loss after N calls (tests)")
        register("nan_gradient_after", NanGradientAfter, params=Params, summary="NaN gradients after N calls (tests)")
        register("broken_loss", broken_factory, params=Params, summary="A factory that raises (tests)")
''')


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run of :func:`run_config` (in this process: the same trainer as the
    command's, without a second interpreter start-up): its final weights, checkpoints and log."""
    root = tmp_path_factory.mktemp("baseline")
    result = hjepa_kit.train(write_config(root, run_config(root)), console=False)
    assert result.status == "completed"
    return {
        "model": load_checkpoint(result.checkpoints["final"])["model"],
        "checkpoint_dir": result.checkpoint_dir,
        "log_dir": result.log_dir,
    }


@pytest.fixture(scope="module")
def plugin_module(tmp_path_factory):
    """The test plugin, installed in a site folder (for subprocesses) and imported (in-process)."""
    site = make_cli_site(tmp_path_factory.mktemp("reliability-plugin"))
    spec = importlib.util.spec_from_file_location("reliability_plugin", site / "reliability_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return site, module


@pytest.fixture
def existing_run(tmp_path, baseline):
    """A finished run (a copy of the baseline's) where a failing command will write: run ``tiny``
    under ``tmp_path/results``. Call the returned function to assert nothing of it was lost."""
    checkpoint_dir, log_dir = run_dirs(tmp_path)
    checkpoint_dir.mkdir(parents=True)
    log_dir.mkdir(parents=True)
    shutil.copyfile(baseline["checkpoint_dir"] / "latest.pth", checkpoint_dir / "latest.pth")
    for name in ("training.log", "config.yaml", "metrics.jsonl"):
        shutil.copyfile(baseline["log_dir"] / name, log_dir / name)
    kept = {p: p.read_bytes() for p in (log_dir / "config.yaml", log_dir / "metrics.jsonl")}
    old_log = (log_dir / "training.log").read_text()
    stat = (checkpoint_dir / "latest.pth").stat()

    def assert_intact() -> None:
        assert sorted(p.name for p in checkpoint_dir.iterdir()) == ["latest.pth"]
        now = (checkpoint_dir / "latest.pth").stat()
        assert (now.st_ino, now.st_size, now.st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        assert load_checkpoint(checkpoint_dir / "latest.pth")["step"] == TOTAL
        for path, content in kept.items():
            assert path.read_bytes() == content, f"{path} was changed"
        assert (log_dir / "training.log").read_text().startswith(old_log)  # appended to, never truncated

    return assert_intact


# --- kills and signals -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_auto_ends_with_the_uninterrupted_weights(tmp_path, baseline):
    config = write_config(tmp_path, run_config(tmp_path))
    checkpoint_dir, _ = run_dirs(tmp_path)
    latest = checkpoint_dir / "latest.pth"

    def killed(run: TrainProcess) -> dict[str, dict]:
        assert run.send(signal.SIGKILL) == -signal.SIGKILL
        return assert_checkpoints_intact(checkpoint_dir)

    # 1. Right after the first checkpoint: while the next file of epoch 1 is being written.
    run = TrainProcess(tmp_path, config)
    run.wait_until(lambda: latest.exists() and len(os.listdir(checkpoint_dir)) > 1 or run.last_step() > STEPS_PER_EPOCH,
                   "the first checkpoint", poll=0.002)
    states = killed(run)
    assert states["latest.pth"]["step"] in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)

    # 2. Resumed, then killed while latest.pth is being replaced at the end of epoch 2: the
    #    previous latest.pth must survive whole.
    before = latest.stat()
    run = TrainProcess(tmp_path, config, "--resume", "auto")

    def replacing_latest() -> bool:
        if any(n.startswith(".latest.pth.") for n in os.listdir(checkpoint_dir)):
            return True
        now = latest.stat()
        return (now.st_ino, now.st_size, now.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns) \
            or run.last_step() > 2 * STEPS_PER_EPOCH

    run.wait_until(replacing_latest, "latest.pth being replaced", poll=0.002)
    path, epoch, step = resumed_from(run.new_log())
    assert not Path(path).name.startswith(".") and (epoch, step) == (1, STEPS_PER_EPOCH)
    states = killed(run)
    assert states["latest.pth"]["step"] in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)

    # 3. Resumed, then killed in the middle of epoch 3.
    run = TrainProcess(tmp_path, config, "--resume", "auto")
    run.wait_until(lambda: run.last_step() >= 2 * STEPS_PER_EPOCH + 2, "the middle of epoch 3")
    states = killed(run)
    assert states["latest.pth"]["step"] == 2 * STEPS_PER_EPOCH and "final.pth" not in states

    # 4. Resumed to the end: the weights of the run never killed.
    run = TrainProcess(tmp_path, config, "--resume", "auto")
    assert run.wait() == 0, run.output()
    text = run.new_log()
    assert resumed_from(text)[1:] == (2, 2 * STEPS_PER_EPOCH)
    assert "status: completed" in text
    assert f"run completed: {TOTAL} steps, {EPOCHS} epochs" in run.stdout
    assert_same_weights(checkpoint_dir / "final.pth", baseline["model"])
    assert_checkpoints_intact(checkpoint_dir)


@pytest.mark.slow
def test_sigterm_then_sigint_write_a_checkpoint_and_resume_to_the_uninterrupted_weights(tmp_path, baseline):
    config = write_config(tmp_path, run_config(tmp_path))
    checkpoint_dir, _ = run_dirs(tmp_path)
    interrupted = checkpoint_dir / "interrupted.pth"

    # SIGTERM in the middle of epoch 2: the step is finished, interrupted.pth written, exit 130.
    run = TrainProcess(tmp_path, config)
    run.wait_until(lambda: run.last_step() >= STEPS_PER_EPOCH + 1, "the middle of epoch 2")
    assert run.send(signal.SIGTERM) == 130, run.output()
    assert "SIGTERM received: finishing the current step, then writing a checkpoint" in run.stderr
    assert "run interrupted:" in run.stdout and f"checkpoint interrupted: {interrupted}" in run.stdout
    assert "Traceback" not in run.stderr
    text = run.new_log()
    assert "status: interrupted" in text and re.search(r"peak RSS \d+ MB", text)
    state = load_checkpoint(interrupted)
    first_stop = state["step"]
    # Inside epoch 2 (the loop checks for a signal after each step, so the batches done are saved).
    assert STEPS_PER_EPOCH < first_stop < TOTAL and 1 <= state["batch_in_epoch"] <= STEPS_PER_EPOCH, first_stop
    assert state["epoch"] * STEPS_PER_EPOCH + state["batch_in_epoch"] == first_stop
    assert f"written (interrupted, step {first_stop})" in text

    # Resumed from the mid-epoch checkpoint (the newest), then SIGINT in the middle of epoch 3.
    run = TrainProcess(tmp_path, config, "--resume", "auto")
    run.wait_until(lambda: run.last_step() >= 2 * STEPS_PER_EPOCH + 1, "the middle of epoch 3")
    assert resumed_from(run.new_log()) == (str(interrupted), state["epoch"], first_stop)
    assert run.send(signal.SIGINT) == 130, run.output()
    assert "SIGINT received" in run.stderr and "Traceback" not in run.stderr
    assert "status: interrupted" in run.new_log()
    second = load_checkpoint(interrupted)
    second_stop = second["step"]
    assert first_stop < second_stop <= TOTAL, (first_stop, second_stop)

    # Resumed again, to the end: the same weights as the run never interrupted.
    run = TrainProcess(tmp_path, config, "--resume", "auto")
    assert run.wait() == 0, run.output()
    assert resumed_from(run.new_log()) == (str(interrupted), second["epoch"], second_stop)
    assert "status: completed" in run.new_log()
    assert_same_weights(checkpoint_dir / "final.pth", baseline["model"])


def test_peak_rss_and_the_memory_estimate_are_in_the_log(baseline):
    text = (baseline["log_dir"] / "training.log").read_text()
    assert re.search(r"estimated peak memory: [\d.]+ GB \(.*\); budget 11 GB", text)  # the plan's default budget
    per_step = [int(v) for v in re.findall(rf"step \d+/{TOTAL} loss .* rss (\d+)MB", text)]
    assert len(per_step) == TOTAL and all(v > 50 for v in per_step)
    peak = re.search(r"run tiny: completed after 18 steps \(3 epochs\); peak RSS (\d+) MB", text)
    assert peak and int(peak.group(1)) >= max(per_step)
    assert "status: completed" in text.rstrip().splitlines()[-1]


# --- NaN -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_nan_loss_from_a_plugin_stops_the_cli_run_with_advice(tmp_path, plugin_module):
    site, _ = plugin_module
    config = run_config(tmp_path, loss={"name": "nan_after", "params": {"after": 9}})  # 2 calls: the memory estimate
    config["training"]["epochs"] = 2
    run = TrainProcess(tmp_path, write_config(tmp_path, config), site=site)
    assert run.wait() == 2, run.output()
    err = run.stderr
    assert "Traceback" not in err
    assert "hjepa train: error: training stopped at epoch 2, step 8: the loss is nan" in err
    assert "level1=nan" in err  # the term that went bad
    assert "training.lr" in err and "ema_momentum" in err  # the core's fallbacks
    assert "--set loss.params.after=1000 --resume" in err  # and the one the loss plugin declares
    checkpoint_dir, _ = run_dirs(tmp_path)
    assert f"the last good checkpoint is {checkpoint_dir / 'latest.pth'}" in err
    states = assert_checkpoints_intact(checkpoint_dir)
    assert states["latest.pth"]["step"] == STEPS_PER_EPOCH
    assert "final.pth" not in states and "interrupted.pth" not in states
    assert "status: failed" in run.new_log()


def test_nan_gradients_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, plugin_module, monkeypatch, capsys):
    _, module = plugin_module
    PluginSandbox(monkeypatch).add(module, "reliability_plugin")
    config = write_config(tmp_path, run_config(tmp_path, loss={"name": "nan_gradient_after", "params": {"after": 9}},
                                               training={"epochs": 2}, evaluation={"online": None}))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "training stopped at epoch 2, step 8: the gradient norm is nan" in err
    assert "--set loss.params.after=1000" in err and "Traceback" not in err  # the remedy the loss declares
    checkpoint_dir, _ = run_dirs(tmp_path)
    assert load_checkpoint(checkpoint_dir / "latest.pth")["step"] == STEPS_PER_EPOCH


def test_a_plugin_factory_error_names_plugin_and_component_through_the_cli(
    tmp_path, plugin_module, monkeypatch, capsys, existing_run
):
    _, module = plugin_module
    PluginSandbox(monkeypatch).add(module, "reliability_plugin")
    config = write_config(tmp_path, run_config(tmp_path, loss="broken_loss"))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss 'broken_loss' from plugin reliability_plugin" in err
    assert "ValueError: needs three hierarchy levels" in err and "Traceback" not in err
    existing_run()


# --- bad input -----------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def bad_checkpoint(kind: str, folder: Path, baseline: dict) -> tuple[Path, str]:
    """A checkpoint file that must be refused, and the message expected."""
    path = folder / f"{kind}.pth"
    if kind == "truncated":
        data = (baseline["checkpoint_dir"] / "latest.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "not a readable checkpoint (truncated or not a torch file)"
    if kind == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(3)}, "epoch": 3}, path)
        return path, "not an hjepa-kit checkpoint (expected format 'hjepa-kit/1', found None)"
    if kind == "crafted":
        torch.save({"format": FORMAT, "model": {}, "payload": _Exploit(folder / "pwned")}, path)
        return path, "refused to load"
    if kind == "plain_pickle":
        path.write_bytes(pickle.dumps(_Exploit(folder / "pwned")))
        return path, "refused to load"
    raise AssertionError(kind)


CHECKPOINT_KINDS = ("truncated", "foreign", "crafted", "plain_pickle")


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_train_resume_refuses_a_bad_checkpoint_and_keeps_the_run(kind, tmp_path, baseline, existing_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, expected = bad_checkpoint(kind, tmp_path, baseline)
    config = write_config(tmp_path, run_config(tmp_path))
    assert main(["train", "--config", str(config), "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"hjepa train: error: {path}: {expected}" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned-by-checkpoint").exists()
    existing_run()


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_evaluate_refuses_a_bad_checkpoint(kind, tmp_path, baseline, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, expected = bad_checkpoint(kind, tmp_path, baseline)
    assert main(["evaluate", "--checkpoint", str(path), "--output-dir", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert f"hjepa evaluate: error: {path}: {expected}" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "eval").exists()


def test_a_crafted_checkpoint_runs_no_code_in_a_real_cli_process(tmp_path, baseline):
    path, expected = bad_checkpoint("crafted", tmp_path, baseline)
    result = subprocess.run(
        [sys.executable, "-m", "hjepa_kit.cli", "evaluate", "--checkpoint", str(path)],
        capture_output=True, text=True, env=cli_env(), cwd=str(tmp_path), timeout=WAIT_S,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_evaluate_refuses_a_checkpoint_whose_configuration_does_not_load(tmp_path, baseline, capsys):
    state = load_checkpoint(baseline["checkpoint_dir"] / "latest.pth")
    state["config"]["training"]["epoch"] = 5  # a key this version does not know
    path = save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "other.pth")
    assert main(["evaluate", "--checkpoint", str(path), "--output-dir", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: its configuration does not load" in err and "training.epoch: unknown key" in err
    assert "Traceback" not in err


# Datasets written in the real formats, each broken in one way.

def write_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (width, height) in enumerate(sizes):
        array = np.full((height, width, 3), 20 * i, dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i}.png")


def _cifar_missing_file(root: Path) -> tuple[dict, list[str], list[str]]:
    write_cifar10(root / "cifar")
    folder = root / "cifar" / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    spec = {"name": "cifar10", "params": {"root": str(root / "cifar"), "verify": False}}
    return {"data": {"dataset": spec}}, [], [f"{folder / 'data_batch_3'}: missing", "cifar-10-python.tar.gz", "download: true"]


def _cifar_wrong_image_size(root: Path) -> tuple[dict, list[str], list[str]]:
    write_cifar10(root / "cifar")
    folder = root / "cifar" / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "wb") as handle:  # 16 x 16 images where 32 x 32 are expected
        pickle.dump({b"labels": [1] * 20, b"data": np.zeros((20, 3 * 16 * 16), np.uint8)}, handle, protocol=2)
    spec = {"name": "cifar10", "params": {"root": str(root / "cifar"), "verify": False}}
    return {"data": {"dataset": spec}}, [], [f"{folder / 'data_batch_2'}: b'data' is ndarray uint8 (20, 768)", "(N, 3072)"]


def _image_folder_with_a_non_image(root: Path) -> tuple[dict, list[str], list[str]]:
    images = root / "images"
    write_images(images / "train" / "cat", [(16, 16), (40, 24), (17, 33)])  # other sizes are resized (documented)
    write_images(images / "train" / "dog", [(20, 20), (64, 48), (16, 16)])
    (images / "train" / "dog" / "notes.txt").write_text("not an image, not read")
    (images / "train" / "dog" / "broken.png").write_bytes(b"this is not a png")
    spec = {"name": "image_folder", "params": {"root": str(images), "image_size": 16}}
    broken = images / "train" / "dog" / "broken.png"
    return {"data": {"dataset": spec, "batch_size": 2}}, [], [f"{broken}: cannot be decoded as an image"]


def _empty_image_folder(root: Path) -> tuple[dict, list[str], list[str]]:
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "readme.txt").write_text("no images here")
    spec = {"name": "image_folder", "params": {"root": str(root / "images")}}
    return {"data": {"dataset": spec}}, [], [f"{root / 'images' / 'train'}: no images with endings .jpg"]


def _too_few_images_for_a_batch(root: Path) -> tuple[dict, list[str], list[str]]:
    spec = {"name": "synthetic", "params": {"num_train": 8, "num_test": 8, "image_size": 16}}
    return {"data": {"dataset": spec}}, [], ["split 'train' has 8 images: fewer than data.batch_size=16"]


def _unknown_set_key(root: Path) -> tuple[dict, list[str], list[str]]:
    return {}, ["--set", "training.epoch=5"], ["training.epoch: unknown key (did you mean 'epochs'?)"]


def _unwritable_output(root: Path) -> tuple[dict, list[str], list[str]]:
    blocker = root / "a-file"
    blocker.write_text("")
    return {}, ["--output-dir", str(blocker / "results")], [f"{blocker / 'results'}", "cannot be written", "--output-dir"]


def _incompatible_checkpoint(root: Path) -> tuple[dict, list[str], list[str]]:
    latest = root / "results" / "checkpoints" / "tiny" / "latest.pth"
    return {}, ["--resume", str(latest), "--set", "model.predictor.params.depth=2"], [
        f"{latest}: the checkpoint does not match this configuration's model"]


def _code_in_a_set_value(root: Path) -> tuple[dict, list[str], list[str]]:
    marker = root / "pwned"
    return {}, ["--set", f'seed=!!python/object/apply:os.system ["touch {marker}"]'], [
        "--set", "the value is not valid YAML", "could not determine a constructor"]


def _over_the_memory_budget(root: Path) -> tuple[dict, list[str], list[str]]:
    return {}, ["--set", "training.memory_budget_gb=0.1"], [
        "exceeds training.memory_budget_gb=0.1", "--set data.batch_size=8 --set training.accumulation_steps=2"]


BAD_INPUTS = {
    "cifar10 with a missing batch file": _cifar_missing_file,
    "cifar10 images of the wrong size": _cifar_wrong_image_size,
    "image folder with a file that is not an image": _image_folder_with_a_non_image,
    "empty image folder": _empty_image_folder,
    "fewer images than one batch": _too_few_images_for_a_batch,
    "unknown --set key": _unknown_set_key,
    "unwritable output folder": _unwritable_output,
    "checkpoint of another model": _incompatible_checkpoint,
    "over the memory budget": _over_the_memory_budget,
    "a --set value that names Python code": _code_in_a_set_value,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_loses_nothing(case, tmp_path, existing_run, capsys):
    sections, args, expected = BAD_INPUTS[case](tmp_path)
    config = write_config(tmp_path, run_config(tmp_path, **sections))
    assert main(["train", "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("hjepa train: error: ") == 1, err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
    existing_run()


def test_images_of_other_sizes_are_resized_as_documented(tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images / "train" / "cat", [(16, 16), (40, 24), (17, 33), (20, 20)])
    write_images(images / "train" / "dog", [(20, 20), (64, 48), (16, 16), (31, 16)])
    spec = {"name": "image_folder", "params": {"root": str(images), "image_size": 16}}
    config = write_config(tmp_path, run_config(tmp_path, data={"dataset": spec, "batch_size": 4},
                                               training={"epochs": 1, "max_steps": 1}, evaluation={"online": None}))
    assert main(["train", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "run stopped: 1 steps, 0 epochs" in capsys.readouterr().out
