"""The evaluation's W&B run, read back with wandb's own reader: Table 1, per structure, tests, answers, report."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from offline_wandb import offline_runs, read_offline_run, read_table

from cme_vlm.cli import main
from cme_vlm.evaluation.tracking import log_evaluation

STRUCTURES = {"inferior_mesenteric_vein", "duodenum", "pancreas", "angels_hair"}


def _assert_holds_the_report(folder: Path, metrics: dict, models: list[str]) -> dict:
    """The run's Table 1 scalars and per-structure figures equal ``metrics.json``'s; the run view."""
    run = read_offline_run(folder)
    summary = run["summary"]
    assert run["job_type"] == "eval"
    for model in models:
        for metric in ("bleu4", "bertscore", "judge", "identification"):
            expected = metrics["models"][model]["summary"][metric]["mean"]
            assert summary[f"eval/{model}/{metric}"] == pytest.approx(expected)
        for structure in STRUCTURES:
            expected = metrics["models"][model]["per_structure"][structure]["judge"]["mean"]
            assert summary[f"eval/{model}/{structure}/judge"] == pytest.approx(expected)
    table1 = read_table(folder, summary["eval/table1"])
    assert table1["columns"][0] == "Metric" and len(table1["columns"]) == 1 + len(models)
    per_structure = read_table(folder, summary["eval/per_structure"])
    rows = {(r[0], r[1], r[2]): r[3] for r in per_structure["data"]}
    assert {(m, s) for m, s, _ in rows} == {(m, s) for m in models for s in STRUCTURES}
    assert rows[(models[-1], "duodenum", "bleu4")] == pytest.approx(
        metrics["models"][models[-1]]["per_structure"]["duodenum"]["bleu4"]["mean"])
    return run


@pytest.mark.slow
def test_demo_and_ablation_eval_runs_hold_table1_and_per_structure_figures(evaluated, tmp_path):
    _, dataset, sft, demo_out = evaluated
    demo = offline_runs(demo_out)[0]  # the evaluation's own run; an expert import in another test adds one
    demo_run = _assert_holds_the_report(demo, json.loads((demo_out / "metrics.json").read_text()), ["base", "sft"])
    assert demo_run["name"] == "demo-eval" and not any(t.startswith("ablation:") for t in demo_run["tags"])

    ablation_out = tmp_path / "06-eval"
    argv = ["evaluate", "--config", "experiments/ablations/no_overlay.yaml", "--dataset", str(dataset),
            "--sft", str(sft), "--dpo", str(tmp_path / "none"), "--out", str(ablation_out), "model=tiny",
            "eval.max_new_tokens=8", "eval.gallery_size=2"]
    assert main(argv) == 0
    (ablation,) = offline_runs(ablation_out)
    metrics = json.loads((ablation_out / "metrics.json").read_text())
    ablation_run = _assert_holds_the_report(ablation, metrics, ["base", "sft"])
    assert ablation_run["name"] == "demo-no-overlay-eval" and ablation_run["group"] == demo_run["group"]
    assert {"ablation:no_overlay", "base:demo"} <= set(ablation_run["tags"])
    assert ablation_run["project"] == demo_run["project"]


@pytest.mark.slow
def test_no_frame_leaves_unless_uploads_are_allowed(evaluated, tmp_path):
    cfg, _, _, evaluated_out = evaluated
    metrics = json.loads((evaluated_out / "metrics.json").read_text())
    for allowed in (False, True):
        out = tmp_path / str(allowed)
        shutil.copytree(evaluated_out, out, ignore=shutil.ignore_patterns("wandb"))
        log_evaluation(dataclasses.replace(cfg, wandb=dataclasses.replace(cfg.wandb, allow_image_upload=allowed)),
                       out, metrics)
        (folder,) = offline_runs(out)
        run = read_offline_run(folder)
        generations = read_table(folder, run["summary"]["eval/generations"])
        assert len(generations["data"]) == 2 * len(metrics["cases"])  # one row per case and model
        (report,) = [a for a in run["artifacts"].values() if a["type"] == "evaluation-report"]
        assert {"report.md", "metrics.json", "per_structure.png"} <= set(report["files"])
        # a table's images travel in its run_table artifact
        tables = [a for a in run["artifacts"].values() if a["type"] == "run_table"]
        images = [f for a in tables for f in a["files"] if f.endswith(".png")]
        if allowed:
            assert "overlay" in generations["columns"] and "report.html" in report["files"]
            assert len(images) == 2  # the two gallery overlays
        else:
            assert "overlay" not in generations["columns"] and "report.html" not in report["files"] and not images


@pytest.mark.slow
def test_paired_tests_and_expert_agreement_reach_the_run(evaluated, tmp_path):
    cfg, _, _, evaluated_out = evaluated
    metrics = json.loads((evaluated_out / "metrics.json").read_text())
    metrics["expert"] = {"n_cases": 2, "sheet": "sheet.csv", "scores": {"sft": {"mean": 4.5, "std": 0.5, "n": 2}},
                         "preferred": {"base": 0, "sft": 2},
                         "agreement": {"criteria": {"score": {"overall": {"rho": 0.8, "ci_low": None}}}}}
    log_evaluation(cfg, tmp_path, metrics)
    (folder,) = offline_runs(tmp_path)
    run = read_offline_run(folder)
    assert run["summary"]["eval/expert/scores/sft/mean"] == 4.5
    assert run["summary"]["eval/expert/agreement/criteria/score/overall/rho"] == 0.8
    tests = read_table(folder, run["summary"]["eval/paired_tests"])
    logged = [dict(zip(tests["columns"], row, strict=True)) for row in tests["data"]]
    assert [(t["a"], t["b"], t["metric"], t["verdict"]) for t in logged] == [
        (t["a"], t["b"], t["metric"], t["verdict"]) for t in metrics["tests"]]


def test_disabled_mode_writes_no_run(tiny_cfg, tmp_path):
    disabled = dataclasses.replace(tiny_cfg, wandb=dataclasses.replace(tiny_cfg.wandb, mode="disabled"))
    log_evaluation(disabled, tmp_path, {"models": {}, "tests": [], "cases": []})
    assert not (tmp_path / "wandb").exists()
