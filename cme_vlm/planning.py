"""The dry-run plan: stages, inputs a user must provide, paid calls, and training memory.

Nothing here loads weights or touches the network: parameter counts come from the model's
architecture built on the ``meta`` device.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cme_vlm.anatomy import Anatomy
from cme_vlm.console import folding_table
from cme_vlm.data.records import load_dataset
from cme_vlm.layout import stage_state
from cme_vlm.models.adapters import COMPONENTS
from cme_vlm.schema import ComponentMode, DataSource, ExperimentConfig, JudgeBackend, SelectionMode, TeacherBackend
from cme_vlm.stages import STAGE_BY_NAME, Stage

console = Console()


def _records_estimate(cfg: ExperimentConfig, run_dir: Path) -> tuple[int, str]:
    built = run_dir / STAGE_BY_NAME["data"].folder
    if (built / "dataset").is_dir():
        return len(load_dataset(built)), "records in this run's dataset"
    if cfg.data.source is DataSource.synthetic:
        return cfg.data.synthetic.n_frames, "synthetic annotations requested"
    counts = sum(s.annotation_count for s in Anatomy(cfg.anatomy).cfg.structures.values())
    return counts, "annotations in the registry (the paper's counts); the real number is one per (frame, mask)"


def _inputs(cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(setting, value, verdict) for every path or secret the run needs."""
    rows = []
    if cfg.data.source is not DataSource.synthetic:
        for key in ("root",) + (("manifest",) if cfg.data.source is DataSource.manifest else ()):
            value = getattr(cfg.data, key)
            ok = bool(value) and Path(value).exists()
            rows.append((f"data.{key}", value or "(not set)",
                         "found" if ok else f"set data.{key}=/path/to/your/{'frames' if key == 'root' else 'manifest.csv'}"))
    if cfg.model.path:
        local = Path(cfg.model.path).exists()
        rows.append(("model.path", cfg.model.path, "local folder found" if local else
                     "not a local folder: download the weights elsewhere and set model.path=/path/to/weights "
                     "(this machine has no hub access; HF_HUB_OFFLINE=1 works)"))
    else:
        rows.append(("model.path", "(empty)", "built from model.architecture with random weights"))
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

    n, basis = _records_estimate(cfg, run_dir)
    console.print(_calls_table(cfg, n, basis))
    console.print(_memory_table(cfg))


def _calls_table(cfg: ExperimentConfig, n: int, basis: str) -> Table:
    """Paid requests per remote step (before retries), from ``n`` records."""
    test = round(n * cfg.data.test_fraction)
    pref = cfg.preference
    dpo_models = pref.rounds if "dpo" in cfg.eval.models else 0
    judged_pairs = 0 if pref.selection is SelectionMode.checks else round(n - test) * (2 if pref.two_pass else 1)
    rows = (
        ("teacher answers", cfg.teacher.backend is TeacherBackend.gemini, cfg.teacher.backend.value, n),
        ("pair selection", pref.judge is JudgeBackend.gemini, f"{pref.judge.value}, {pref.selection.value}",
         judged_pairs * dpo_models),
        ("evaluation judge", cfg.eval.judge is JudgeBackend.gemini, cfg.eval.judge.value,
         test * (len(cfg.eval.models) - ("dpo" in cfg.eval.models) + dpo_models)),
    )
    table = folding_table(f"teacher and judge calls (from {n} {basis})", "step", "backend", "calls", right=("calls",))
    for step, paid, backend, calls in rows:
        table.add_row(step, backend, str(calls) if paid else "0 (offline)")
    return table


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
