"""Where a run lives (``runs/<name>-<time>/``) and the state of a stage folder in it.

The stage folders themselves (``00-frames`` … ``06-eval``) are declared in the stage registry
(``cme_vlm.stages``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from cme_vlm.schema import ExperimentConfig

STATUS_FILE = "stage.json"


def run_folder(cfg: ExperimentConfig, run_dir: str | Path | None = None, new: bool = False) -> Path:
    """``run_dir`` if given; else the latest ``<output_dir>/<name>-<time>`` run, or a new one."""
    if run_dir:
        return Path(run_dir)
    base = Path(cfg.output_dir)
    stamp = re.compile(rf"{re.escape(cfg.name)}-\d{{8}}-\d{{6}}")
    runs = sorted(p for p in base.glob(f"{cfg.name}-*") if p.is_dir() and stamp.fullmatch(p.name)) if base.is_dir() else []
    if runs and not new:
        return runs[-1]
    return base / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


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
