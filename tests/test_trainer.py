"""The training loop: outputs, schedules, EMA, resume, lifecycle hooks, failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import torch
import yaml

import hjepa_kit
from hjepa_kit import hookimpl
from hjepa_kit.training.checkpoint import load_checkpoint
from hjepa_kit.contracts import LossOutput
from hjepa_kit.errors import CheckpointError, TrainingStopped, UserError
from hjepa_kit.model import HJEPA
from hjepa_kit.params import param


def records(result):
    path = result.log_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_learns_and_writes_the_plans_outputs(tiny):
    config = tiny(training={"epochs": 3, "threads": 1})
    result = hjepa_kit.train(config, console=False)
    assert result.status == "completed"
    assert result.steps == 18 and result.epochs == 3
    steps = records(result)
    assert steps[-1]["loss"] < steps[0]["loss"] * 0.9  # the loss falls
    assert {"loss/level0", "loss/level1", "lr", "momentum", "images_per_s"} <= set(steps[0])
    log = (result.log_dir / "training.log").read_text()
    assert "epoch 3/3 step 18/18 loss" in log and "level0" in log and "img/s ETA" in log
    assert "status: completed" in log
    resolved = yaml.safe_load((result.log_dir / "config.yaml").read_text())
    assert resolved["model"]["masker"]["params"]["num_targets"] == 4  # defaults written out
    names = {p.name for p in result.checkpoint_dir.iterdir()}
    assert {"latest.pth", "best_model.pth", "final.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_3.pth"} <= names
    assert list(result.log_dir.glob("events.out.tfevents.*"))
    state = load_checkpoint(result.checkpoints["best_model"])
    assert state["best"]["metric"].startswith("online/knn")
    assert state["config"]["name"] == "tiny"
    assert any(k.startswith("online/knn/top1") for k in result.metrics)


def test_feature_health_is_logged(tiny):
    result = hjepa_kit.train(tiny(training={"epochs": 1}), console=False)
    stats = [r for r in records(result) if "features/std" in r]
    assert stats and stats[0]["features/std"] > 0 and stats[0]["features/effective_rank"] > 1


def test_ema_moves_once_per_optimizer_step_not_per_micro_batch(tiny, monkeypatch):
    calls = []
    original = HJEPA.update_target

    def counting(self, momentum):
        calls.append(momentum)
        return original(self, momentum)

    monkeypatch.setattr(HJEPA, "update_target", counting)
    result = hjepa_kit.train(tiny(training={"epochs": 1, "accumulation_steps": 2}), console=False)
    assert result.steps == 3  # 6 micro-batches / 2
    assert len(calls) == 3
    assert calls == sorted(calls) and calls[0] == pytest.approx(0.996)


def test_lr_warmup_then_cosine_in_the_log(tiny):
    result = hjepa_kit.train(tiny(training={"epochs": 2, "warmup_epochs": 1.0}, logging={"interval_steps": 1}), console=False)
    lrs = [r["lr"] for r in records(result)]
    peak = max(lrs)
    assert lrs.index(peak) == 5  # warmup ends after one epoch of 6 steps
    assert all(a <= b for a, b in zip(lrs[:6], lrs[1:6]))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))


def test_resume_continues_exactly(tiny, tmp_path):
    full = hjepa_kit.train(tiny(training={"epochs": 2}), console=False)
    first = hjepa_kit.train(tiny(name="half", training={"epochs": 2, "max_steps": 6}), console=False)
    assert first.status == "stopped" and first.steps == 6
    resumed = hjepa_kit.train(tiny(name="half", training={"epochs": 2}), resume=first.checkpoints["latest"], console=False)
    assert resumed.status == "completed" and resumed.steps == 12
    a = load_checkpoint(full.checkpoints["final"])["model"]
    b = load_checkpoint(resumed.checkpoints["final"])["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses_full = [r["loss"] for r in records(full) if r["step"] > 6]
    losses_resumed = [r["loss"] for r in records(resumed) if r["step"] > 6]
    assert losses_full == losses_resumed


def test_resume_auto_without_checkpoint_starts_fresh(tiny):
    result = hjepa_kit.train(tiny(training={"epochs": 1}), resume="auto", console=False)
    assert result.status == "completed" and result.steps == 6


def test_lifecycle_hooks_in_order_for_an_in_process_plugin(tiny):
    events = []

    class Recorder:
        @hookimpl
        def hjepa_fit_start(self, trainer):
            events.append(("fit_start", trainer.total_steps))

        @hookimpl
        def hjepa_step_end(self, trainer, step, metrics):
            events.append(("step", step))

        @hookimpl
        def hjepa_epoch_end(self, trainer, epoch, metrics):
            events.append(("epoch", epoch))

        @hookimpl
        def hjepa_checkpoint_saved(self, trainer, path, reason):
            events.append(("checkpoint", reason))

        @hookimpl
        def hjepa_evaluation_end(self, trainer, results):
            events.append(("evaluation", bool(results)))

        @hookimpl
        def hjepa_fit_end(self, trainer, status):
            events.append(("fit_end", status))

    hjepa_kit.train(tiny(training={"epochs": 1}), plugins=[Recorder()], console=False)
    assert events[0] == ("fit_start", 6)
    assert [e for e in events if e[0] == "step"] == [("step", i) for i in range(1, 7)]
    kinds = [e[0] for e in events]
    assert kinds.index("evaluation") < kinds.index("epoch")
    assert ("checkpoint", "latest") in events and ("checkpoint", "final") in events
    assert events[-1] == ("fit_end", "completed")


@attrs.frozen(kw_only=True)
class NanParams:
    after: int = param(3, help="Calls before the loss turns NaN.", ge=0)


class NanAfter:
    """A loss that turns NaN after a number of calls (to test the non-finite guard)."""

    def __init__(self, params, ctx):
        self.after = params.after
        self.calls = 0

    def __call__(self, predictions, targets, context=None):
        self.calls += 1
        total = sum(((p - t) ** 2).mean() for p, t in zip(predictions, targets))
        if self.calls > self.after:
            total = total * float("nan")
        return LossOutput(total=total, terms={"level0": total.detach()})


class NanPlugin:
    @hookimpl
    def hjepa_register_losses(self, register):
        register("nan_after", NanAfter, params=NanParams, summary="NaN after N calls")


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny):
    config = tiny(loss={"name": "nan_after", "params": {"after": 9}}, training={"epochs": 2})
    with pytest.raises(TrainingStopped) as info:
        hjepa_kit.train(config, plugins=[NanPlugin()], console=False)
    message = str(info.value)
    assert "epoch 2, step 8: the loss is nan" in message  # two calls go to the memory estimate (1 and 2 images)
    assert "training.lr" in message and "ema_momentum" in message
    assert "loss.params" not in message  # this loss declares no remedies: the core names none of a plugin's parameters
    kept = message.split("the last good checkpoint is ")[1].split(". Try")[0]
    assert kept.endswith("latest.pth") and load_checkpoint(kept)["step"] == 6
    text = (Path(config["output_dir"]) / "logs" / "tiny" / "training.log").read_text()
    assert "status: failed" in text


@attrs.frozen(kw_only=True)
class NoParams:
    pass


def squared_error(predictions, targets) -> LossOutput:
    """The test losses' value: the levels' mean squared errors, summed."""
    total = sum(((p - t) ** 2).mean() for p, t in zip(predictions, targets))
    return LossOutput(total=total, terms={"level0": total.detach()})


class PositionsLoss:
    """A loss that declares ``uses_context_indices`` and records the positions each call receives."""

    uses_context_indices = True
    seen: list = []

    def __init__(self, params, ctx):
        self.grid = ctx.grid_size

    def __call__(self, predictions, targets, context=None, *, context_indices):
        PositionsLoss.seen.append((tuple(context.shape), context_indices.clone(), self.grid))
        return squared_error(predictions, targets)


class PositionsPlugin:
    @hookimpl
    def hjepa_register_losses(self, register):
        register("positions", PositionsLoss, params=NoParams, summary="records the context positions")


def test_a_loss_that_asks_for_the_context_positions_gets_the_steps_masks(tiny):
    PositionsLoss.seen.clear()
    hjepa_kit.train(tiny(loss={"name": "positions"}, training={"epochs": 1}), plugins=[PositionsPlugin()], console=False)
    # The memory estimate's two calls (1 and 2 images), then the 6 steps of 16 images.
    assert [shape[0] for shape, _, _ in PositionsLoss.seen] == [1, 2] + [16] * 6
    for shape, indices, grid in PositionsLoss.seen:
        assert indices.shape == shape[:2] and indices.dtype == torch.long
        assert grid == (4, 4) and int(indices.min()) >= 0 and int(indices.max()) < 16
        assert all(len(set(row.tolist())) == len(row) for row in indices)  # distinct patches per image


class SteppedLoss:
    """A loss with ``set_step``: records the step the core hands it before each of its calls."""

    steps: list = []

    def __init__(self, params, ctx):
        self.step = None

    def set_step(self, step):
        self.step = step

    def __call__(self, predictions, targets, context=None):
        SteppedLoss.steps.append(self.step)
        return squared_error(predictions, targets)


class SteppedPlugin:
    @hookimpl
    def hjepa_register_losses(self, register):
        register("stepped", SteppedLoss, params=NoParams, summary="records the steps set_step receives")


def test_a_loss_with_set_step_follows_the_optimizer_step_and_continues_it_on_resume(tiny):
    SteppedLoss.steps.clear()
    config = tiny(loss={"name": "stepped"}, training={"epochs": 2})
    hjepa_kit.train(config, plugins=[SteppedPlugin()], console=False)
    # The memory estimate's two calls pass no step; then steps 0-11 (two epochs of 6), each before its update.
    assert SteppedLoss.steps == [None, None, *range(12)]
    SteppedLoss.steps.clear()
    first_epoch = Path(config["output_dir"]) / "checkpoints" / "tiny" / "checkpoint_epoch_1.pth"
    hjepa_kit.train(config, plugins=[SteppedPlugin()], console=False, resume=first_epoch)
    assert [s for s in SteppedLoss.steps if s is not None] == list(range(6, 12))


def test_memory_guard_refuses_with_the_plans_fallback(tiny):
    config = tiny(training={"epochs": 1, "memory_budget_gb": 0.1})
    with pytest.raises(TrainingStopped) as info:
        hjepa_kit.train(config, console=False)
    message = str(info.value)
    assert "exceeds training.memory_budget_gb=0.1" in message
    assert "--set data.batch_size=8 --set training.accumulation_steps=2" in message


def test_unwritable_output_folder_is_a_clear_error(tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot be written"):
        hjepa_kit.train(tiny(output_dir=str(blocker / "results")), console=False)


def test_resuming_with_another_model_is_refused(tiny):
    first = hjepa_kit.train(tiny(training={"epochs": 1}), console=False)
    other = tiny(name="other", model={"encoder": {"name": "vit_tiny", "params": {"patch_size": 4}}, "masker": {"name": "multiblock"},
                                      "predictor": {"name": "hierarchical", "params": {"depth": 2}}})
    with pytest.raises(CheckpointError, match="does not match this configuration's model"):
        hjepa_kit.train(other, resume=first.checkpoints["latest"], console=False)


def test_factory_errors_name_the_plugin(tiny):
    class Broken:
        @hookimpl
        def hjepa_register_losses(self, register):
            def factory(params, ctx):
                raise ValueError("needs three levels")

            register("broken_loss", factory, params=NanParams)

    with pytest.raises(hjepa_kit.PluginError, match=r"loss 'broken_loss' from plugin Broken.*ValueError: needs three levels"):
        hjepa_kit.train(tiny(loss="broken_loss"), plugins=[Broken()], console=False)


def test_schedule_values_are_finite_over_a_run(tiny):
    result = hjepa_kit.train(tiny(training={"epochs": 1}, logging={"interval_steps": 1}), console=False)
    for record in records(result):
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))


def test_train_script_and_cli_without_config_run_the_bundled_quickstart(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--output-dir", str(tmp_path), "--set", "training.max_steps=2",
         "--set", "evaluation.online_every_epochs=0", "--set", "callbacks=[]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run stopped: 2 steps" in proc.stdout
    assert (tmp_path / "checkpoints" / "quickstart" / "final.pth").is_file()
