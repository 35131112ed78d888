"""The whole pipeline: every registered stage in order, each skipped when its output is up to date.

A stage is up to date when its folder holds a ``stage.json`` marked done with its current
fingerprint (``cme_vlm.stages.fingerprints``: the config keys it reads and its inputs'
fingerprints). A changed key re-runs the stage that reads it and those downstream, nothing
else. A stage that was interrupted (marked running with the same fingerprint) is called again
and resumes from its own journal or checkpoint. A stage that re-runs because its config changed
keeps its ``keeps`` files: paid responses, audit logs and expert annotations are never deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cme_vlm import atomic
from cme_vlm.config import save_config
from cme_vlm.layout import STATUS_FILE, read_status, stage_state
from cme_vlm.planning import print_plan
from cme_vlm.schema import ExperimentConfig
from cme_vlm.stages import STAGE_BY_NAME, Stage, fingerprints, stages_for

console = Console(stderr=True)


def stage_paths(stage: Stage, cfg: ExperimentConfig, run_dir: Path) -> dict[str, Path]:
    """The stage function's path arguments: its inputs in ``run_dir`` and its own folder as ``out``."""
    return {**{i.name: i.path(run_dir, cfg) for i in stage.inputs}, "out": run_dir / stage.folder}


def clear_for_rerun(stage: Stage, folder: Path) -> None:
    """Remove a stale stage's outputs, keeping what it declares in ``keeps`` (and nothing is half-removed)."""
    for child in folder.iterdir():
        if child.name in stage.keeps:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _run_stage(stage: Stage, cfg: ExperimentConfig, run_dir: Path, fp: str) -> None:
    folder = run_dir / stage.folder
    state = stage_state(folder, fp)
    if state == "done":
        console.print(f"[dim]{stage.folder}: up to date, skipped[/]")
        return
    if state == "stale":
        kept = sorted(p.name for p in folder.iterdir() if p.name in stage.keeps)
        console.print(f"[yellow]{stage.folder}: config changed, re-running[/]"
                      + (f" [dim](keeping {', '.join(kept)})[/]" if kept else ""))
        clear_for_rerun(stage, folder)
    elif state == "interrupted":
        console.print(f"[yellow]{stage.folder}: interrupted earlier, resuming[/]")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    atomic.write_json(folder / STATUS_FILE, {"fingerprint": fp, "status": "running", "started_at": started})
    console.rule(f"[bold]{stage.folder}[/]: {stage.summary}")
    stage.load()(cfg, **stage_paths(stage, cfg, run_dir))
    atomic.write_json(folder / STATUS_FILE, {"fingerprint": fp, "status": "done", "started_at": started,
                                             "seconds": round(time.time() - started, 1)})


def run(cfg: ExperimentConfig, run_dir: Path, dry_run: bool = False) -> Path:
    """Run (or, with ``dry_run``, plan) every stage of the experiment under ``run_dir``."""
    run_dir = Path(run_dir)
    stages, fps = stages_for(cfg), fingerprints(cfg)
    if dry_run:
        print_plan(cfg, run_dir, stages, fps)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    console.print(f"run folder: [bold]{run_dir}[/]")
    started = time.time()
    for stage in stages:
        _run_stage(stage, cfg, run_dir, fps[stage.name])
    _print_summary(run_dir, stages, time.time() - started)
    return run_dir


def _print_summary(run_dir: Path, stages: list[Stage], seconds: float) -> None:
    table = Table(title=f"{run_dir} ({seconds:.0f} s)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage in stages:
        table.add_row(stage.folder, str(read_status(run_dir / stage.folder).get("seconds", "-")))
    console.print(table)
    report = run_dir / STAGE_BY_NAME["eval"].folder / "report.md"
    if report.is_file():
        console.print(f"report: [bold]{report}[/] and {report.with_suffix('.html')}")
