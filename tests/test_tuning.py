"""``hjepa tune``: a toy study writes its table and a best.yaml that trains, resumes to its total after a
kill, refuses a bad space file, records failed trials and goes on, prunes, and names the extra when
Optuna is missing. Every trial is a tiny run (16 px synthetic images, one epoch of six steps)."""

from __future__ import annotations

import csv
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

import hjepa_kit
from hjepa_kit import hookimpl
from hjepa_kit.cli import main
from hjepa_kit.errors import CollapseDetected, ConfigError, UserError
from conftest import tiny_config

needs_optuna = pytest.mark.skipif(find_spec("optuna") is None, reason="optuna is the extra `tune` (in the test extra)")

SPACE = """
params:
  training.lr: {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
  training.ema_momentum.0: {type: float, low: 0.95, high: 0.999}
  loss.params.variance_weight: {type: float, low: 0.5, high: 2.0}
  loss.params.regularise: [tokens, pooled]
sampler: {startup_trials: 2}
"""


def _config(root: Path, **sections) -> dict:
    """The tiny run, lighter still: one epoch, two checkpoint writes (latest, best), no callbacks."""
    sections.setdefault("training", {"epochs": 1, "warmup_epochs": 0.5, "threads": 1})
    sections.setdefault("checkpoint", {"every_epochs": 10, "save_final": False})
    config = tiny_config(root, callbacks=[], loss={"name": "smooth_l1", "params": {"variance_weight": 1.0}}, **sections)
    config["data"]["dataset"]["params"].update(num_train=48, num_test=32)  # 3 steps an epoch
    return config


