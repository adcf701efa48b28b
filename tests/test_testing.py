"""hjepa_kit.testing: the contract check passes for every registered component and fails for broken ones."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from torch import nn

import hjepa_kit
from hjepa_kit import hookimpl
from hjepa_kit.contracts import EncoderOutput, EvalResult, Grade, LossOutput, Masks
from hjepa_kit.registry import Registry
from hjepa_kit.testing import check_component, components, hjepa_plugins, probe_masks, registry_with  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SRC = REPO / "examples" / "hjepa-example-plugin" / "src"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


# --- every registered component meets its contract --------------------------------------------

# Small parameters keep the check quick; the contract does not depend on sizes.
FAST_PARAMS = {
    ("dataset", "synthetic"): {"num_train": 16, "num_test": 8},
    ("evaluator", "linear_probe"): {"weight_decay": [1.0e-3], "max_iter": 30},
    ("evaluator", "hierarchy"): {"probe_max_iter": 30},
}
# Components that need an optional extra: checked where the extra is installed, skipped elsewhere
# (tests/plugins/test_trackers.py checks the clear error when it is missing).
NEEDS_EXTRA = {("callback", "mlflow"): "mlflow", ("callback", "wandb"): "wandb"}


def _write_cifar(folder: Path, files: dict[str, int], label_keys: dict[bytes, int], meta: str, names: dict[bytes, int]) -> None:
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for name, count in files.items():
        batch = {b"data": generator.integers(0, 256, (count, 3072), dtype=np.uint8)}
        batch.update({key: [i % classes for i in range(count)] for key, classes in label_keys.items()})
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / meta).write_bytes(pickle.dumps({key: [f"c{i}".encode() for i in range(n)] for key, n in names.items()}, protocol=2))


def _dataset_params(name: str, root: Path) -> dict | None:
    """Tiny files in the official layouts, so the file-backed datasets can be loaded."""
    if name == "cifar10":
        files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 2}
        _write_cifar(root / "cifar-10-batches-py", files, {b"labels": 10}, "batches.meta", {b"label_names": 10})
    elif name == "cifar100":
        _write_cifar(root / "cifar-100-python", {"train": 4, "test": 2}, {b"fine_labels": 100, b"coarse_labels": 20}, "meta",
                     {b"fine_label_names": 100, b"coarse_label_names": 20})
    elif name == "stl10":
        folder = root / "stl10_binary"
        folder.mkdir(parents=True)
        for split, count in (("train", 2), ("test", 2), ("unlabeled", 3)):
            np.zeros((count, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
            if split != "unlabeled":
                np.array([1, 10][:count], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    elif name == "image_folder":
        from PIL import Image

        for split in ("train", "val"):
            for cls in ("cat", "dog"):
                (root / split / cls).mkdir(parents=True)
                Image.new("RGB", (20, 12), (200, 10, 10)).save(root / split / cls / "a.png")
        return {"root": str(root), "image_size": 16}
    else:
        return None
    return {"root": str(root), "verify": False}


def _builtin_ids() -> list[tuple[str, str]]:
    return components(distribution="hjepa-kit")


@pytest.mark.parametrize(("kind", "name"), _builtin_ids(), ids=lambda v: v)
def test_every_builtin_component_meets_its_contract(kind, name, registry, tmp_path):
    if (kind, name) in NEEDS_EXTRA:
        pytest.importorskip(NEEDS_EXTRA[kind, name])
    params = FAST_PARAMS.get((kind, name))
    if kind == "dataset" and params is None:
        params = _dataset_params(name, tmp_path / name)
    built = check_component(kind, name, registry=registry, params=params)
    assert built is not None


def test_every_kind_has_a_builtin():
    kinds = {kind for kind, _ in _builtin_ids()}
    assert kinds == set(hjepa_kit.contracts.KINDS)


def test_the_example_plugin_meets_the_contracts(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    import hjepa_example_plugin

    registry = registry_with(hjepa_example_plugin)
    encoder = check_component("encoder", "tiny_convnet", registry=registry, params={"width": 16})
    assert encoder.embed_dim == 16
    check_component("masker", "random_patches", registry=registry)
    # Checked against a real encoder's sizes instead of the stand-in.
    check_component("predictor", "hierarchical", registry=registry, encoder="tiny_convnet")


# --- broken components fail, naming the component, its plugin and the problem ----------------


@attrs.frozen(kw_only=True)
class NoParams:
    """No parameters."""


class WideEncoder(nn.Module):
    """Says it is 8 wide but returns 9-wide tokens."""

    embed_dim, patch_size, grid_size, depth = 8, 8, (4, 4), 1

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 9, 8, stride=8)

    def forward(self, images, indices=None, return_blocks=()):
        tokens = self.proj(images).flatten(2).transpose(1, 2)
        if indices is not None:
            tokens = torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return EncoderOutput(tokens=tokens, blocks={b: tokens for b in return_blocks})


class IgnoresIndicesEncoder(WideEncoder):
    """Encodes every patch even when given indices."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.proj = nn.Conv2d(3, 8, 8, stride=8)

    def forward(self, images, indices=None, return_blocks=()):
        return super().forward(images, None, return_blocks)


