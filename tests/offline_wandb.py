"""Read an offline W&B run back with wandb's own reader, ``wandb leet inspect`` (wandb.Api cannot read offline runs)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _inspect(path: Path, *flags: str) -> str:
    command = [sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def read_offline_run(folder: Path, timeout_s: float = 30.0) -> dict:
    """The run's summary view (``state``, ``name``, ``tags``, ``config``, ``summary``) plus ``job_type``,
    ``group``, ``history`` (the logged rows, in order) and ``artifacts`` (``{name: {"type", "files"}}``).

    W&B's service may still be writing when ``finish`` returns, so wait until the run reads as finished.
    """
    (path,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        view = json.loads(_inspect(path, "--summary", "--json"))
        if view["state"] == "finished" or time.monotonic() > deadline:
            assert view["state"] == "finished", f"{path} is still '{view['state']}' after {timeout_s} s"
            break
        time.sleep(0.2)
    records = [json.loads(line) for line in _inspect(path, "--json").splitlines()]
    run = next(r["run"] for r in records if r["type"] == "run")
    artifacts = {
        r["artifact"]["name"]: {"type": r["artifact"]["type"],
                                "files": sorted(c["path"] for c in r["artifact"]["manifest"].get("contents", []))}
        for r in records if r["type"] == "artifact"
    }
    return {**view, "job_type": run.get("job_type", ""), "group": run.get("run_group", ""),
            "history": [r["history"]["item"] for r in records if r["type"] == "history"], "artifacts": artifacts}


def read_table(folder: Path, logged: dict) -> dict:
    """The ``columns`` and ``data`` of a logged ``wandb.Table``, from its summary entry (``_type`` table-file)."""
    assert logged["_type"] == "table-file", logged
    return json.loads((folder / "files" / logged["path"]).read_text())


def offline_runs(out: Path) -> list[Path]:
    """The offline run folders a stage wrote under ``out/wandb``."""
    return sorted((out / "wandb").glob("offline-run-*"))
