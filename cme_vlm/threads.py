"""How many CPU threads torch uses: the cores this process may actually run on, or ``OMP_NUM_THREADS``.

OpenMP's default counts the machine's cores, not the ones a container's CPU quota or a job
scheduler's CPU set leaves to the process; more threads than cores, or threads competing with
other jobs on a shared machine, make a CPU step several times slower. The count is set before
torch starts (``OMP_NUM_THREADS``, which its worker processes inherit too) and said in one line.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota of the process's cgroup in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def available_cores(root: Path = CGROUP) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(root)
    return max(1, min(cores, math.floor(quota))) if quota else cores


def choose_cpu_threads(root: Path = CGROUP) -> str:
    """Set torch's CPU threads (an explicit ``OMP_NUM_THREADS`` wins) and return the line that says what and why."""
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return f"CPU threads: {explicit} (OMP_NUM_THREADS)"
    cores = available_cores(root)
    os.environ["OMP_NUM_THREADS"] = str(cores)
    if "torch" in sys.modules:  # already started: tell it directly
        sys.modules["torch"].set_num_threads(cores)
    line = f"CPU threads: {cores} (the cores this process may use; set OMP_NUM_THREADS to choose)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores:
        line += (f"; the machine is busy (load {load:.1f} on {cores} cores): on a machine shared with other jobs "
                 "OMP_NUM_THREADS=1 is often faster")
    return line