def overlapping_masker(batch_size, generator):
    masks = probe_masks(batch_size, (8, 8), seed=int(torch.randint(0, 100, (1,), generator=generator)))
    targets = masks.targets.clone()
    targets[:, 0, 0] = masks.context[:, 0]  # a context patch is also a target
    return Masks(context=masks.context, targets=targets)


def global_rng_masker(batch_size, generator):
    return probe_masks(batch_size, (8, 8), seed=int(torch.randint(0, 1000, (1,))))


def float_masker(batch_size, generator):
    masks = probe_masks(batch_size, (8, 8))
    return Masks(context=masks.context.float(), targets=masks.targets)


class MisshapenPredictor(nn.Module):
    """Claims two levels but predicts one."""

    num_levels, level_weights, target_blocks = 2, (1.0, 0.5), ()

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 32)

    def make_targets(self, target, masks):
        B, M, T = masks.targets.shape
        index = masks.targets.flatten(1).unsqueeze(-1).expand(-1, -1, target.tokens.shape[-1])
        fine = torch.gather(target.tokens, 1, index).reshape(B, M, T, -1)
        return [fine, fine]

    def forward(self, context, masks):
        B, M, T = masks.targets.shape
        return [self.head(context.mean(1))[:, None, None].expand(B, M, T, -1)]

    def level_features(self, target):
        return {"level0": target.tokens.mean(1)}


def vector_loss(predictions, targets, context=None):
    total = sum((p - t).square().mean(dim=(1, 2, 3)) for p, t in zip(predictions, targets))
    return LossOutput(total=total, terms={})


def text_evaluator(features, default):
    return {"knn/top1": "high"}


class SilentCallback:
    """Has no hook at all."""

    def on_step(self, trainer):
        pass


class MisnamedCallback:
    @hookimpl
    def hjepa_step_end(self, trainer, step, metric):  # the spec's argument is "metrics"
        pass


class FloatImages:
    splits, image_size, num_classes = ("train",), 8, 2

    def load(self, split):
        return hjepa_kit.contracts.ImageData(images=torch.rand(4, 3, 8, 8), labels=torch.zeros(4, dtype=torch.int64))


class BrokenPlugin:
    """An in-process plugin registering one broken component of every kind."""

    @hookimpl
    def hjepa_register_encoders(self, register):
        register("wide_encoder", lambda p, ctx: WideEncoder(), params=NoParams, summary="wrong width")
        register("ignores_indices", lambda p, ctx: IgnoresIndicesEncoder(), params=NoParams, summary="all patches")

    @hookimpl
    def hjepa_register_maskers(self, register):
        register("overlapping", lambda p, ctx: overlapping_masker, params=NoParams, summary="overlaps")
        register("global_rng", lambda p, ctx: global_rng_masker, params=NoParams, summary="global RNG")
        register("float_masks", lambda p, ctx: float_masker, params=NoParams, summary="float indices")

    @hookimpl
    def hjepa_register_predictors(self, register):
        register("one_level", lambda p, ctx: MisshapenPredictor(), params=NoParams, summary="one level short")

    @hookimpl
    def hjepa_register_losses(self, register):
        register("vector_loss", lambda p, ctx: vector_loss, params=NoParams, summary="not a scalar")

    @hookimpl
    def hjepa_register_evaluators(self, register):
        register("text_figures", lambda p, ctx: text_evaluator, params=NoParams, summary="strings")

    @hookimpl
    def hjepa_register_datasets(self, register):
        register("float_images", lambda p, ctx: FloatImages(), params=NoParams, summary="floats")

    @hookimpl
    def hjepa_register_callbacks(self, register):
        register("silent", lambda p, ctx: SilentCallback(), params=NoParams, summary="no hooks")
        register("misnamed", lambda p, ctx: MisnamedCallback(), params=NoParams, summary="bad argument name")


