"""Shared fixtures: tiny run configurations, a trained tiny checkpoint and third-party plugin packages installed for a test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "examples" / "hjepa-example-plugin"


#: Where the tiny runs train: ``cpu`` unless ``HJEPA_TEST_DEVICE`` says otherwise (``cuda``, ``auto``),
#: so the same tests exercise the CUDA path on a machine with a GPU.
TEST_DEVICE = os.environ.get("HJEPA_TEST_DEVICE", "cpu")


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A run that trains in seconds: 16x16 synthetic images, 4x4 patches, a small batch."""
    config = {
        "name": "tiny",
        "output_dir": str(tmp_path / "results"),
        "device": TEST_DEVICE,
        "seed": 0,
        "data": {
            "dataset": {"name": "synthetic", "params": {"num_train": 96, "num_test": 48, "image_size": 16}},
            "batch_size": 16,
            "eval_batch_size": 64,
        },
        "model": {
            "encoder": {"name": "vit_tiny", "params": {"patch_size": 4}},
            "masker": {"name": "multiblock"},
            "predictor": {"name": "hierarchical", "params": {"depth": 1}},
        },
        "training": {"epochs": 2, "warmup_epochs": 0.5, "lr": 1.0e-3, "threads": 1},
        "checkpoint": {"every_epochs": 1},
        "logging": {"interval_steps": 2, "feature_stats_every_steps": 2},
        "evaluation": {"online_train_samples": 96, "online_test_samples": 48},
        "callbacks": [{"name": "tensorboard"}],
    }
    return merge_sections(config, **sections)


def merge_sections(config: dict, **sections) -> dict:
    """Override sections of ``config`` in place; returns it.

    A mapping is merged one level deep into the section of that name (``training={"epochs": 1}``
    keeps the other training keys); anything else replaces the section.
    """
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def tiny(tmp_path):
    """Build a tiny run configuration mapping: ``tiny(training={"epochs": 1})``."""
    return lambda **sections: tiny_config(tmp_path, **sections)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The final checkpoint of a one-epoch tiny run, trained once for all the tests that read one.

    16 px synthetic images (48 labelled test images), ViT-Tiny with 4 px patches, 2 hierarchy levels.
    """
    import hjepa_kit

    root = tmp_path_factory.mktemp("tinyrun")
    return hjepa_kit.train(tiny_config(root, training={"epochs": 1}), console=False).checkpoints["final"]


@pytest.fixture(scope="session")
def level0_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """The tiny run's final checkpoint as if it had evaluated ``level0`` (``evaluation.representation``), as the quickstart does."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["config"]["evaluation"]["representation"] = "level0"
    path = tmp_path_factory.mktemp("level0run") / "final.pth"
    torch.save(state, path)
    return path


def pip_install_target(target: Path, *packages: Path) -> None:
    """Install local packages into ``target`` (no network, no dependencies)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), *map(str, packages)],
        check=True,
    )


def make_package(root: Path, dist: str, module: str, source: str) -> Path:
    """Write a one-module distribution declaring an ``hjepa_kit`` entry point."""
    folder = root / dist
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(textwrap.dedent(source))
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.2.3"
        [project.entry-points.hjepa_kit]
        {module} = "{module}"
        [tool.setuptools]
        packages = ["{module}"]
    """))
    return folder


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """A folder where the example plugin and two test plugins (one broken) are pip-installed."""
    root = tmp_path_factory.mktemp("plugins")
    good = make_package(root, "lab-masker", "lab_masker", """
        import attrs
        from hjepa_kit import hookimpl
        from hjepa_kit.params import param

        @attrs.frozen(kw_only=True)
        class Params:
            ratio: float = param(0.5, help="A ratio.", gt=0.0, lt=1.0)

        @hookimpl
        def hjepa_register_maskers(register):
            register("lab_masker", lambda params, ctx: None, params=Params, summary="A lab's masker")
    """)
    broken = make_package(root, "broken-plugin", "broken_plugin", """
        import a_module_that_does_not_exist
    """)
    site = root / "site"
    pip_install_target(site, EXAMPLE_PLUGIN, good, broken)
    return site


def run_cli(*args: str, site: Path | None = None, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run ``python -m hjepa_kit.cli ARGS`` in a subprocess; returns the CompletedProcess."""
    environ = dict(os.environ)
    environ.pop("HJEPA_STRICT_PLUGINS", None)
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), environ.get("PYTHONPATH", "")]))
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hjepa_kit.cli", *args], capture_output=True, text=True, env=environ,
        cwd=str(cwd) if cwd else None, timeout=timeout,
    )
