"""SIGKILL at random moments, then resume: does every run end with the weights of a run never killed?

Five kinds of trial, each counted as resumed only when every check below passes:

- ``single``: ``hjepa train`` in one process, SIGKILLed at a moment drawn uniformly (seeded) from
  the length of an uninterrupted run, then ``hjepa train --resume auto`` to the end;
- ``ddp``: ``torchrun --nproc_per_node=2`` (gloo, CPU), SIGKILL to rank 0, rank 1 or the launcher
  at a random moment, then the same ``torchrun`` with ``--resume auto``;
- ``write``: ``hjepa train`` killed inside a checkpoint write, at a moment a hook makes certain
  (``_kill_hooks.py``, installed in the killed process only): after a drawn number of bytes of
  the file, after the file is written and before its rename, or after the rename;
- ``records``: ``hjepa train`` killed by the same hook after a drawn byte of its ``metrics.jsonl``
  records, so that a record is cut short;
- ``outputs``: ``hjepa evaluate``, ``export`` and ``embed`` killed the same way inside one of
  their writes (drawn among every file they write), then run again.

After every kill: each checkpoint under a final name loads; ``metrics.jsonl`` has no half line, or
the report's reader skips it with a warning; an output under a final name is whole (it parses,
or has the lines of an uninterrupted run's). After every resume: ``training.log`` continues the
killed run's log (appended, every line whole), ``metrics.jsonl`` has no half line, no temporary
file is left, and ``final.pth`` holds weights ``torch.equal`` to the uninterrupted run's.

Single-process runs are forks of this process (hjepa-kit and torch are imported once), running
``hjepa_kit.cli.main`` as the command would; DDP runs are real ``torchrun`` processes.

    python benchmarks/kills.py --single 20 --ddp 10 --write 10 --records 3 --outputs 9 --json results/kills.json
    python benchmarks/kills.py --single 2 --ddp 0 --write 0 --records 0 --outputs 0      # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import _machine  # first: imports hjepa_kit before torch (OMP_WAIT_POLICY)
import numpy as np
import torch
import yaml

import hjepa_kit.cli
import hjepa_kit.api  # noqa: F401  (imported here, so the forked runs start at once)
import hjepa_kit.training.trainer  # noqa: F401
from _kill_hooks import KillingWrites, install
from hjepa_kit.errors import CheckpointError
from hjepa_kit.evaluation.report import read_metrics_log
from hjepa_kit.training.checkpoint import load_checkpoint

WAIT_S = 600.0
FORK = multiprocessing.get_context("fork")
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR|CRITICAL) ")  # a training.log record starts so


def preload() -> None:
    """Import what a run imports (the plugins, timm) in this process, so that every fork starts at once."""
    from hjepa_kit.registry import Registry

    Registry()


def run_config(root: Path, *, epochs: int = 3, images: int = 96, encoder: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run every trial kills: 16-px synthetic images, ViT-Tiny with 4-px patches (or ``encoder``), batches of 16, one thread."""
    return {
        "name": "tiny", "output_dir": str(root / "results"), "device": "cpu", "seed": 0,
        "data": {"dataset": {"name": "synthetic", "params": {"num_train": images, "num_test": 48, "image_size": 16}},
                 "batch_size": 16, "eval_batch_size": 64},
        "model": {"encoder": encoder or {"name": "vit_tiny", "params": {"patch_size": 4}}, "masker": {"name": "multiblock"},
                  "predictor": {"name": "hierarchical", "params": {"depth": 1}}},
        "training": {"epochs": epochs, "warmup_epochs": 0.5, "lr": 1.0e-3, "threads": 1},
        "checkpoint": {"every_epochs": 2},
        "logging": {"interval_steps": 1, "feature_stats_every_steps": 2},
        "evaluation": {"online_train_samples": images, "online_test_samples": 48},
        "callbacks": [],
    }


# --- processes ------------------------------------------------------------------------------------


