"""Where a run lives (``runs/<name>-<time>/``) and the state of a stage folder in it.

The stage folders themselves (``00-frames`` … ``06-eval``) are declared in the stage registry
(``cme_vlm.stages``); which run ``cme-vlm run`` continues is decided in ``cme_vlm.pipeline``.
A stage command run by hand writes beside the stage's folder, in ``<folder>-<time>``
(``beside_stage``), so only ``cme-vlm run`` writes a run's stage folders.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from cme_vlm.schema import ExperimentConfig

STATUS_FILE = "stage.json"
STAMP = "%Y%m%d-%H%M%S"


def stamped(folder: Path, prefix: str) -> Path:
    """``folder/<prefix>-<time>``, with ``-2``, ``-3`` … added when a folder of that second exists already."""
    name = f"{prefix}-{time.strftime(STAMP)}"
    path, n = folder / name, 1
    while path.exists():
        n += 1
        path = folder / f"{name}-{n}"
    return path


def runs_of(cfg: ExperimentConfig) -> list[Path]:
    """The run folders ``<output_dir>/<name>-<time>`` of this experiment, oldest first."""
    base = Path(cfg.output_dir)
    stamp = re.compile(rf"{re.escape(cfg.name)}-\d{{8}}-\d{{6}}(-\d+)?")
    return sorted(p for p in base.glob(f"{cfg.name}-*") if p.is_dir() and stamp.fullmatch(p.name)) if base.is_dir() else []


def run_folder(cfg: ExperimentConfig, run_dir: str | Path | None = None) -> Path:
    """``run_dir`` if given; else the latest run of the experiment, or a new one's name."""
    if run_dir:
        return Path(run_dir)
    runs = runs_of(cfg)
    return runs[-1] if runs else stamped(Path(cfg.output_dir), cfg.name)


def beside_stage(stage_folder: Path) -> Path:
    """Where a stage command run by hand writes: ``<run>/<folder>-<time>``, never the stage folder itself."""
    return stamped(stage_folder.parent, stage_folder.name)


def read_status(folder: Path) -> dict[str, Any]:
    """The stage's ``stage.json`` (fingerprint, status, timing), or ``{}``."""
    path = folder / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_state(folder: Path, fp: str) -> str:
    """done | interrupted | stale | pending."""
    status = read_status(folder)
    if not status:
        return "interrupted" if folder.exists() and any(folder.iterdir()) else "pending"
    if status.get("fingerprint") != fp:
        return "stale"
    return "done" if status.get("status") == "done" else "interrupted"
