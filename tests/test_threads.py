"""The CPU thread count: the cores this process may use (affinity, cgroup quota), unless OMP_NUM_THREADS says."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cme_vlm import threads


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """A 16-core machine of which the process may run on ``cores``, at load ``load``; torch's threads restored after."""
    def set_up(cores: int, load: float = 0.0) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield set_up
    if torch:
        torch.set_num_threads(before)


def _cgroup(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def test_threads_follow_the_cores_a_container_or_scheduler_leaves(machine, tmp_path: Path):
    machine(16)
    assert threads.available_cores(_cgroup(tmp_path, "200000 100000")) == 2  # docker --cpus=2
    assert threads.available_cores(_cgroup(tmp_path, "max 100000")) == 16
    assert threads.available_cores(_cgroup(tmp_path, "50000 100000")) == 1
    machine(4)  # taskset / a scheduler's CPU set
    line = threads.choose_cpu_threads(_cgroup(tmp_path, "max 100000"))
    assert os.environ["OMP_NUM_THREADS"] == "4" and line.startswith("CPU threads: 4 (the cores")


def test_an_explicit_setting_wins_and_a_busy_machine_is_said(machine, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    machine(2, load=7.9)
    line = threads.choose_cpu_threads(_cgroup(tmp_path, "max 100000"))
    assert "busy (load 7.9 on 2 cores)" in line and "OMP_NUM_THREADS=1" in line
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_cpu_threads(_cgroup(tmp_path, "max 100000")) == "CPU threads: 1 (OMP_NUM_THREADS)"
    assert os.environ["OMP_NUM_THREADS"] == "1"