def _child(argv: list[str], folder: str, hook: KillingWrites | None) -> None:
    """In the forked process: ``hjepa ARGV`` with its output in ``folder``; exits with its status."""
    for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
        target = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    code = 1
    try:
        if hook is not None:
            install(hook)
        code = hjepa_kit.cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        if hook is not None:
            hook.save()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Child:
    """``hjepa ARGV`` in a fork of this process (the command's own ``main``), output in ``folder``."""

    def __init__(self, argv: list[str], folder: Path, hook: KillingWrites | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.started = time.monotonic()
        self.proc = FORK.Process(target=_child, args=(argv, str(folder), hook))
        self.proc.start()

    def wait(self, timeout: float | None = WAIT_S) -> int | None:
        """The exit status (negative: the signal), or None when still running after ``timeout``."""
        self.proc.join(timeout)
        return self.proc.exitcode

    def finish(self) -> int:
        code = self.wait()
        if code is None:
            self.kill()
            raise RuntimeError(f"{self.folder}: the process did not end in {WAIT_S:.0f}s")
        self.seconds = time.monotonic() - self.started
        return code

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.join()

    def output(self) -> str:
        return "".join((self.folder / n).read_text(errors="replace")[-2000:] for n in ("stdout.txt", "stderr.txt")
                       if (self.folder / n).exists())


# --- what a kill leaves, what a resume gives ------------------------------------------------------


def run_dirs(root: Path) -> tuple[Path, Path]:
    return root / "results" / "checkpoints" / "tiny", root / "results" / "logs" / "tiny"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(path: Path, expected: dict[str, torch.Tensor]) -> str | None:
    model = weights(path)
    if model.keys() != expected.keys():
        return f"{path.name}: other tensors than the uninterrupted run's"
    different = [k for k in model if not torch.equal(model[k], expected[k])]
    return f"{path.name}: {len(different)} tensors differ from the uninterrupted run's, e.g. {different[:2]}" if different else None


def after_kill(root: Path, problems: list[str]) -> dict[str, Any]:
    """Check what a killed run left: checkpoints that load, metrics.jsonl read without a half line or with a warning."""
    checkpoint_dir, log_dir = run_dirs(root)
    state: dict[str, Any] = {"checkpoints": {}, "half_line": False}
    for path in sorted(checkpoint_dir.glob("*.pth")) if checkpoint_dir.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            state["checkpoints"][path.name] = int(load_checkpoint(path)["step"])
        except CheckpointError as exc:
            problems.append(f"after the kill: {exc}")
    metrics = log_dir / "metrics.jsonl"
    if metrics.is_file():
        text = metrics.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        whole, last = lines[:-1], lines[-1]
        bad = [i + 1 for i, line in enumerate(whole) if line.strip() and not _json_object(line)]
        if bad:
            problems.append(f"after the kill: metrics.jsonl lines {bad[:3]} are not whole JSON records")
        if last:
            state["half_line"] = True
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                records = read_metrics_log(metrics)
            if len(records) != len([line for line in whole if line.strip()]):
                problems.append("after the kill: the metrics reader did not skip the half line")
            if not any("metrics.jsonl" in str(w.message) for w in caught):
                problems.append("after the kill: the metrics reader skipped a half line without a warning")
    log = log_dir / "training.log"
    state["log"] = log.read_bytes() if log.is_file() else b""
    return state


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def after_resume(root: Path, before: dict[str, Any], expected: dict[str, torch.Tensor], problems: list[str]) -> str:
    """Check the resumed run: the log continued, metrics.jsonl whole, no temporary left, final weights equal. Returns where it resumed."""
    checkpoint_dir, log_dir = run_dirs(root)
    log = (log_dir / "training.log").read_bytes()
    old = before["log"]
    if not log.startswith(old):
        problems.append("training.log: the resumed run did not append to the killed run's log")
    new = log[len(old):].decode("utf-8", errors="replace")
    if old and not old.endswith(b"\n") and not new.startswith("\n"):
        problems.append("training.log: the resumed run's first line is glued to the killed run's half line")
    lines = [line for line in log.decode("utf-8", errors="replace").splitlines() if line]
    glued = [line for line in lines if any(m.start() > 0 for m in RECORD.finditer(line))]
    if glued:
        problems.append(f"training.log: two records on one line: {glued[0][:120]!r}")
    if "status: completed" not in new:
        problems.append("training.log: the resumed run did not log its completion")
    resumed = re.findall(r"resumed from (\S+) at epoch (\d+), step (\d+)", new)
    where = f"{Path(resumed[-1][0]).name} (step {resumed[-1][2]})" if resumed else "a fresh start (no checkpoint yet)"
    metrics = (log_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace")
    if not metrics.endswith("\n") or not all(_json_object(line) for line in metrics.splitlines() if line.strip()):
        problems.append("metrics.jsonl: a half line after the resume")
    left = [p.name for p in checkpoint_dir.iterdir() if p.name.startswith(".")]
    if left:
        problems.append(f"temporary files left after the resume: {left}")
    final = checkpoint_dir / "final.pth"
    if not final.is_file():
        problems.append("no final.pth after the resume")
    else:
        differ = same_weights(final, expected)
        if differ:
            problems.append(differ)
    return where


# --- single process: random moments and checkpoint writes ------------------------------------------


class Baseline:
    """An uninterrupted run (a fork running ``hjepa train``): its final weights, duration and checkpoint writes."""

    def __init__(self, root: Path, *, epochs: int, images: int, encoder: dict[str, Any] | None = None) -> None:
        self.sizes = {"epochs": epochs, "images": images, "encoder": encoder}
        path = write_config(root, run_config(root, **self.sizes))
        record = root / "writes.json"
        child = Child(["train", "--config", str(path)], root / "process", KillingWrites(root, record=str(record)))
        if child.finish() != 0:
            raise RuntimeError(f"the uninterrupted run failed:\n{child.output()}")
        self.seconds = child.seconds
        self.weights = weights(run_dirs(root)[0] / "final.pth")
        events = json.loads(record.read_text())
        self.writes = [e for e in events if e["name"].endswith(".pth.*.tmp") and e["kind"] == "write"]
        self.metrics = next(e for e in events if e["name"].endswith("/metrics.jsonl"))
        self.renames = [e for e in events if e["name"].endswith(".pth") and e["kind"] == "rename"]


def write_config(root: Path, config: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_trial(root: Path, baseline: Baseline, *, moment: float | None = None, kill: dict[str, Any] | None = None) -> dict[str, Any]:
    """One kill of ``hjepa train`` (at ``moment`` seconds, or by the write hook's ``kill``), then ``--resume auto``."""
    config = write_config(root, run_config(root, **baseline.sizes))
    trial: dict[str, Any] = {"moment_s": moment, "kill": kill, "problems": []}
    problems = trial["problems"]
    hook = KillingWrites(root, kill) if kill else None
    child = Child(["train", "--config", str(config)], root / "killed", hook)
    code = child.wait(moment if moment is not None else WAIT_S)
    if code is None and moment is not None:
        child.kill()
        code = child.proc.exitcode
    trial["killed"] = code == -signal.SIGKILL
    if not trial["killed"]:
        problems.append(f"not killed: the run ended with status {code}\n{child.output()}")
        return trial
    state = after_kill(root, problems)
    trial["left"] = state["checkpoints"]
    trial["half_line"] = state["half_line"]
    if kill is not None and "/checkpoints/" in kill["name"]:
        _check_write_moment(root, kill, problems)
    resume = Child(["train", "--config", str(config), "--resume", "auto"], root / "resumed")
    trial["resume_status"] = resume.finish()
    if trial["resume_status"] != 0:
        problems.append(f"the resumed run ended with status {trial['resume_status']}:\n{resume.output()}")
        return trial
    trial["resumed_from"] = after_resume(root, state, baseline.weights, problems)
    return trial


def _check_write_moment(root: Path, kill: dict[str, Any], problems: list[str]) -> None:
    """The kill came where the hook was told: a temporary of the drawn size, or a whole file under the final name."""
    checkpoint_dir = run_dirs(root)[0]
    temporaries = [p for p in checkpoint_dir.glob(".*.tmp")]
    if kill["point"] == "mid":
        sizes = [p.stat().st_size for p in temporaries]
        if sizes != [kill["bytes"]]:
            problems.append(f"the hook did not kill {kill['bytes']} bytes into the write: temporaries {sizes}")
    elif kill["point"] == "before_rename" and len(temporaries) != 1:
        problems.append(f"the hook did not kill before the rename: {len(temporaries)} temporaries")
    elif kill["point"] == "after_rename" and temporaries:
        problems.append("the hook did not kill after the rename: a temporary is left")


def draw_write_kill(rng: random.Random, baseline: Baseline) -> dict[str, Any]:
    """A moment inside one of the run's checkpoint writes: mid-file (a drawn byte count), before or after its rename."""
    point = rng.choice(("mid", "before_rename", "after_rename"))
    if point == "mid":
        event = rng.choice(baseline.writes)
        return {"point": point, "name": event["name"], "occurrence": event["occurrence"],
                "bytes": rng.randrange(1, event["bytes"])}
    event = rng.choice(baseline.renames)
    return {"point": point, "name": event["name"], "occurrence": event["occurrence"]}


def draw_record_kill(rng: random.Random, baseline: Baseline) -> dict[str, Any]:
    """A moment inside a write of ``metrics.jsonl``: a drawn byte of the run's records (almost always inside one)."""
    event = baseline.metrics
    return {"point": "mid", "name": event["name"], "occurrence": event["occurrence"], "bytes": rng.randrange(1, event["bytes"])}


def describe(kill: dict[str, Any]) -> str:
    name = kill["name"].split("/")[-1]
    if kill["point"] == "mid":
        return f"write {kill['occurrence']} of {name}, after {kill['bytes']:,} bytes"
    return f"rename {kill['occurrence']} to {name}, {kill['point'].replace('_', ' ')}"


def single_trials(work: Path, count: int, seed: int, *, epochs: int = 3, images: int = 96, writes: int = 0,
                  records: int = 0, encoder: dict[str, Any] | None = None, keep: bool = False, report=print) -> dict[str, Any]:
    """``count`` kills at random moments, ``writes`` inside checkpoint writes and ``records`` inside a
    ``metrics.jsonl`` record, each resumed and checked.

    The core of the benchmark's ``single`` and ``write`` families (and of its test, which passes a
    smaller ``encoder``). Returns the uninterrupted run's seconds and the trials of each family.
    The folder of a trial that passed is removed unless ``keep`` (a ViT-Tiny trial leaves ~350 MB).
    """
    rng = random.Random(seed)
    preload()
    baseline = Baseline(work / "baseline", epochs=epochs, images=images, encoder=encoder)
    report(f"uninterrupted run: {baseline.seconds:.1f}s, {len(baseline.renames)} checkpoint writes")
    families: dict[str, list[dict[str, Any]]] = {"single": [], "write": [], "records": []}
    for i in range(count):
        moment = rng.uniform(0.0, baseline.seconds)
        trial = train_trial(work / f"single-{i}", baseline, moment=moment)
        for _ in range(3):  # a run faster than the uninterrupted one ended before the moment: draw an earlier one
            if trial["killed"]:
                break
            moment *= 0.5
            shutil.rmtree(work / f"single-{i}")
            trial = train_trial(work / f"single-{i}", baseline, moment=moment)
        families["single"].append(tidy(trial, work / f"single-{i}", keep))
        report(_trial_line("single", i, f"killed at {trial['moment_s']:.2f}s", trial))
    for i in range(writes):
        kill = draw_write_kill(rng, baseline)
        trial = train_trial(work / f"write-{i}", baseline, kill=kill)
        families["write"].append(tidy(trial, work / f"write-{i}", keep))
        report(_trial_line("write", i, f"killed in {describe(kill)}", trial))
    for i in range(records):
        kill = draw_record_kill(rng, baseline)
        trial = train_trial(work / f"records-{i}", baseline, kill=kill)
        families["records"].append(tidy(trial, work / f"records-{i}", keep))
        report(_trial_line("records", i, f"killed in {describe(kill)} (half line left: {trial.get('half_line')})", trial))
    return {"baseline_s": baseline.seconds, **families}


def tidy(trial: dict[str, Any], folder: Path, keep: bool) -> dict[str, Any]:
    """Remove the folder of a trial that passed (unless ``keep``); a failed one stays for a look."""
    if not keep and trial["killed"] and not trial["problems"]:
        shutil.rmtree(folder, ignore_errors=True)
    return trial


def _trial_line(family: str, index: int, how: str, trial: dict[str, Any]) -> str:
    ok = trial["killed"] and not trial["problems"]
    left = ", ".join(f"{k}@{v}" for k, v in sorted(trial.get("left", {}).items())) or "no checkpoint"
    where = trial.get("resumed_from", "-")
    text = f"{family} {index + 1}: {how}; left {left}; resumed from {where}: {'OK' if ok else 'FAILED'}"
    return text + "".join(f"\n    {p}" for p in trial["problems"])


# --- DDP: torchrun with 2 gloo ranks ----------------------------------------------------------------


def torchrun(root: Path, config: Path, tag: str, *args: str) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=2 -m hjepa_kit.cli train --config CONFIG ARGS``, output in ``root/tag``."""
    folder = root / tag
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "HJEPA_STRICT_PLUGINS"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "hjepa_kit.cli", "train", "--config", str(config), *args]
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=str(root), start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ranks_of(launcher: int) -> dict[int, int]:
    """rank -> pid of the processes ``torchrun`` (pid ``launcher``) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def _output(folder: Path) -> str:
    return "".join((folder / n).read_text(errors="replace")[-3000:] for n in ("stdout.txt", "stderr.txt") if (folder / n).exists())


class DdpBaseline:
    """An uninterrupted 2-rank run: its final weights and how long it trains (from its log's first line to ``status:``)."""

    def __init__(self, root: Path) -> None:
        config = write_config(root, run_config(root))
        log = run_dirs(root)[1] / "training.log"
        launcher = torchrun(root, config, "process")
        started = ended = None
        while launcher.poll() is None:
            if started is None and log.exists():
                started = time.monotonic()
            if started is not None and ended is None and "status: " in log.read_text(errors="replace"):
                ended = time.monotonic()
            time.sleep(0.02)
        if launcher.returncode != 0 or started is None or ended is None:
            raise RuntimeError(f"the uninterrupted 2-rank run failed:\n{_output(root / 'process')}")
        self.seconds = ended - started
        self.weights = weights(run_dirs(root)[0] / "final.pth")


def ddp_trial(root: Path, baseline: DdpBaseline, moment: float, victim: str) -> dict[str, Any]:
    """Kill ``victim`` (``rank0``, ``rank1`` or ``launcher``) ``moment`` seconds after the run's log opened; resume with torchrun."""
    config = write_config(root, run_config(root))
    trial: dict[str, Any] = {"moment_s": moment, "victim": victim, "problems": [], "killed": False}
    problems = trial["problems"]
    launcher = torchrun(root, config, "killed")
    ranks: dict[int, int] = {}
    try:
        if not _kill_at(launcher, ranks, run_dirs(root)[1] / "training.log", moment, victim):
            problems.append(f"not killed: the run ended with status {launcher.returncode} first")
            return trial
        trial["killed"] = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            trial["launcher_status"] = launcher.wait(timeout=WAIT_S)
        if launcher.poll() is None:
            problems.append(f"the launcher still ran {WAIT_S:.0f}s after {victim} was killed")
        deadline = time.monotonic() + 120
        while any(_alive(pid) for pid in ranks.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = [rank for rank, pid in ranks.items() if _alive(pid)]
        if running:
            problems.append(f"ranks {running} still ran 120s after {victim} was killed")
    finally:
        _end_all(launcher, ranks)
    state = after_kill(root, problems)
    trial["left"] = state["checkpoints"]
    trial["half_line"] = state["half_line"]
    resume = torchrun(root, config, "resumed", "--resume", "auto")
    try:
        trial["resume_status"] = resume.wait(timeout=WAIT_S)
    finally:
        _end_all(resume, {})
    if trial["resume_status"] != 0:
        problems.append(f"the resumed run ended with status {trial['resume_status']}:\n{_output(root / 'resumed')}")
        return trial
    trial["resumed_from"] = after_resume(root, state, baseline.weights, problems)
    return trial


def _kill_at(launcher: subprocess.Popen, ranks: dict[int, int], log: Path, moment: float, victim: str) -> bool:
    """SIGKILL ``victim`` ``moment`` seconds after ``log`` appeared (once both ranks run); False when the run ended first."""
    started = None
    deadline = time.monotonic() + WAIT_S
    while launcher.poll() is None and time.monotonic() < deadline:
        ranks.update(ranks_of(launcher.pid))
        if started is None and log.exists():
            started = time.monotonic()
        if started is not None and time.monotonic() - started >= moment and len(ranks) == 2:
            os.kill(launcher.pid if victim == "launcher" else ranks[int(victim[-1])], signal.SIGKILL)
            return True
        time.sleep(0.02)
    return False


def _end_all(launcher: subprocess.Popen, ranks: dict[int, int]) -> None:
    """Leave nothing of a trial running (its launcher's session and the ranks seen)."""
    if launcher.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    for pid in list(ranks.values()) + list(ranks_of(launcher.pid).values()):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def ddp_trials(work: Path, count: int, seed: int, keep: bool = False, report=print) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    baseline = DdpBaseline(work / "ddp-baseline")
    report(f"uninterrupted 2-rank run: {baseline.seconds:.1f}s from its log's first line to its last")
    trials = []
    for i in range(count):
        moment, victim = rng.uniform(0.0, baseline.seconds), ("rank0", "rank1", "launcher")[i % 3]
        trial = ddp_trial(work / f"ddp-{i}", baseline, moment, victim)
        for _ in range(3):  # the run was faster than the uninterrupted one and ended first: an earlier moment
            if trial["killed"]:
                break
            moment *= 0.5
            shutil.rmtree(work / f"ddp-{i}")
            trial = ddp_trial(work / f"ddp-{i}", baseline, moment, victim)
        trials.append(tidy(trial, work / f"ddp-{i}", keep))
        report(_trial_line("ddp", i, f"{victim} killed {moment:.2f}s into training (launcher exit {trial.get('launcher_status')})", trial))
    return trials


# --- evaluate, export, embed: no partial file under a final name ------------------------------------


def output_command(name: str, checkpoint: Path, out: Path) -> list[str]:
    if name == "evaluate":
        return ["evaluate", "--checkpoint", str(checkpoint), "--output-dir", str(out / "eval"), "--device", "cpu",
                "--eval-type", "knn", "feature_quality"]
    if name == "export":
        return ["export", "--checkpoint", str(checkpoint), "--out", str(out / "export"), "--force"]
    return ["embed", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--out", str(out / "features.npz"),
            "--device", "cpu", "--force"]


def _final_files(out: Path) -> dict[str, Path]:
    """The files under ``out`` with a final name (no hidden part), by relative path; TensorBoard's event logs are left out."""
    found = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts) and "tfevents" not in path.name:
            found[relative.as_posix()] = path
    return found


def whole(path: Path, reference: Path | None) -> str | None:
    """None when ``path`` is a whole file: it parses, or (text) has the lines of the uninterrupted run's ``reference``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
        elif suffix in (".npy", ".npz"):
            _load_arrays(path)
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            load_file(str(path))
        elif reference is not None and reference.is_file():
            text, expected = path.read_bytes(), reference.read_bytes()
            if text.count(b"\n") != expected.count(b"\n") or not text.endswith(expected[-1:]):
                return f"{len(text.splitlines())} lines where the uninterrupted run wrote {len(expected.splitlines())}"
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return f"does not read: {type(exc).__name__}: {str(exc)[:120]}"
    return None


def _load_arrays(path: Path) -> None:
    """Read every array of an .npy or .npz file (raises when one is cut short)."""
    data = np.load(path, allow_pickle=False)
    if hasattr(data, "files"):
        with data:
            for key in data.files:
                data[key]


def check_outputs(out: Path, reference: Path, problems: list[str], when: str) -> int:
    files = _final_files(out)
    for relative, path in files.items():
        bad = whole(path, reference / relative)
        if bad:
            problems.append(f"{when}: {relative}: {bad}")
    return len(files)


def output_trials(work: Path, checkpoint: Path, count: int, seed: int, keep: bool = False, report=print) -> list[dict[str, Any]]:
    """``count`` kills of evaluate, export and embed (in turn), each inside a write drawn among the command's own."""
    rng = random.Random(seed + 2)
    events: dict[str, list[dict[str, Any]]] = {}
    for name in ("evaluate", "export", "embed"):
        out = work / f"{name}-baseline"
        record = out / ".writes.json"
        out.mkdir(parents=True, exist_ok=True)
        child = Child(output_command(name, checkpoint, out), out / ".process", KillingWrites(out, record=str(record)))
        if child.finish() != 0:
            raise RuntimeError(f"hjepa {name} failed:\n{child.output()}")
        events[name] = [e for e in json.loads(record.read_text()) if not e["name"].startswith(".process")]
        report(f"hjepa {name}: {len(events[name])} writes and renames, {child.seconds:.1f}s")
    trials = []
    for i in range(count):
        name = ("evaluate", "export", "embed")[i % 3]
        files = sorted({(e["kind"], e["name"]) for e in events[name]})  # each file alike, however often it is opened
        kind, target = rng.choice(files)
        event = rng.choice([e for e in events[name] if (e["kind"], e["name"]) == (kind, target)])
        if event["kind"] == "write":
            kill = {"point": "mid", "name": event["name"], "occurrence": event["occurrence"],
                    "bytes": rng.randrange(0, max(event["bytes"], 1))}
        else:
            kill = {"point": rng.choice(("before_rename", "after_rename")), "name": event["name"], "occurrence": event["occurrence"]}
        out = work / f"{name}-{i}"
        out.mkdir(parents=True)
        trial: dict[str, Any] = {"command": name, "kill": kill, "problems": []}
        child = Child(output_command(name, checkpoint, out), out / ".killed", KillingWrites(out, kill))
        code = child.finish()
        trial["killed"] = code == -signal.SIGKILL
        if not trial["killed"]:
            trial["problems"].append(f"not killed: hjepa {name} ended with status {code}\n{child.output()}")
        else:
            trial["whole_after_kill"] = check_outputs(out, work / f"{name}-baseline", trial["problems"], "after the kill")
            again = Child(output_command(name, checkpoint, out), out / ".again")
            trial["rerun_status"] = again.finish()
            if trial["rerun_status"] != 0:
                trial["problems"].append(f"run again, hjepa {name} ended with status {trial['rerun_status']}:\n{again.output()}")
            else:
                missing = set(_final_files(work / f"{name}-baseline")) - set(_final_files(out))
                if missing:
                    trial["problems"].append(f"run again: missing {sorted(missing)}")
                check_outputs(out, work / f"{name}-baseline", trial["problems"], "run again")
        trials.append(tidy(trial, out, keep))
        ok = trial["killed"] and not trial["problems"]
        report(f"outputs {i + 1}: hjepa {name} killed in {describe(kill)}; {trial.get('whole_after_kill', 0)} files "
               f"under final names, all whole: {'OK' if ok else 'FAILED'}" + "".join(f"\n    {p}" for p in trial["problems"]))
    return trials


# --- the command ------------------------------------------------------------------------------------


def summary(name: str, trials: list[dict[str, Any]]) -> str:
    ok = sum(1 for t in trials if t["killed"] and not t["problems"])
    return f"{name}: {ok}/{len(trials)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=20, help="kills of a one-process run at random moments")
    parser.add_argument("--ddp", type=int, default=10, help="kills of a 2-rank torchrun run (rank 0, rank 1, the launcher in turn)")
    parser.add_argument("--write", type=int, default=10, help="kills inside a checkpoint write")
    parser.add_argument("--records", type=int, default=3, help="kills inside a write of a metrics.jsonl record")
    parser.add_argument("--outputs", type=int, default=9, help="kills of evaluate, export and embed inside one of their writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder of the runs (default: a temporary one, removed at the end)")
    parser.add_argument("--json", type=Path, default=None, help="write every trial and the machine here")
    parser.add_argument("--keep", action="store_true", help="keep the folders of the trials that passed (~350 MB each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="hjepa-kills-"))
    machine = _machine.machine()
    print(f"# {machine['cpu']}, {machine['physical_cores']} cores, torch {machine['torch']}, load {_machine.fmt_load(machine['load_average'])}")
    started = time.monotonic()
    result: dict[str, Any] = {"seed": args.seed, "machine": machine}
    try:
        if args.single or args.write or args.records or args.outputs:
            result.update(single_trials(work, args.single, args.seed, writes=args.write, records=args.records,
                                        keep=args.keep, report=lambda s: print(s, flush=True)))
        if args.outputs:
            checkpoint = run_dirs(work / "baseline")[0] / "final.pth"
            result["outputs"] = output_trials(work, checkpoint, args.outputs, args.seed, keep=args.keep,
                                              report=lambda s: print(s, flush=True))
        if args.ddp:
            result["ddp"] = ddp_trials(work, args.ddp, args.seed, keep=args.keep, report=lambda s: print(s, flush=True))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.monotonic() - started
    result["load_average_end"] = _machine.load_average()
    families = [(k, result[k]) for k in ("single", "ddp", "write", "records", "outputs") if result.get(k)]
    line = "; ".join(summary(k, v) for k, v in families)
    print(f"resumed to the uninterrupted weights (outputs: whole) -- {line} ({result['seconds'] / 60:.1f} min, "
          f"load {_machine.fmt_load(result['load_average_end'])})")
    _machine.write_json(args.json, result)
    return 0 if all(t["killed"] and not t["problems"] for _, v in families for t in v) else 1


if __name__ == "__main__":
    sys.exit(main())
