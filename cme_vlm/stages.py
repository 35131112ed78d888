"""The stage registry: every pipeline stage declared once.

A ``Stage`` names its folder in the run, the function it runs, the inputs it takes from other
stages' folders, the config keys its outputs depend on, the files it keeps when it re-runs,
and what it writes. The ``cme-vlm`` sub-commands, ``cme-vlm run``, the dry-run plan, the
fingerprints and the README's stage table all derive from ``STAGES``. Adding a stage is one
declaration here plus its module.

Stage modules import torch, transformers or Lightning; ``load`` imports a stage's module only
when it runs, so ``cme-vlm --help`` or ``cme-vlm audit`` start in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cme_vlm.config import config_value, to_dict
from cme_vlm.schema import DataSource, ExperimentConfig, PreferenceConfig

StageFunction = Callable[..., Any]  # function(cfg, **inputs, out=folder)

# Keys that label or track a run but never change what a stage writes: never part of a fingerprint.
TRACKING_KEYS = ("name", "output_dir", "base", "ablation", "defaults", "wandb")


@dataclass(frozen=True)
class Input:
    """A path a stage reads: ``sub`` inside another stage's folder, or the value of ``config_key``.

    ``config_key`` is used when the producing stage does not run for this config (real data has
    no synthetic-frames stage: the frames are at ``data.root``).
    """

    name: str  # the stage function's parameter and the command's option (--dataset)
    help: str
    stage: str
    sub: str = ""
    config_key: str = ""

    def path(self, run_dir: Path, cfg: ExperimentConfig) -> Path:
        running = {s.name: s for s in stages_for(cfg)}
        if self.stage not in running and self.config_key:
            return Path(str(config_value(cfg, self.config_key)))
        folder = run_dir / running.get(self.stage, STAGE_BY_NAME.get(self.stage)).folder
        return folder / self.sub if self.sub else folder


def _always(cfg: ExperimentConfig) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline; run as ``load()(cfg, **inputs, out=<run>/<folder>)``."""

    name: str
    folder: str
    command: tuple[str, ...]
    summary: str
    load: Callable[[], StageFunction]
    inputs: tuple[Input, ...]
    reads: tuple[str, ...]  # config keys (sections or leaves) its outputs depend on
    writes: tuple[str, ...]  # what a user finds in its folder
    keeps: tuple[str, ...] = ()  # paid or audited files kept when a changed config re-runs it
    enabled: Callable[[ExperimentConfig], bool] = _always

    def reads_key(self, key: str) -> bool:
        """Whether ``key`` is one of ``reads`` or lies inside a section it names."""
        return any(key == r or key.startswith(r + ".") for r in self.reads)

    def upstream(self, running: set[str]) -> list[str]:
        """The stages this one reads from, of those ``running``."""
        return [i.stage for i in self.inputs if i.stage in running]


def _synthesize() -> StageFunction:
    from cme_vlm.data.stage import synthesize

    return synthesize


def _build_records() -> StageFunction:
    from cme_vlm.data.stage import build

    return build


def _answer() -> StageFunction:
    from cme_vlm.teacher.stage import answer

    return answer


def _train_sft() -> StageFunction:
    from cme_vlm.training.sft_stage import train_sft

    return train_sft


def _build_preferences() -> StageFunction:
    from cme_vlm.preference.stage import build_preferences

    return build_preferences


def _train_dpo() -> StageFunction:
    from cme_vlm.training.dpo_stage import train_dpo

    return train_dpo


def _evaluate() -> StageFunction:
    from cme_vlm.evaluation.stage import evaluate

    return evaluate


def _synthetic(cfg: ExperimentConfig) -> bool:
    return cfg.data.source is DataSource.synthetic


def _with_dpo(cfg: ExperimentConfig) -> bool:
    return "dpo" in cfg.eval.models


# what the preference stage reads of its section: all but `rounds`, which only lays out the stages (stages_for)
PREFERENCE_KEYS = tuple(f"preference.{f.name}" for f in fields(PreferenceConfig) if f.name != "rounds")
DATASET = "dataset"
MODEL = "model"
ANSWERED = Input("dataset", "answered instruction dataset", "teacher", DATASET)
SFT_MODEL = Input("model", "SFT model", "sft", MODEL)

