"""Free heap pages go back to the operating system every N optimizer steps."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest
import torch

import hjepa_kit
from hjepa_kit.training import heap
from hjepa_kit.errors import ConfigError

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or heap.malloc_trim() is None, reason="malloc_trim is glibc's"
)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_trims_on_multiples_of_the_period(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "malloc_trim", lambda: calls.append)
    trimmer = heap.HeapTrimmer(3)
    done = [step for step in range(1, 10) if trimmer.after_step(step)]
    assert done == [3, 6, 9]
    assert calls == [0, 0, 0]
    assert trimmer.calls == 3 and trimmer.seconds >= 0.0


def test_zero_never_trims_and_a_negative_period_is_refused(monkeypatch):
    monkeypatch.setattr(heap, "malloc_trim", lambda: pytest.fail("looked up malloc_trim with trimming off"))
    trimmer = heap.HeapTrimmer(0)
    assert not trimmer.enabled
    assert not any(trimmer.after_step(step) for step in range(1, 20))
    with pytest.raises(ValueError, match="every_steps"):
        heap.HeapTrimmer(-1)


def test_without_malloc_trim_nothing_happens(monkeypatch):
    monkeypatch.setattr(heap, "malloc_trim", lambda: None)
    trimmer = heap.HeapTrimmer(1)
    assert not trimmer.enabled
    assert not trimmer.after_step(1)


@glibc
def test_trimming_gives_freed_pages_back():
    # 64 KB tensors sit inside the heap (below glibc's mmap threshold); the last one pins the heap's
    # top, so freeing the others leaves free pages inside it that only malloc_trim returns.
    tensors = [torch.ones(16 * 1024) for _ in range(1200)]  # 75 MB
    pinned = tensors[-1]
    del tensors
    before = rss_mb()
    heap.malloc_trim()(0)
    after = rss_mb()
    assert before - after > 40, (before, after)
    assert pinned.sum() == 16 * 1024


def test_the_trainer_trims_every_n_optimizer_steps(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "malloc_trim", lambda: calls.append)
    # 96 images in batches of 16, accumulation 2: 3 optimizer steps (6 micro-batches) per epoch.
    hjepa_kit.train(tiny(training={"epochs": 2, "accumulation_steps": 2, "release_memory_every_steps": 2}), console=False)
    assert calls == [0, 0, 0]  # steps 2, 4, 6
    calls.clear()
    hjepa_kit.train(tiny(training={"epochs": 1, "release_memory_every_steps": 0}), console=False)
    assert calls == []


def test_the_config_key_names_what_is_allowed(tiny):
    with pytest.raises(ConfigError, match="release_memory_every_steps"):
        hjepa_kit.load_config(tiny(training={"release_memory_every_steps": -2}))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="only glibc has malloc_trim")
def test_glibcs_malloc_trim_is_found():
    assert heap.malloc_trim() is not None
