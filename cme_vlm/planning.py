"""The dry-run plan: stages, inputs a user must provide, paid calls, training memory, and disk and host memory.

Nothing here loads weights or touches the network: parameter counts come from the model's
architecture built on the ``meta`` device.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cme_vlm.console import folding_table
from cme_vlm.layout import stage_state
from cme_vlm.models.adapters import COMPONENTS
from cme_vlm.models.local_weights import local_models_table
from cme_vlm.schema import ComponentMode, DataSource, ExperimentConfig, JudgeBackend, TeacherBackend
from cme_vlm.stages import Stage
from cme_vlm.training.preflight import preflight
from cme_vlm.workload import workload_tables

console = Console()


def _inputs(cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(setting, value, verdict) for every data path or secret the run needs (the models: ``local_models_table``)."""
    rows = []
    if cfg.data.source is not DataSource.synthetic:
        for key in ("root",) + (("manifest",) if cfg.data.source is DataSource.manifest else ()):
            value = getattr(cfg.data, key)
            ok = bool(value) and Path(value).exists()
            rows.append((f"data.{key}", value or "(not set)",
                         "found" if ok else f"set data.{key}=/path/to/your/{'frames' if key == 'root' else 'manifest.csv'}"))
    uses_gemini = (cfg.teacher.backend is TeacherBackend.gemini or cfg.preference.judge is JudgeBackend.gemini
                   or cfg.eval.judge is JudgeBackend.gemini)
    if uses_gemini:
        env = cfg.teacher.gemini.api_key_env
        rows.append((f"${env}", "set" if os.environ.get(env) else "(not set)",
                     "found" if os.environ.get(env) else f"export {env}=<your key> before running"))
    return rows


def print_plan(cfg: ExperimentConfig, run_dir: Path, stages: list[Stage], fps: dict[str, str]) -> None:
    """Print stages, required inputs, paid calls and training memory; run nothing."""
    plan = folding_table(f"plan for '{cfg.name}' in {run_dir}", "stage", "what it does", "state")
    for stage in stages:
        plan.add_row(stage.folder, stage.summary, stage_state(run_dir / stage.folder, fps[stage.name]))
    console.print(plan)

    inputs = folding_table("inputs", "setting", "value", "status")
    for row in _inputs(cfg):
        inputs.add_row(*row)
    console.print(inputs)
    console.print(local_models_table(cfg))

    for table in workload_tables(cfg, run_dir):
        console.print(table)
    console.print(_memory_table(cfg))
    console.print(*preflight(cfg, run_dir, [(stage.name, stage.folder) for stage in stages]))


def _memory_table(cfg: ExperimentConfig) -> Table:
    """Each training stage's peak as measured on fake tensors (``cme_vlm.bench.memory``), where recorded for these settings."""
    from cme_vlm.bench.explain_memory import explain_row
    from cme_vlm.bench.memory import GIB_COLUMNS, cached_step_memory, stage_train

    table = folding_table(f"training memory of one step in GiB, measured ({cfg.model.name}; live tensors at the peak, "
                          "without CUDA context and allocator slack)", "stage", "trained", "tokens", *GIB_COLUMNS,
                          right=GIB_COLUMNS)
    for stage in ("sft", "dpo"):
        train = stage_train(cfg, stage)
        trained = ", ".join(c for c in COMPONENTS if getattr(train.freezing, c) is not ComponentMode.freeze)
        measured = cached_step_memory(cfg, stage)
        if measured is None:
            table.add_row(stage, trained, "–", "–", "–", "–", "–", "not measured")
            table.caption = ("not measured: these settings have no recorded step; `cme-vlm bench --memory` with the same "
                             "config and overrides records one (a minute or two on a CPU)")
            continue
        shape = measured.shape
        table.add_row(stage, trained, f"{shape['sequences']} × {shape['sequence_length']}", *measured.gib())
    table.add_row(*explain_row(cfg))
    return table