STAGES: tuple[Stage, ...] = (
    Stage(
        "frames", "00-frames", ("data", "synth"), "draw synthetic CME scenes (stand-in for clinical frames)",
        _synthesize, (), reads=("anatomy.structures", "data.synthetic"),
        writes=("frames/", "masks/", "manifest.jsonl"), enabled=_synthetic,
    ),
    Stage(
        "data", "01-data", ("data", "build"), "frames + masks -> instruction records (overlay, mask, prompt)",
        _build_records, (Input("frames", "frames-and-masks tree (manifest or DSAD layout)", "frames",
                               config_key="data.root"),),
        reads=("anatomy.structures", "anatomy.scene", "data"), writes=("dataset/",),
    ),
    Stage(
        "teacher", "02-teacher", ("teacher", "answer"), "teacher answers from text + binary mask only",
        _answer, (Input("dataset", "instruction dataset", "data", DATASET),),
        reads=("anatomy.structures", "anatomy.procedure", "anatomy.scene", "anatomy.closings", "teacher"),
        writes=("dataset/", "summary.json", "journal.jsonl", "audit.jsonl"),
        keeps=("journal.jsonl", "audit.jsonl", "review", "dataset"),
    ),
    Stage(
        "sft", "03-sft", ("train", "sft"), "supervised fine-tuning of the local VLM",
        _train_sft, (ANSWERED,), reads=("seed", "anatomy", "model", "data.prompts", "sft"),
        writes=("checkpoints/", "model/", "metrics.json"),
    ),
    Stage(
        "preference", "04-preference", ("preference", "build"), "sample K answers, judge pairs, reference log-probs",
        _build_preferences, (ANSWERED, SFT_MODEL),
        reads=("anatomy", "model", "generation", *PREFERENCE_KEYS, "teacher.gemini", "teacher.min_words", "teacher.max_words",
               "eval.judge_weights", "dpo.max_length"),
        writes=("candidates.jsonl", "selection.jsonl", "dataset/", "summary.json", "journal.jsonl", "audit.jsonl"),
        keeps=("journal.jsonl", "audit.jsonl", "review"), enabled=_with_dpo,
    ),
    Stage(
        "dpo", "05-dpo", ("train", "dpo"), "direct preference optimisation",
        _train_dpo, (Input("dataset", "preference dataset", "preference", DATASET), SFT_MODEL,
                     Input("answered", "answered instruction dataset (its val records: the judge callbacks' cases)",
                           "teacher", DATASET)),
        reads=("model", "dpo"),
        writes=("checkpoints/", "model/", "metrics.json"), enabled=_with_dpo,
    ),
    Stage(
        "eval", "06-eval", ("evaluate",), "generate on the test split; metrics, judge, clinical checks, report",
        _evaluate, (ANSWERED, Input("sft", "SFT model", "sft", MODEL), Input("dpo", "DPO model", "dpo", MODEL)),
        reads=("seed", "anatomy", "model", "generation", "data.prompts", "data.source", "teacher.gemini", "eval",
               "preference.rounds"),  # the rounds decide which DPO models it evaluates
        writes=("generations/", "report.md", "report.html", "metrics.json", "judge_journal.jsonl",
                "judge_audit.jsonl"),
        keeps=("judge_journal.jsonl", "judge_audit.jsonl", "expert", "expert-key.json"),
    ),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}


def _round(stage: Stage, r: int) -> Stage:
    """``stage`` (preference or dpo) in preference round ``r`` ≥ 2: it starts from round ``r-1``'s DPO model.

    The preference round samples from that policy and precomputes its log-probs as the reference;
    the DPO round trains it further on the new pairs.
    """
    previous = "dpo" if r == 2 else f"dpo-r{r - 1}"

    def rewire(i: Input) -> Input:
        if i.stage == "sft":
            return replace(i, help=f"DPO model of round {r - 1}", stage=previous)
        return replace(i, stage=f"preference-r{r}") if i.stage == "preference" else i

    return replace(stage, name=f"{stage.name}-r{r}", folder=f"{stage.folder}-r{r}",
                   summary=f"{stage.summary} (round {r})", inputs=tuple(map(rewire, stage.inputs)))


def stages_for(cfg: ExperimentConfig) -> list[Stage]:
    """The stages this config runs, in order; ``preference.rounds`` > 1 adds a preference and a DPO stage per round."""
    stages = [s for s in STAGES if s.enabled(cfg)]
    if not _with_dpo(cfg) or cfg.preference.rounds < 2:
        return stages
    rounds = range(2, cfg.preference.rounds + 1)
    extra = [_round(STAGE_BY_NAME[name], r) for r in rounds for name in ("preference", "dpo")]
    evaluate = stages.pop()
    later = tuple(Input(f"dpo_r{r}", f"DPO model of round {r}", f"dpo-r{r}", MODEL) for r in rounds)
    return [*stages, *extra, replace(evaluate, inputs=evaluate.inputs + later)]


def stage_reads(stage: Stage, cfg: ExperimentConfig) -> dict[str, Any]:
    """The values of the config keys ``stage`` declares it reads, as plain data."""
    return {key: to_dict(config_value(cfg, key)) for key in stage.reads}


def fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """Each enabled stage's fingerprint: the keys it reads and the fingerprints of its inputs."""
    out: dict[str, str] = {}
    for stage in stages_for(cfg):
        blob = {"reads": stage_reads(stage, cfg), "inputs": {s: out[s] for s in stage.upstream(set(out))}}
        out[stage.name] = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return out


def downstream(name: str, cfg: ExperimentConfig) -> set[str]:
    """``name`` and every enabled stage that reads, directly or not, from it."""
    found = {name}
    stages = stages_for(cfg)
    running = {s.name for s in stages}
    for stage in stages:
        if found & set(stage.upstream(running)):
            found.add(stage.name)
    return found


def markdown_table() -> str:
    """The README's stage table (``python -m cme_vlm.stages`` prints it)."""
    rows = ["| folder | command | does | writes | kept when it re-runs |", "|---|---|---|---|---|"]
    for s in STAGES:
        kept = ", ".join(f"`{k}`" for k in s.keeps) or "–"
        rows.append(f"| `{s.folder}` | `cme-vlm {' '.join(s.command)}` | {s.summary} | "
                    f"{', '.join(f'`{w}`' for w in s.writes)} | {kept} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
