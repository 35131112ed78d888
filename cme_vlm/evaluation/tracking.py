"""The evaluation's W&B run: Table 1, the per-structure figures, the paired tests, the answers and the report.

Everything comes from the ``metrics.json`` dict, so the run shows the report's numbers and a
dashboard can put two ablations side by side on them. Scalars, one per model and metric:
``eval/<model>/<metric>`` (Table 1 means), ``eval/<model>/<structure>/<metric>`` (per structure),
``eval/expert/...`` (expert scores and judge–expert agreement, once an expert sheet is imported).
Tables: ``eval/table1``, ``eval/per_structure``, ``eval/paired_tests``, ``eval/generations``. The
report is an artifact. Frames reach W&B only with ``wandb.allow_image_upload``: the generations
table then shows the gallery overlays, and the artifact carries ``report.html``, which inlines them.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import wandb

from cme_vlm.evaluation.report import CHART_FILENAME, METRICS_FILENAME, main_table
from cme_vlm.evaluation.stats import PairedTest
from cme_vlm.schema import ExperimentConfig
from cme_vlm.tracking import flat_metrics, stage_run

JOB = "eval"
ANSWER_SCORES = ("bleu4", "bertscore", "judge", "identification", "laterality_error")
TEXT_REPORT = ("report.md", METRICS_FILENAME, CHART_FILENAME)  # hold no frame


def _means(summaries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The mean of each metric that scored at least one answer."""
    return {metric: s["mean"] for metric, s in summaries.items() if s["n"]}


def summary_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Table 1 and the per-structure means as ``eval/<model>/<metric>`` and ``eval/<model>/<structure>/<metric>``."""
    tree = {
        name: {**_means(model["summary"]), "corpus_bleu": model["corpus_bleu"],
               "laterality_error_count": model["laterality_errors"], "collapse_share": model["collapse"]["share"],
               **{structure: _means(per) for structure, per in model["per_structure"].items()}}
        for name, model in metrics["models"].items()
    }
    if "expert" in metrics:
        tree["expert"] = metrics["expert"]
    return flat_metrics(JOB, tree)


def table1(metrics: dict[str, Any]) -> wandb.Table:
    """The report's Table 1 as it reads there: metrics as rows, models as columns, mean ± std."""
    header, rows = main_table(metrics)
    return wandb.Table(columns=header, data=rows)


def per_structure_table(metrics: dict[str, Any]) -> wandb.Table:
    """One row per model, structure and metric: mean, std and the number of answers scored."""
    table = wandb.Table(columns=["model", "structure", "metric", "mean", "std", "n"])
    for name, model in metrics["models"].items():
        for structure, per in model["per_structure"].items():
            for metric, s in per.items():
                table.add_data(name, structure, metric, s["mean"], s["std"], s["n"])
    return table


def paired_tests_table(metrics: dict[str, Any]) -> wandb.Table:
    """The Wilcoxon tests between every pair of models, one row per pair and metric."""
    columns = [*(f.name for f in fields(PairedTest)), "verdict"]
    return wandb.Table(columns=columns, data=[[t[c] for c in columns] for t in metrics["tests"]])


def generations_table(metrics: dict[str, Any], out: Path, allow_images: bool) -> wandb.Table:
    """Every model's answer to every test case with its scores; the gallery overlay only if ``allow_images``."""
    columns = ["id", "structure", "side", "prompt", "reference", "model", "answer", *ANSWER_SCORES]
    table = wandb.Table(columns=columns + (["overlay"] if allow_images else []))
    for case in metrics["cases"]:
        overlay = [wandb.Image(str(out / case["gallery"])) if case["gallery"] else None] if allow_images else []
        for name, answer in case["answers"].items():
            table.add_data(case["id"], case["structure"], case["side"], case["prompt"], case["reference"], name,
                           answer["answer"], *(answer[s] for s in ANSWER_SCORES), *overlay)
    return table


def report_artifact(cfg: ExperimentConfig, out: Path) -> wandb.Artifact:
    """``report.md``, ``metrics.json`` and the chart; ``report.html`` (frames inlined) only if images may leave."""
    name = re.sub(r"[^\w.-]", "-", f"{cfg.name}-eval-report")  # W&B accepts only these characters in a name
    artifact = wandb.Artifact(name, type="evaluation-report")
    for filename in (*TEXT_REPORT, *(("report.html",) if cfg.wandb.allow_image_upload else ())):
        if (out / filename).is_file():
            artifact.add_file(str(out / filename))
    return artifact


def log_evaluation(cfg: ExperimentConfig, out: Path, metrics: dict[str, Any]) -> None:
    """Write the evaluation's W&B run (``job_type`` eval) from ``metrics`` and the report files in ``out``."""
    out = Path(out)
    with stage_run(cfg, out, JOB) as run:
        run.log({
            **summary_scalars(metrics),
            f"{JOB}/table1": table1(metrics),
            f"{JOB}/per_structure": per_structure_table(metrics),
            f"{JOB}/paired_tests": paired_tests_table(metrics),
            f"{JOB}/generations": generations_table(metrics, out, cfg.wandb.allow_image_upload),
        })
        run.run.log_artifact(report_artifact(cfg, out))
