"""The two GPU scripts on the CPU with ``--tiny``: smoke first, rows kept in bench.json, ratios printed; a failed
smoke stops the run with its reason (issue 20 item 6, issue 23 item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cme_vlm.config_files import REPO_ROOT


def run_script(name: str, out: Path, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """``bash bench/NAME --tiny ARGS`` from an empty folder (no peer scripts there), output in ``out``."""
    env = {**os.environ, "OUT": str(out), "PYTHON": python, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    work = out.parent / "work"
    work.mkdir()
    return subprocess.run(["bash", str(REPO_ROOT / "bench" / name), "--tiny", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_generation_script_runs_smoke_rows_and_comparison(tmp_path):
    done = run_script("device_generate.sh", tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "project" / "bench.json").read_text())["rows"]
    assert [(r["row"], r["status"]) for r in rows] == [
        ("explain bs=1 (greedy)", "ok"), ("generate bs=1", "ok"), ("generate bs=2", "ok")]
    assert (tmp_path / "out" / "smoke" / "bench.json").is_file()
    assert "smoke passed" in done.stdout and "peer skipped" in done.stdout
    assert "generate bs=2 tokens/s" in done.stdout and "speed-up" in done.stdout


@pytest.mark.parametrize("name", ["device_train.sh", "device_generate.sh"])
def test_a_failed_smoke_stops_the_run_with_its_reason(tmp_path, name):
    """A stand-in Python whose ``cme-vlm bench`` fails: the script prints the reason and runs nothing after it."""
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python"
    stand_in.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
if [[ "$*" == *"cme_vlm.cli bench"* ]]; then echo "error: CUDA error: an illegal memory access"; exit 2; fi
echo "torch 2.11 transformers 5.24"
""")
    stand_in.chmod(0o755)
    done = run_script(name, tmp_path / "out", python=str(stand_in))
    assert done.returncode == 1
    assert "SMOKE FAILED" in done.stdout and "illegal memory access" in done.stdout
    benches = [line for line in calls.read_text().splitlines() if "cme_vlm.cli bench" in line]
    assert len(benches) == 1 and "smoke" in benches[0]  # neither the measured rows, the peer nor the ratios ran
    assert not any("compare" in line for line in calls.read_text().splitlines())