def _space(folder: Path, text: str, name: str = "space.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _rows(folder: Path) -> list[dict]:
    with open(folder / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def study3(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    config, space, folder = _config(root), _space(root, SPACE), root / "study"
    result = hjepa_kit.tune(config, space, trials=3, output_dir=folder, console=False)
    return config, space, folder, result


@needs_optuna
def test_a_toy_study_writes_its_table_and_a_best_yaml_that_trains(study3, tmp_path):
    config, _, folder, result = study3
    assert result.counts["complete"] == 3 and result.objective == "knn" and result.direction == "maximize"
    rows = _rows(folder)
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and {r["status"] for r in rows} == {"complete"}
    searched = ("training.lr", "training.ema_momentum.0", "loss.params.variance_weight", "loss.params.regularise")
    for key in (*searched, "seconds", "cpu_seconds"):
        assert all(r[key] for r in rows), key
    assert all(0.0 <= float(r["objective"]) <= 1.0 for r in rows)  # a k-NN accuracy
    for name in ("report.md", "history.png", "intermediate.png", "tensorboard", "best.yaml"):
        assert (folder / name).exists(), name
    assert (folder / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert list((folder / "tensorboard").glob("trial_000*/events.out.tfevents.*"))
    # The best trial keeps its checkpoints; the others only their logs.
    kept = sorted(p.name for p in (folder / "trials" / "checkpoints").iterdir())
    assert kept == [f"trial_{result.best_trial:04d}"]
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["training"]["lr"] == pytest.approx(result.best_params["training.lr"])
    assert best["training"]["ema_momentum"][0] == pytest.approx(result.best_params["training.ema_momentum.0"])
    assert best["loss"]["params"]["regularise"] == result.best_params["loss.params.regularise"]
    assert best["name"] == "tiny_best" and "Trial" in (folder / "report.md").read_text()
    trained = hjepa_kit.train(folder / "best.yaml", overrides=[f"output_dir={tmp_path}"], console=False)
    assert trained.status == "completed" and trained.epochs == 1


@needs_optuna
def test_a_killed_study_resumes_and_tops_up_to_its_total(study3):
    import optuna

    config, space, folder, _ = study3
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'study.db'}")
    before = len(study.trials)
    killed = study.ask()  # the trial a killed process left running: its worker's lock file is not held
    killed.set_user_attr("worker", "dead-worker")
    (folder / "workers").mkdir(exist_ok=True)
    (folder / "workers" / "dead-worker.lock").write_text("")

    result = hjepa_kit.tune(config, space, trials=before + 1, output_dir=folder, console=False)
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'study.db'}").trials
    assert trials[killed.number].state.name == "FAIL" and trials[killed.number].user_attrs["status"] == "interrupted"
    assert len(trials) == before + 2 and trials[-1].state.name == "COMPLETE"  # the lost trial does not count
    assert result.counts["complete"] == before + 1
    again = hjepa_kit.tune(config, space, trials=before + 1, output_dir=folder, console=False)
    assert again.counts == result.counts  # the total is reached: nothing more runs
    with pytest.raises(UserError, match="was started with objective 'knn'"):
        hjepa_kit.tune(config, space, trials=before + 1, output_dir=folder, objective="loss", console=False)


@pytest.mark.parametrize("text, expected", [
    ("params:\n  training.lrr: {type: float, low: 1.0e-4, high: 1.0e-3}\n",
     ["params.training.lrr: not a key of the configuration (did you mean 'training.lr'"]),
    ("params:\n  loss.params.varience_weight: [0.5, 1.0]\n", ["did you mean 'loss.params.variance_weight'"]),
    ("params:\n  training.lr: {type: float, low: 1.0e-3, high: 1.0e-4}\n",
     ["params.training.lr: low 0.001 must be below high 0.0001"]),
    ("params:\n  training.lr: {type: float, low: -1.0, high: 1.0}\n",
     ["params.training.lr: the value -1.0 is not valid there", "training.lr: must be > 0.0"]),
    ("params:\n  training.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true, step: 1.0e-4}\n",
     ["log and step cannot be combined"]),
    ("params:\n  training.epochs: {type: float, low: 1, high: 3}\n", ["training.epochs: expected an integer, got 1.0"]),
    ("params:\n  training.lr: [fast, slow]\n", ["the value fast is not valid there", "expected a number"]),
    ("params:\n  training.epochs: {type: int, low: 0.5, high: 3}\n", ["an int range needs whole numbers"]),
    ("params:\n  training.lr: {type: float, lo: 1.0e-4, high: 1.0e-3}\n", ["params.training.lr.lo: unknown key (did you mean 'low'"]),
    ("params:\n  training.lr: {type: real, low: 1.0e-4, high: 1.0e-3}\n", ["params.training.lr.type: expected"]),
    ("params:\n  training.lr: [1.0e-4]\npruners: {name: median}\n", ["pruners: unknown key (did you mean 'pruner'?)"]),
])
def test_a_bad_space_file_names_the_file_the_key_and_what_is_allowed(tmp_path, text, expected):
    from hjepa_kit.registry import Registry
    from hjepa_kit.tuning import load_space

    path = _space(tmp_path, text)
    config = _config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_space(path).check(config, [], _registry(Registry), "<mapping>")
    message = str(caught.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message


_REGISTRY: list = []


def _registry(cls):
    if not _REGISTRY:
        _REGISTRY.append(cls())
    return _REGISTRY[0]


@needs_optuna
def test_the_command_refuses_a_bad_space_with_exit_status_2(tmp_path, capsys):
    path = _space(tmp_path, "params:\n  training.lrr: [1.0e-4, 1.0e-3]\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    assert main(["tune", "--config", str(config), "--space", str(path), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert f"hjepa tune: error: {path}: params.training.lrr: not a key" in err and "Traceback" not in err


class _Faults:
    """Each trial fails at the start of its run: an error, running out of memory, a collapse."""

    @hookimpl
    def hjepa_fit_start(self, trainer):
        faults = {"trial_0000": RuntimeError("boom in trial 0"), "trial_0001": MemoryError(),
                  "trial_0002": CollapseDetected("representation collapse at epoch 1, step 3: test")}
        if trainer.config.name in faults:
            raise faults[trainer.config.name]


@needs_optuna
def test_failed_trials_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path):
    space = _space(tmp_path, "params:\n  training.lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n")
    config = _config(tmp_path, evaluation={"online": None})
    result = hjepa_kit.tune(config, space, trials=3, output_dir=tmp_path / "study", plugins=[_Faults()], console=False)
    rows = _rows(tmp_path / "study")
    assert [r["status"] for r in rows] == ["failed", "failed", "pruned"]  # the first failure did not end the study
    assert rows[0]["reason"] == "error: RuntimeError: boom in trial 0"
    assert rows[1]["reason"].startswith("out of memory")
    assert rows[2]["reason"].startswith("collapsed: representation collapse")
    assert result.counts == {"complete": 0, "pruned": 1, "failed": 2, "running": 0} and result.best_trial is None
    assert "1 pruned, 2 failed" in (tmp_path / "study" / "report.md").read_text()
    assert not (tmp_path / "study" / "best.yaml").exists()


@needs_optuna
def test_the_pruner_stops_a_poor_trial_early_through_request_stop(tmp_path):
    space = _space(tmp_path, """
        params:
          training.lr: {type: float, low: 1.0e-4, high: 1.0e-3}
        pruner: {name: threshold, upper: 1.0e-9, warmup_epochs: 0}   # any loss is too high: it must prune
    """)
    config = _config(tmp_path, training={"epochs": 3, "warmup_epochs": 0.5, "threads": 1}, evaluation={"online": None})
    result = hjepa_kit.tune(config, space, trials=1, objective="loss", output_dir=tmp_path / "study", console=False)
    (row,) = _rows(tmp_path / "study")
    assert result.direction == "minimize" and result.counts["pruned"] == 1
    assert row["status"] == "pruned" and row["epochs"] == "1" and row["max_epochs"] == "3"
    assert row["reason"].startswith("pruned at epoch 1 (loss ")
    log = (tmp_path / "study" / "trials" / "logs" / "trial_0000" / "training.log").read_text()
    assert "stopping at step 3: hjepa tune: trial 0 pruned at epoch 1" in log


def test_without_optuna_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    space = _space(tmp_path, "params:\n  training.lr: [1.0e-4, 1.0e-3]\n")
    with pytest.raises(UserError, match=r"pip install 'hjepa-kit\[tune\]'"):
        hjepa_kit.tune(_config(tmp_path), space, trials=1, console=False)
    assert main(["tune", "--space", str(space), "--trials", "1"]) == 2
    assert "needs the package optuna, which is not installed: pip install 'hjepa-kit[tune]'" in capsys.readouterr().err


@needs_optuna
def test_the_pruning_benchmark_reruns_the_same_trials_unpruned(tmp_path):
    import json
    import os
    import subprocess

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, training={"epochs": 2, "warmup_epochs": 0.5, "threads": 1})))
    out = tmp_path / "bench.json"
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "benchmarks" / "tune_pruning.py"), "--config", str(config), "--trials", "4",
                    "--epochs", "2", "--startup", "1", "--output-dir", str(tmp_path / "studies"), "--quiet", "--json", str(out)],
                   cwd=repo, check=True, timeout=600, capture_output=True, text=True, env={**os.environ, "HJEPA_THREADS": "1"})
    result = json.loads(out.read_text())
    pruned, unpruned = result["studies"]["pruned"], result["studies"]["unpruned"]
    assert pruned["complete"] + pruned["pruned"] == 4 and (unpruned["complete"], unpruned["pruned"]) == (4, 0)
    assert unpruned["cpu_min"] > 0 and pruned["cpu_min"] > 0
    assert len(result["pruned_trials"]) == pruned["pruned"]
    for row in result["pruned_trials"]:  # every stopped trial is scored to the end by the unpruned study
        assert row["epochs"] < 2 and 0.0 <= row["value_unpruned"] <= 1.0 and 1 <= row["rank_unpruned"] <= 4
    # The same parameter sets: a trial complete in both studies reaches the same value in both.
    import optuna

    def values(name):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}")
        return {t.number: (t.params, t.value, t.state.name) for t in study.get_trials()}

    first, second = values("pruned"), values("unpruned")
    for number, (params, value, state) in first.items():
        assert second[number][0] == params
        if state == "COMPLETE":
            assert second[number][1] == pytest.approx(value)
