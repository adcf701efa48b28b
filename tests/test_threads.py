"""Thread settings: physical cores from affinity, SMT topology and cgroup quota; the env override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hjepa_kit import threads
from hjepa_kit.errors import ConfigError


def fake_sysfs(root: Path, cores: list[tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu tree: logical cpu i belongs to (package, core) cores[i]."""
    for cpu, (package, core) in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


@pytest.fixture
def four_logical_cpus(monkeypatch):
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: [0, 1, 2, 3])


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_hyperthread_siblings_count_as_one_core(tmp_path, four_logical_cpus):
    sysfs = fake_sysfs(tmp_path / "cpu", [(0, 0), (0, 0), (0, 1), (0, 1)])
    assert threads.physical_cores(sys_cpu=sysfs, cgroup=tmp_path / "none") == 2


def test_cores_on_two_packages_are_distinct(tmp_path, four_logical_cpus):
    sysfs = fake_sysfs(tmp_path / "cpu", [(0, 0), (1, 0), (0, 1), (1, 1)])
    assert threads.physical_cores(sys_cpu=sysfs, cgroup=tmp_path / "none") == 4


def test_without_topology_every_allowed_cpu_counts(tmp_path, four_logical_cpus):
    assert threads.physical_cores(sys_cpu=tmp_path / "missing", cgroup=tmp_path / "none") == 4


def test_affinity_limits_the_count(tmp_path, monkeypatch):
    sysfs = fake_sysfs(tmp_path / "cpu", [(0, 0), (0, 1), (0, 2), (0, 3)])
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: [2])
    assert threads.physical_cores(sys_cpu=sysfs, cgroup=tmp_path / "none") == 1


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", 4)])
def test_cgroup_quota_caps_the_count(tmp_path, four_logical_cpus, cpu_max, expected):
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cpu.max").write_text(cpu_max)
    assert threads.physical_cores(sys_cpu=tmp_path / "missing", cgroup=cgroup) == expected


def test_the_real_machine_has_at_least_one_core():
    assert 1 <= threads.physical_cores() <= (torch.get_num_threads() + 1024)


def test_configure_threads_sets_torch(restore_threads, monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert threads.configure_threads(None) == threads.physical_cores() == torch.get_num_threads()


def test_environment_variable_wins(restore_threads, monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "1")
    assert threads.configure_threads(2) == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["zero", "0", "-2", "1.5"])
def test_bad_environment_variable_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv(threads.ENV_VAR, value)
    with pytest.raises(ConfigError, match=threads.ENV_VAR):
        threads.configure_threads(None)


CPU_VARS = ("OMP_WAIT_POLICY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def _environment_after(code: str, env: dict[str, str]) -> dict[str, str]:
    """The CPU variables as ``code`` leaves them, run in a fresh interpreter with ``env``."""
    code += "\nimport json, os; print(json.dumps({k: os.environ.get(k) for k in %r}))" % (CPU_VARS,)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _without_cpu_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CPU_VARS}


def test_importing_the_library_changes_no_environment_variable():
    code = "import os; before = dict(os.environ); import hjepa_kit, hjepa_kit.api, hjepa_kit.training.trainer; assert dict(os.environ) == before"
    assert _environment_after(code, _without_cpu_vars()) == {k: None for k in CPU_VARS}


def test_the_cli_sets_passive_waiting_and_a_small_onednn_cache_before_torch_loads():
    code = ("import sys; from hjepa_kit.cli import main; assert 'torch' not in sys.modules\n"
            "import os; main(['plugins']); assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'")
    assert _environment_after(code, _without_cpu_vars()) == {"OMP_WAIT_POLICY": "PASSIVE", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


def test_the_users_values_win_over_the_cli_and_trainer_defaults():
    mine = {**_without_cpu_vars(), "OMP_WAIT_POLICY": "ACTIVE", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
    code = "from hjepa_kit.cli import main; main(['plugins'])"
    assert _environment_after(code, mine) == {"OMP_WAIT_POLICY": "ACTIVE", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}


def test_a_trainer_applies_the_defaults_when_a_run_is_set_up(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import tiny_config
from hjepa_kit.training.trainer import Trainer
Trainer(tiny_config(__import__("pathlib").Path({str(tmp_path)!r})), console=False)
"""
    assert _environment_after(code, _without_cpu_vars()) == {"OMP_WAIT_POLICY": "PASSIVE", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}
