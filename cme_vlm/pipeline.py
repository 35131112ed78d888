"""The whole pipeline: every registered stage in order, each skipped when its output is up to date.

A stage is up to date when its folder holds a ``stage.json`` marked done with its current
fingerprint (``cme_vlm.stages.fingerprints``: the config keys it reads and its inputs'
fingerprints). A changed key re-runs the stage that reads it and those downstream, nothing
else. A stage that was interrupted (marked running with the same fingerprint) is called again
and resumes from its own journal or checkpoint. A stage that re-runs because its config changed
keeps its ``keeps`` files: paid responses, audit logs and expert annotations are never deleted.

Which run: the one the user names (``--run-dir``: its changed stages re-run in place), else the
latest run of the experiment whose finished stages all match the config. A config that would
re-run a finished stage of every run starts a new run folder, never overwriting one made by a
different experiment; it starts from the latest run's stages that are still up to date (hard
links, so nothing is computed or paid twice and no space is used; the ``keeps`` files, which
later stages append to or annotate, are copied).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cme_vlm import atomic
from cme_vlm.config import save_config
from cme_vlm.errors import Interrupted
from cme_vlm.layout import STATUS_FILE, read_status, runs_of, stage_state, stamped
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
    earlier = read_status(folder) if state == "interrupted" else {}  # the attempts before this one count too
    started, record = time.time(), {"fingerprint": fp, "started_at": earlier.get("started_at", time.time()),
                                    "attempts": earlier.get("attempts", 0) + 1}

    def spent() -> float:
        return round(earlier.get("seconds", 0) + time.time() - started, 1)

    atomic.write_json(folder / STATUS_FILE, {**record, "status": "running", "seconds": earlier.get("seconds", 0)})
    console.rule(f"[bold]{stage.folder}[/]: {stage.summary}")
    try:
        stage.load()(cfg, **stage_paths(stage, cfg, run_dir))
    except BaseException:
        atomic.write_json(folder / STATUS_FILE, {**record, "status": "interrupted", "seconds": spent()})
        raise
    atomic.write_json(folder / STATUS_FILE, {**record, "status": "done", "seconds": spent()})


def _stale(run_dir: Path, stages: list[Stage], fps: dict[str, str]) -> list[str]:
    """The stage folders of ``run_dir`` that this config would re-run although they hold another config's work."""
    return [s.folder for s in stages if stage_state(run_dir / s.folder, fps[s.name]) == "stale"]


def _link_or_copy(keeps: tuple[str, ...], stage_folder: Path) -> Callable[[str, str], object]:
    """``copytree``'s file copier: a hard link, but a real copy for the ``keeps`` files (appended to, annotated)."""
    def copy(src: str, dst: str) -> object:
        if Path(src).relative_to(stage_folder).parts[0] not in keeps:
            with contextlib.suppress(OSError):  # another file system: copy instead
                return os.link(src, dst)
        return shutil.copy2(src, dst)
    return copy


def carry_over(source: Path, target: Path, stages: list[Stage]) -> None:
    """Give ``target`` a copy of each of ``source``'s ``stages`` (hard links; the ``keeps`` files copied)."""
    for stage in stages:
        folder = source / stage.folder
        shutil.copytree(folder, target / stage.folder, symlinks=True, copy_function=_link_or_copy(stage.keeps, folder))


def choose_run(cfg: ExperimentConfig, stages: list[Stage], fps: dict[str, str], new: bool = False,
               dry_run: bool = False) -> Path:
    """The run to continue, or a new one (see the module docstring); says in one line which and why."""
    runs = runs_of(cfg)
    matching = None if new else next((r for r in reversed(runs) if not _stale(r, stages, fps)), None)
    if matching:
        console.print(f"run folder: {matching} (continuing it: its finished stages match this config)", soft_wrap=True,
                      markup=False)
        return matching
    target = stamped(Path(cfg.output_dir), cfg.name)
    if new or not runs:
        console.print(f"run folder: {target} (new)", soft_wrap=True, markup=False)
        return target
    latest = runs[-1]
    done = [s for s in stages if stage_state(latest / s.folder, fps[s.name]) == "done"]
    if not dry_run:
        carry_over(latest, target, done)
    start = f", starting from its up-to-date {', '.join(s.folder for s in done)}" if done else ""
    console.print(f"{latest} holds {', '.join(_stale(latest, stages, fps))} made with a different config: this run "
                  f"goes to a new folder, {target}{start}. To re-run them inside {latest} instead: --run-dir {latest}",
                  style="yellow", soft_wrap=True, markup=False, highlight=False)
    return target


def run(cfg: ExperimentConfig, run_dir: Path | None = None, dry_run: bool = False, new: bool = False) -> Path:
    """Run (or, with ``dry_run``, plan) every stage of the experiment under ``run_dir`` (``choose_run`` without one)."""
    stages, fps = stages_for(cfg), fingerprints(cfg)
    if run_dir:
        run_dir = Path(run_dir)
        console.print(f"run folder: {run_dir} (as given)", soft_wrap=True, markup=False)
    else:
        run_dir = choose_run(cfg, stages, fps, new, dry_run)
    if dry_run:
        print_plan(cfg, run_dir, stages, fps)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    started = time.time()
    try:
        for stage in stages:
            _run_stage(stage, cfg, run_dir, fps[stage.name])
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
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
