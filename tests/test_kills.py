"""The kill benchmark's core (``benchmarks/kills.py``) at N=2: SIGKILLs at random moments, then ``--resume auto``.

The benchmark kills ViT-Tiny runs (88 MB checkpoints); here the same trials run on a small
stand-in encoder (``hjepa_kit.testing``'s probe encoder, served as an installed plugin), so that
two kills, one kill inside a checkpoint write and their resumes take a few seconds. The DDP kills
of the benchmark rest on one mechanism tested here alone: a rank is sent SIGTERM when its
launcher dies.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

import attrs
import pytest
import torch

from hjepa_kit import hookimpl
from hjepa_kit.testing import PluginSandbox, probe_encoder

REPO = Path(__file__).resolve().parents[1]


@attrs.frozen(kw_only=True)
class _NoParams:
    pass


class ProbeEncoderPlugin:
    """Serves the stand-in encoder (width 32, depth 2, 4-px patches) as encoder ``kill_probe``."""

    @hookimpl
    def hjepa_register_encoders(self, register):
        register("kill_probe", lambda params, ctx: probe_encoder(image_size=ctx.image_size), params=_NoParams,
                 summary="the contract checks' stand-in encoder (tests)")


@pytest.mark.slow
def test_kills_at_random_moments_and_in_a_checkpoint_write_resume_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import kills

    PluginSandbox(monkeypatch).add(ProbeEncoderPlugin(), "kill_probe")
    lines: list[str] = []
    result = kills.single_trials(tmp_path, 2, seed=0, epochs=2, images=32, writes=1,
                                 encoder={"name": "kill_probe"}, report=lines.append)
    report = "\n".join(lines)
    trials = result["single"] + result["write"]
    assert len(result["single"]) == 2 and len(result["write"]) == 1, report
    for trial in trials:
        assert trial["killed"] and trial["problems"] == [], report
        assert trial["resume_status"] == 0 and trial["resumed_from"], report
    assert 0 < result["single"][0]["moment_s"] <= result["baseline_s"]
    assert "resumed from" in lines[-1] and lines[-1].endswith(": OK"), report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_rank_is_sent_sigterm_when_its_launcher_dies(monkeypatch):
    """A SIGKILLed torchrun cannot stop its ranks: the kernel tells them (PR_SET_PDEATHSIG), and they stop as on SIGTERM."""
    from hjepa_kit.training import distributed

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # what torchrun sets in its ranks
    report_read, report_write = os.pipe()
    ready_read, ready_write = os.pipe()
    launcher = os.fork()
    if launcher == 0:  # the launcher: starts a rank, waits until it runs, then dies
        if os.fork() == 0:  # the rank
            signal.signal(signal.SIGTERM, lambda *_: (os.write(report_write, b"SIGTERM"), os._exit(0)))
            distributed._LAUNCHER = os.getppid()  # as at the import of a rank torchrun started
            distributed.stop_with_the_launcher()
            os.write(ready_write, b"x")
            time.sleep(20)
            os.write(report_write, b"still running")
            os._exit(1)
        os.read(ready_read, 1)
        os._exit(0)
    os.waitpid(launcher, 0)
    os.close(report_write)
    readable, _, _ = select.select([report_read], [], [], 20)
    assert readable and os.read(report_read, 100) == b"SIGTERM"


@pytest.mark.parametrize("stop_at", [2, 4])  # the last step of epoch 1, of the run
def test_a_run_stopped_after_the_last_step_of_an_epoch_resumes_to_the_same_weights(stop_at, tmp_path, monkeypatch):
    """SIGTERM (or the launcher's death) after an epoch's last step, before its end: the resumed run must not repeat the epoch."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import kills

    import hjepa_kit
    from hjepa_kit.training.checkpoint import load_checkpoint

    PluginSandbox(monkeypatch).add(ProbeEncoderPlugin(), "kill_probe")

    class Terminate:
        @hookimpl
        def hjepa_step_end(self, trainer, step, metrics):
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

    def config(root):
        return kills.run_config(root, epochs=2, images=32, encoder={"name": "kill_probe"})  # 2 steps an epoch

    whole = hjepa_kit.train(config(tmp_path / "whole"), console=False)
    stopped = hjepa_kit.train(config(tmp_path / "stopped"), plugins=[Terminate()], console=False)
    assert stopped.status == "interrupted" and load_checkpoint(stopped.checkpoints["interrupted"])["batch_in_epoch"] == 2
    resumed = hjepa_kit.train(config(tmp_path / "stopped"), resume="auto", console=False)
    assert (resumed.status, resumed.steps, resumed.epochs) == ("completed", 4, 2)
    expected, final = (load_checkpoint(r.checkpoints["final"])["model"] for r in (whole, resumed))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
