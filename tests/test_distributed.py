"""Distributed data-parallel training: 2 gloo processes on the CPU under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import tiny_config
from hjepa_kit.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable")


def torchrun(nproc: int, config_path, *args: str):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "hjepa_kit.cli", "train", "--config", str(config_path), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    config = tiny_config(root, training={"epochs": 2, "threads": 1, "ddp_check_every_steps": 1})
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = torchrun(2, path)
    return root, path, config, result


def test_two_processes_keep_identical_parameters_and_write_one_set_of_outputs(two_process_run):
    root, _, config, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    log = (root / "results" / "logs" / "tiny" / "training.log").read_text()
    # 96 images / (16 per batch x 2 processes) = 3 steps per epoch
    for step in range(1, 7):
        assert f"step {step}: parameters identical on 2 ranks" in log
    assert log.count("status: completed") == 1  # rank 1 writes nothing
    assert result.stdout.count("run completed") == 1
    state = load_checkpoint(root / "results" / "checkpoints" / "tiny" / "final.pth")
    assert state["step"] == 6 and state["world_size"] == 2
    assert len(list((root / "results" / "logs" / "tiny").glob("events.out.tfevents.*"))) == 1


def test_resume_a_two_process_run_with_one_process(two_process_run, tmp_path):
    root, path, config, result = two_process_run
    assert result.returncode == 0
    latest = root / "results" / "checkpoints" / "tiny" / "checkpoint_epoch_1.pth"
    more = dict(config, output_dir=str(tmp_path / "one"), training=dict(config["training"], epochs=3))
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(more))
    proc = subprocess.run([sys.executable, "-m", "hjepa_kit.cli", "train", "--config", str(one), "--resume", str(latest)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 3 two-process steps are 6 one-process steps (the same images); epochs 2 and 3 add 6 each
    state = load_checkpoint(tmp_path / "one" / "checkpoints" / "tiny" / "final.pth")
    assert state["step"] == 6 + 12 and state["epoch"] == 3 and state["world_size"] == 1
    assert "resuming a 2-process checkpoint with 1 processes: step rescaled to 6" in proc.stderr


def _accumulating_config(tmp_path, **training):
    # 256 images in micro-batches of 8, 4 per optimizer step: 8 steps an epoch on 1 process, 4 on 2
    return tiny_config(tmp_path, data={"dataset": {"name": "synthetic", "params": {"num_train": 256, "num_test": 48, "image_size": 16}},
                                       "batch_size": 8},
                       training={"epochs": 1, "threads": 1, "accumulation_steps": 4, "ddp_check_every_steps": 1, **training},
                       callbacks=[])


def test_resume_mid_epoch_with_accumulation_one_to_two_processes_keeps_the_ranks_identical(tmp_path):
    config = _accumulating_config(tmp_path, max_steps=3)  # stops at micro-batch 12 of 32
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    first = subprocess.run([sys.executable, "-m", "hjepa_kit.cli", "train", "--config", str(path)],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    del config["training"]["max_steps"]
    path.write_text(yaml.safe_dump(config))
    second = torchrun(2, path, "--resume", "auto")
    assert second.returncode == 0, second.stderr[-3000:]
    # 12 micro-batches of 1 process are 6 of 2, rounded down to the step boundary 4: the stated rule
    assert "the epoch resumes at micro-batch 4, an optimizer-step boundary" in second.stderr
    log = (tmp_path / "results" / "logs" / "tiny" / "training.log").read_text()
    state = load_checkpoint(tmp_path / "results" / "checkpoints" / "tiny" / "final.pth")
    # step 3 * 1 // 2 = 1, then micro-batches 4..15 of 16 make 3 more steps
    assert state["step"] == 4 and state["epoch"] == 1 and state["world_size"] == 2
    for step in (2, 3, 4):
        assert f"step {step}: parameters identical on 2 ranks" in log


def test_resume_mid_epoch_with_accumulation_two_to_one_process(tmp_path):
    config = _accumulating_config(tmp_path, max_steps=3)  # stops at micro-batch 12 of 16 per process
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    first = torchrun(2, path)
    assert first.returncode == 0, first.stderr[-3000:]
    log = (tmp_path / "results" / "logs" / "tiny" / "training.log").read_text()
    for step in (1, 2, 3):
        assert f"step {step}: parameters identical on 2 ranks" in log
    del config["training"]["max_steps"]
    path.write_text(yaml.safe_dump(config))
    second = subprocess.run([sys.executable, "-m", "hjepa_kit.cli", "train", "--config", str(path), "--resume", "auto"],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    state = load_checkpoint(tmp_path / "results" / "checkpoints" / "tiny" / "final.pth")
    # 3 two-process steps are 6 one-process steps, at micro-batch 24 of 32: 2 more steps end the epoch
    assert state["step"] == 8 and state["epoch"] == 1 and state["world_size"] == 1


def test_a_rescaled_position_falls_on_an_optimizer_step_boundary():
    from hjepa_kit.training.distributed import rescale_position

    assert rescale_position(3, 12, 1, 2, accumulation=4) == (1, 4)  # 6 micro-batches of 2 processes -> 4
    assert rescale_position(3, 12, 2, 1, accumulation=4) == (6, 24)  # already a boundary
    assert rescale_position(5, 20, 1, 1, accumulation=4) == (5, 20)
    assert rescale_position(4, 8, 1, 2, accumulation=4) == (2, 4)
