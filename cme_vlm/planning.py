"""The dry-run plan: stages, inputs a user must provide, paid calls, and training memory.

Nothing here loads weights or touches the network: parameter counts come from the model's
architecture built on the ``meta`` device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cme_vlm.anatomy import Anatomy
from cme_vlm.schema import ComponentMode, DataSource, ExperimentConfig, JudgeBackend, Optimizer, TeacherBackend, TrainConfig

if TYPE_CHECKING:
    from cme_vlm.layout import RunLayout
    from cme_vlm.pipeline import Step

console = Console()
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def _bytes_per_param(cfg: ExperimentConfig) -> int:
    if cfg.model.dtype in ("float32", "fp32"):
        return 4
    return 2  # auto resolves to bf16 on GPU, where these estimates matter


def estimate_training_memory(
    cfg: ExperimentConfig, train: TrainConfig, params: dict[str, int], hidden: int, layers: int,
    sequences_per_step: int, seq_len: int,
) -> MemoryEstimate:
    """Bytes a training step needs, by the usual accounting (weights, grads, AdamW states, activations).

    Activations follow Korthikanti et al. (2022): about 34·s·h bytes per token-layer in 16-bit
    without recomputation, about 2·s·h with full gradient checkpointing.
    """
    width = _bytes_per_param(cfg)
    total = sum(params.values())
    trainable = sum(n for c, n in params.items() if getattr(train.freezing, c) is not ComponentMode.freeze)
    weights = total * width
    gradients = trainable * width
    # moments (and Kahan's compensation buffer) are kept in the parameters' dtype
    optimizer = trainable * width * (3 if train.optimizer is Optimizer.kahan_adamw else 2)
    per_token_layer = (2 if train.gradient_checkpointing else 34) * hidden
    activations = sequences_per_step * seq_len * layers * per_token_layer
    return MemoryEstimate(weights, gradients, optimizer, float(activations))


def _records_estimate(cfg: ExperimentConfig, layout: RunLayout) -> tuple[int, str]:
    from cme_vlm.data.records import load_dataset

    if (layout.data / "dataset").is_dir():
        return len(load_dataset(layout.data)), "records in this run's dataset"
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


def print_plan(cfg: ExperimentConfig, layout: RunLayout, steps: list[Step], fps: dict[str, str]) -> None:
    """Print stages, required inputs, paid calls and training memory; run nothing."""
    from cme_vlm.pipeline import stage_state

    plan = Table(title=f"plan for '{cfg.name}' in {layout.root}")
    for col in ("stage", "what it does", "state"):
        plan.add_column(col)
    for step in steps:
        folder = layout.stage(step.name)
        plan.add_row(folder.name, step.summary, stage_state(folder, fps[step.name]))
    console.print(plan)

    inputs = Table(title="inputs")
    for col in ("setting", "value", "status"):
        inputs.add_column(col)
    for row in _inputs(cfg):
        inputs.add_row(*row)
    console.print(inputs)

    n, basis = _records_estimate(cfg, layout)
    console.print(_calls_table(cfg, n, basis))
    console.print(_memory_table(cfg))


def _calls_table(cfg: ExperimentConfig, n: int, basis: str) -> Table:
    train_share = 1 - cfg.data.val_fraction - cfg.data.test_fraction
    test = round(n * cfg.data.test_fraction)
    table = Table(title=f"teacher and judge calls (from {n} {basis})")
    for col in ("step", "backend", "calls"):
        table.add_column(col)
    table.add_row("teacher answers", cfg.teacher.backend.value, str(n) if cfg.teacher.backend is TeacherBackend.gemini else "0 (offline)")
    pairs = round(n * train_share) * (2 if cfg.preference.two_pass else 1)
    table.add_row("pair selection", cfg.preference.judge.value, str(pairs) if cfg.preference.judge is JudgeBackend.gemini else "0 (offline)")
    judged = test * len(cfg.eval.models)
    table.add_row("evaluation judge", cfg.eval.judge.value, str(judged) if cfg.eval.judge is JudgeBackend.gemini else "0 (offline)")
    return table


def _memory_table(cfg: ExperimentConfig) -> Table:
    from cme_vlm.models.architecture import architecture_summary

    arch = architecture_summary(cfg)
    seq = arch.image_tokens + 128 + cfg.preference.max_new_tokens
    table = Table(title=f"training memory estimate ({cfg.model.name}: {sum(arch.params.values()) / 1e9:.2f} B parameters, "
                        f"~{seq} tokens a sequence)")
    for col in ("stage", "trained", "weights", "grads", "optimizer", "activations", "total"):
        table.add_column(col, justify="right")
    for name, train, seqs in (("sft", cfg.sft, cfg.sft.batch_size), ("dpo", cfg.dpo, 2 * cfg.dpo.batch_size)):
        est = estimate_training_memory(cfg, train, arch.params, arch.hidden, arch.layers, seqs, seq)
        trained = ", ".join(c for c in arch.params if getattr(train.freezing, c) is not ComponentMode.freeze)
        table.add_row(name, trained, *(f"{v / GIB:.1f} GiB" for v in
                                       (est.weights, est.gradients, est.optimizer, est.activations, est.total)))
    return table
