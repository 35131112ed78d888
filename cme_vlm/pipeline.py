"""The whole pipeline: every stage in order, each skipped when its output is up to date.

A stage is up to date when its folder holds a ``stage.json`` marked done with the fingerprint
of the config sections it depends on, chained with its predecessor's fingerprint: a changed
config re-runs the stage it affects and those after it, nothing before. A stage that was
interrupted (marked running with the same fingerprint) is called again and resumes from its
own journal or checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cme_vlm import atomic
from cme_vlm.config import fingerprint, save_config
from cme_vlm.data.records import DATASET_DIRNAME
from cme_vlm.layout import RunLayout
from cme_vlm.schema import DataSource, ExperimentConfig
from cme_vlm.stages import stage_function

console = Console(stderr=True)

STATUS_FILE = "stage.json"
KEEP_ON_RERUN = ("journal.jsonl",)  # paid responses: content-addressed, never thrown away


@dataclass(frozen=True)
class Step:
    name: str  # a RunLayout stage
    summary: str
    target: str  # "module:function", called as function(cfg, **paths)
    paths: Callable[[RunLayout, ExperimentConfig], dict[str, Path]]
    sections: Callable[[ExperimentConfig], tuple[Any, ...]]


STEPS = (
    Step("frames", "draw synthetic CME scenes (stand-in for clinical frames)", "cme_vlm.data.stage:synthesize",
         lambda lay, cfg: {"out": lay.frames}, lambda c: (c.seed, c.anatomy, c.data.synthetic)),
    Step("data", "frames + masks -> instruction records (overlay, mask, prompt)", "cme_vlm.data.stage:build",
         lambda lay, cfg: {"frames": _frames_dir(lay, cfg), "out": lay.data}, lambda c: (c.anatomy, c.data)),
    Step("teacher", "teacher answers from text + binary mask only", "cme_vlm.teacher.stage:answer",
         lambda lay, cfg: {"dataset": lay.data / DATASET_DIRNAME, "out": lay.teacher}, lambda c: (c.teacher,)),
    Step("sft", "supervised fine-tuning of the local VLM", "cme_vlm.training.sft_stage:train_sft",
         lambda lay, cfg: {"dataset": lay.teacher / DATASET_DIRNAME, "out": lay.sft},
         lambda c: (c.seed, c.model, c.sft)),
    Step("preference", "sample K answers, judge pairs, reference log-probs",
         "cme_vlm.preference.stage:build_preferences",
         lambda lay, cfg: {"dataset": lay.teacher / DATASET_DIRNAME, "model": lay.sft / "model", "out": lay.preference},
         lambda c: (c.preference,)),
    Step("dpo", "direct preference optimisation", "cme_vlm.training.dpo_stage:train_dpo",
         lambda lay, cfg: {"dataset": lay.preference / DATASET_DIRNAME, "model": lay.sft / "model", "out": lay.dpo},
         lambda c: (c.dpo,)),
    Step("eval", "generate on the test split; metrics, judge, clinical checks, report",
         "cme_vlm.evaluation.stage:evaluate",
         lambda lay, cfg: {"dataset": lay.teacher / DATASET_DIRNAME, "sft": lay.sft / "model",
                           "dpo": lay.dpo / "model", "out": lay.eval},
         lambda c: (c.eval,)),
)


def _frames_dir(layout: RunLayout, cfg: ExperimentConfig) -> Path:
    return layout.frames if cfg.data.source is DataSource.synthetic else Path(cfg.data.root)


def steps_for(cfg: ExperimentConfig) -> list[Step]:
    """The steps this config runs: no scene drawing for real data, no DPO when not in the models."""
    steps = [s for s in STEPS if s.name != "frames" or cfg.data.source is DataSource.synthetic]
    if "dpo" not in cfg.eval.models:
        steps = [s for s in steps if s.name not in ("preference", "dpo")]
    return steps


def fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """Each step's fingerprint, chained through the steps before it."""
    chain, out = "", {}
    for step in steps_for(cfg):
        chain = fingerprint(chain, *step.sections(cfg))
        out[step.name] = chain
    return out


def read_status(folder: Path) -> dict[str, Any]:
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


def _clear_stale(folder: Path) -> None:
    for child in folder.iterdir():
        if child.name in KEEP_ON_RERUN:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _run_step(step: Step, cfg: ExperimentConfig, layout: RunLayout, fp: str) -> None:
    folder = layout.stage(step.name)
    state = stage_state(folder, fp)
    if state == "done":
        console.print(f"[dim]{folder.name}: up to date, skipped[/]")
        return
    if state == "stale":
        console.print(f"[yellow]{folder.name}: config changed, re-running[/]")
        _clear_stale(folder)
    elif state == "interrupted":
        console.print(f"[yellow]{folder.name}: interrupted earlier, resuming[/]")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    atomic.write_json(folder / STATUS_FILE, {"fingerprint": fp, "status": "running", "started_at": started})
    console.rule(f"[bold]{folder.name}[/]: {step.summary}")
    stage_function(step.target)(cfg, **step.paths(layout, cfg))
    atomic.write_json(folder / STATUS_FILE, {"fingerprint": fp, "status": "done", "started_at": started,
                                             "seconds": round(time.time() - started, 1)})


def run(cfg: ExperimentConfig, run_dir: Path, dry_run: bool = False) -> RunLayout:
    """Run (or, with ``dry_run``, plan) every stage of the experiment under ``run_dir``."""
    layout = RunLayout(Path(run_dir))
    steps, fps = steps_for(cfg), fingerprints(cfg)
    if dry_run:
        from cme_vlm.planning import print_plan

        print_plan(cfg, layout, steps, fps)
        return layout
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.root)
    os.environ.setdefault("WANDB_DIR", str(layout.root))
    console.print(f"run folder: [bold]{layout.root}[/]")
    started = time.time()
    for step in steps:
        _run_step(step, cfg, layout, fps[step.name])
    _print_summary(layout, steps, time.time() - started)
    return layout


def _print_summary(layout: RunLayout, steps: list[Step], seconds: float) -> None:
    table = Table(title=f"{layout.root} ({seconds:.0f} s)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for step in steps:
        table.add_row(layout.stage(step.name).name, str(read_status(layout.stage(step.name)).get("seconds", "-")))
    console.print(table)
    report = layout.eval / "report.md"
    if report.is_file():
        console.print(f"report: [bold]{report}[/] and {report.with_suffix('.html')}")
