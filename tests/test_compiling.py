"""``evaluation.compile``: the compiled feature extractor gives the eager features, and falls back cleanly."""

from __future__ import annotations

import warnings

import pytest
import torch

import hjepa_kit
from conftest import tiny_config
from hjepa_kit import runtime
from hjepa_kit.build import build_model
from hjepa_kit.evaluation.compiled import FeatureFunction
from hjepa_kit.runtime import should_compile
from hjepa_kit.contracts import BuildContext
from hjepa_kit.registry import Registry

needs_compiler = pytest.mark.skipif(runtime.cpp_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    config = hjepa_kit.load_config(tiny_config(tmp_path_factory.mktemp("compile"), model={
        "encoder": {"name": "vit_tiny", "params": {"patch_size": 4}},
        "masker": {"name": "multiblock"},
        "predictor": {"name": "hierarchical", "params": {"depth": 1}},
    }))
    resolved = Registry().resolve(config)
    ctx = BuildContext(image_size=16, in_chans=3, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(resolved, ctx).model.eval()
    return model, ctx


def test_auto_compiles_only_large_cpu_work_and_off_never():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert should_compile(False, cpu, large_enough=True, key="k") is False
    assert should_compile("auto", cpu, large_enough=False, key="k") is False
    assert should_compile("auto", cuda, large_enough=True, key="k") is False
    assert should_compile(True, cuda, large_enough=False, key="k") is True
    if runtime.cpp_compiler() is not None:
        assert should_compile("auto", cpu, large_enough=True, key="k") is True


def test_on_without_a_cpp_compiler_warns_and_runs_uncompiled(monkeypatch):
    monkeypatch.setattr(runtime, "cpp_compiler", lambda: None)
    with pytest.warns(UserWarning, match=r"evaluation\.compile: true, but no C\+\+ compiler"):
        assert should_compile(True, torch.device("cpu"), large_enough=True, key="evaluation.compile") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert should_compile("auto", torch.device("cpu"), large_enough=True, key="evaluation.compile") is False


@needs_compiler
def test_compiled_features_equal_eager_features_for_any_batch_size(tiny_model):
    model, ctx = tiny_model
    features = FeatureFunction(model, compile=True, tokens_per_image=16)
    features.slice_images = 8  # batches of 5, 8 and 19 images: padded, exact and several slices
    torch.manual_seed(1)
    with torch.no_grad():
        for count in (5, 8, 19):
            images = torch.randn(count, 3, 16, 16)
            expected = model.features(images)
            got = features(images)
            assert features.compiled, "compiling fell back to eager"
            assert set(got) == set(expected) == {"encoder", "level0", "level1"}
            for name in expected:
                assert got[name].shape == expected[name].shape
                torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_a_failing_compile_warns_once_and_gives_the_eager_features(tiny_model, monkeypatch):
    model, _ = tiny_model

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("backend exploded\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    features = FeatureFunction(model, compile=True, tokens_per_image=16)
    features.slice_images = 4  # the first batch spans two slices: one warning all the same
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        with pytest.warns(UserWarning, match=r"compiling the feature extractor failed \(RuntimeError: backend exploded\)") as caught:
            first = features(images)
        assert len([w for w in caught if "compiling the feature extractor" in str(w.message)]) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = features(images)
        expected = model.features(images)
    assert not features.compiled
    for name in expected:
        torch.testing.assert_close(first[name], expected[name])
        torch.testing.assert_close(second[name], expected[name])


@needs_compiler
def test_training_compiled_follows_the_eager_run_and_saves_the_same_checkpoint(tmp_path):
    # fp32 so that compiled and eager kernels agree closely; one epoch of 6 steps, then the online evaluation.
    def run(mode: bool):
        config = tiny_config(tmp_path / str(mode), training={"epochs": 1, "precision": "fp32", "compile": mode},
                             callbacks=[])
        return hjepa_kit.train(config, console=False)

    eager_run, compiled_run = run(False), run(True)
    losses = [r.metrics["loss"] for r in (eager_run, compiled_run)]
    assert abs(losses[0] - losses[1]) <= 1e-3 * abs(losses[0]), losses
    a = torch.load(eager_run.checkpoints["final"], weights_only=True)["model"]
    b = torch.load(compiled_run.checkpoints["final"], weights_only=True)["model"]
    assert list(a) == list(b)  # Module.compile keeps the parameter names
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)
    assert "online/knn/top1@20" in compiled_run.metrics
    log = (tmp_path / "True" / "results" / "logs" / "tiny" / "training.log").read_text()
    assert "compiled: the first steps compile" in log


@needs_compiler
def test_a_compiled_run_resumes_an_eager_checkpoint_and_finishes(tmp_path):
    # Checkpoints do not record whether a run was compiled: an eager run's latest.pth resumes under
    # training.compile=true, extended by an epoch (step 6 of 12), and the result loads into an eager model.
    first = hjepa_kit.train(tiny_config(tmp_path, training={"epochs": 1, "precision": "fp32"}, callbacks=[]), console=False)
    config = tiny_config(tmp_path, training={"epochs": 2, "precision": "fp32", "compile": True}, callbacks=[])
    resumed = hjepa_kit.train(config, resume=first.checkpoints["latest"], extend_epochs=1, console=False)
    assert resumed.status == "completed" and resumed.steps == 12
    state = torch.load(resumed.checkpoints["final"], weights_only=True)
    eager = hjepa_kit.load_config(tiny_config(tmp_path / "eager", training={"epochs": 2}))
    model = build_model(Registry().resolve(eager), BuildContext(image_size=16, in_chans=3, device=torch.device("cpu"))).model
    model.load_state_dict(state["model"])  # strict: the same names
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_static_shapes_compile_the_context_side_without_dynamic_graphs():
    """A masker that declares static shapes gets the context encoder and predictor compiled for them alone."""
    from types import SimpleNamespace

    from hjepa_kit.training.compiling import compile_for_training

    calls = {}

    def recorder(name):
        return lambda **kwargs: calls.__setitem__(name, kwargs)

    def model():
        return SimpleNamespace(target_encoder=SimpleNamespace(compile=recorder("target")),
                               context_encoder=SimpleNamespace(compile=recorder("context")),
                               predictor=SimpleNamespace(compile=recorder("predictor")))

    compile_for_training(model())
    assert calls == {"target": {}, "context": {"dynamic": True}, "predictor": {"dynamic": True}}
    compile_for_training(model(), static_shapes=True)
    assert calls == {"target": {}, "context": {"dynamic": False}, "predictor": {"dynamic": False}}
