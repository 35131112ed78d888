"""Lightning callbacks that log judge scores, per-structure metrics, ablations and sample tables to W&B.

``build_callbacks(cfg, loaded, val)`` is what the SFT and DPO stages add to their trainer.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from lightning import Callback

from cme_vlm.callbacks.ablation import AblationCallback
from cme_vlm.callbacks.judge_score import JudgeScoreCallback
from cme_vlm.callbacks.per_structure import PerStructureMetricsCallback
from cme_vlm.callbacks.sample_table import SampleTableCallback
from cme_vlm.callbacks.sampler import SampledValidationCallback, ValidationSampler
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import ExperimentConfig
from cme_vlm.scoring.judge import make_judge

__all__ = ["AblationCallback", "JudgeScoreCallback", "PerStructureMetricsCallback", "SampleTableCallback",
           "SampledValidationCallback", "ValidationSampler", "build_callbacks", "validation_subset"]


def validation_subset(val: Dataset | None, size: int) -> list[dict[str, Any]]:
    """The first ``size`` answered validation records by id: the same cases at every validation."""
    if val is None or size <= 0:
        return []
    rows = val.filter(lambda split, answer: split == "val" and bool(answer), input_columns=["split", "answer"])
    rows = rows.sort("id")
    return list(rows.select(range(min(size, len(rows)))))


def build_callbacks(cfg: ExperimentConfig, loaded: LoadedModel, val: Dataset | None, judge: Any = None) -> list[Callback]:
    """The callbacks ``cfg.wandb.callbacks`` names; judge-based ones need answered validation records in ``val``.

    ``val`` is the answered instruction dataset (its ``val`` split is used). ``judge`` defaults to ``cfg.eval.judge``
    where that needs no client (the rubric judge); pass the Gemini judge in explicitly.
    """
    wanted = set(cfg.wandb.callbacks)
    out: list[Callback] = [AblationCallback(cfg)] if "ablation" in wanted else []
    rows = validation_subset(val, cfg.wandb.judge_subset)
    if not rows or not wanted & {"judge", "per_structure", "samples"}:
        return out
    sampler = ValidationSampler(cfg, loaded, rows, judge or make_judge(cfg, "rubric"))
    every = cfg.wandb.judge_every_n_val
    if "judge" in wanted:
        out.append(JudgeScoreCallback(sampler, every))
    if "per_structure" in wanted:
        out.append(PerStructureMetricsCallback(sampler, every))
    if "samples" in wanted:
        out.append(SampleTableCallback(sampler, cfg.wandb.allow_image_upload, every))
    return out