@pytest.fixture(scope="module")
def broken_registry() -> Registry:
    return registry_with(BrokenPlugin(), entry_points=False)


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("encoder", "wide_encoder", "expected (B, N, D) = (2, 16, 8)"),
        ("encoder", "ignores_indices", "expected (B, K, D) = (2, 8, 8)"),
        ("masker", "overlapping", "context and targets overlap in sample 0"),
        ("masker", "global_rng", "draw only from the torch.Generator passed in"),
        ("masker", "float_masks", "context must be int64 (B, Nc)"),
        ("predictor", "one_level", "forward returned 1 items, expected num_levels = 2"),
        ("loss", "vector_loss", "total must be a scalar tensor, got (4,)"),
        ("evaluator", "text_figures", "figure 'knn/top1' is 'high', not a number"),
        ("dataset", "float_images", "images must be uint8 (N, C, H, W)"),
        ("callback", "silent", "it implements no lifecycle hook"),
        ("callback", "misnamed", "do not match the hook specs: hjepa_step_end(trainer, step, metric) asks for 'metric', "
                                 "which hjepa_step_end does not pass (did you mean 'metrics'?)"),
    ],
)
def test_broken_components_fail_the_check(kind, name, expected, broken_registry):
    with pytest.raises(AssertionError) as info:
        check_component(kind, name, registry=broken_registry)
    message = str(info.value)
    assert f"{kind} '{name}' from plugin BrokenPlugin" in message
    assert expected in message


def _graded_evaluator(graded: str):
    def evaluate(features, default):
        return EvalResult(metrics={"mine/top1": 0.5, "mine/rank": 3.0},
                          grades={graded: Grade(label="my accuracy", thresholds=(0.2, 0.4, 0.6), percent=True)})

    return evaluate


class GradingPlugin:
    @hookimpl
    def hjepa_register_evaluators(self, register):
        register("graded", lambda p, ctx: _graded_evaluator("mine/top1"), params=NoParams, summary="grades its accuracy")
        register("stray_grade", lambda p, ctx: _graded_evaluator("mine/top5"), params=NoParams, summary="grades a missing figure")


def test_an_evaluator_grades_only_figures_it_returns():
    assert hjepa_kit.Grade is Grade and "Grade" in hjepa_kit.__all__
    registry = registry_with(GradingPlugin(), entry_points=False)
    assert callable(check_component("evaluator", "graded", registry=registry))
    with pytest.raises(AssertionError) as info:
        check_component("evaluator", "stray_grade", registry=registry)
    message = str(info.value)
    assert "evaluator 'stray_grade' from plugin GradingPlugin" in message
    assert "grades names figure 'mine/top5', which it does not return (its figures: mine/rank, mine/top1)" in message


def test_unknown_name_and_bad_params_are_assertion_errors(registry):
    with pytest.raises(AssertionError, match="no masker named 'multiblok' is registered; registered maskers: .*multiblock"):
        check_component("masker", "multiblok", registry=registry)
    with pytest.raises(AssertionError, match=r"params.num_targets: expected an integer, got 2.5"):
        check_component("masker", "multiblock", registry=registry, params={"num_targets": 2.5})


# --- plugins registered for one test -----------------------------------------------------------


class LabPlugin:
    @hookimpl
    def hjepa_register_maskers(self, register):
        register("lab_patches", lambda p, ctx: overlapping_masker, params=NoParams, summary="A lab's masker")


def test_hjepa_plugins_fixture_makes_a_plugin_visible_to_the_command_line(hjepa_plugins, capsys):
    from hjepa_kit.cli import main

    hjepa_plugins.add(LabPlugin(), name="lab", distribution="lab-plugins", version="2.0")
    assert main(["plugins", "--kind", "masker"]) == 0
    out = capsys.readouterr().out
    assert "lab_patches" in out and "lab (lab-plugins 2.0)" in out and "multiblock" in out
    registry = hjepa_plugins.registry()
    assert registry.components["masker"]["lab_patches"].distribution == "lab-plugins"


def test_the_fixture_is_undone_after_its_test():
    assert "lab_patches" not in Registry().components["masker"]


def test_registry_with_does_not_add_an_installed_plugin_twice(registry):
    vit = sys.modules["hjepa_kit.plugins.vit"]  # loaded by the entry points
    again = registry_with(vit)
    assert again.components["encoder"]["vit_tiny"].plugin == "vit"


# --- importing the helpers ---------------------------------------------------------------------


def test_importing_the_helpers_does_not_import_pytest():
    """pytest is a test extra: only the hjepa_plugins fixture needs it, loaded when asked for."""
    code = "import hjepa_kit.testing, sys; assert 'pytest' not in sys.modules, 'hjepa_kit.testing imported pytest'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_pytest_plugins_in_a_conftest_provides_the_fixture(tmp_path):
    """The route docs/writing-a-plugin.md shows: ``pytest_plugins = ["hjepa_kit.testing"]`` in conftest.py."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["hjepa_kit.testing"]\n')
    (tmp_path / "test_uses_the_fixture.py").write_text(textwrap.dedent("""
        from hjepa_kit.testing import PluginSandbox

        def test_it(hjepa_plugins):
            assert isinstance(hjepa_plugins, PluginSandbox) and hjepa_plugins.plugins == []
    """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
