"""Render a comparison of runs as ``compare.md``, a self-contained ``compare.html`` and ``compare.json``.

The pieces are the run report's (``cme_vlm.evaluation.report``): Table 1 and the per-structure table over
every run's models side by side, the per-structure charts, the provenance lines, the table helpers and style.
"""

from __future__ import annotations

import html
import math
from typing import Any

from cme_vlm.comparison.paired import RunTest, model_order
from cme_vlm.comparison.runs import RunEvaluation
from cme_vlm.evaluation.report import (
    STYLE,
    _data_uri,
    _html_table,
    _md_table,
    display_name,
    main_table,
    model_label,
    provenance_lines,
    structure_table,
)
from cme_vlm.evaluation.scorecard import METRICS

CHARTS = {"judge": "compare_judge.png", "identification": "compare_identification.png"}


def merged_metrics(runs: list[RunEvaluation]) -> dict[str, Any]:
    """Every run's models as one ``metrics.json``-like dict, each named "<run> · <model>", for the report's tables."""
    models = {f"{run.label} · {model_label(m)}": run.metrics["models"][m]
              for run in runs for m in model_order(list(run.metrics["models"]))}
    judges = sorted({run.metrics["provenance"]["judge"] for run in runs})
    names = {k: v for run in runs for k, v in run.metrics.get("display_names", {}).items()}
    return {"models": models, "provenance": {"judge": " / ".join(judges)}, "display_names": names}


def runs_table(runs: list[RunEvaluation]) -> tuple[list[str], list[list[str]]]:
    header = ["Run", "Folder", "Experiment", "Ablation", "Test records", "Models"]
    rows = [[r.label, str(r.run_dir), r.metrics["provenance"]["experiment"], str(r.config.get("ablation") or "–"),
             str(len(r.metrics["cases"])), ", ".join(model_label(m) for m in model_order(list(r.metrics["models"])))]
            for r in runs]
    return header, rows


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.3g}"


def tests_table(tests: list[RunTest], merged: dict[str, Any], with_structure: bool = False
                ) -> tuple[list[str], list[list[str]]]:
    """One row per paired test: the two runs' means, the mean paired difference, p and n (structures by the
    registry's names in ``merged``)."""
    header = [*(["Structure"] if with_structure else []), "Model", "Metric", "Run A", "Run B", "Mean A", "Mean B",
              "Mean difference (A − B)", "p (Wilcoxon)", "n"]
    rows = []
    for t in tests:
        a, b = (name.split(" · ")[0] for name in (t.test.a, t.test.b))
        rows.append([*([display_name(merged, t.structure)] if with_structure else []), model_label(t.model),
                     METRICS[t.test.metric], a, b, _fmt(t.mean_a), _fmt(t.mean_b), _fmt(t.test.mean_diff, 3),
                     _p(t.test.p_value), str(t.test.n)])
    return header, rows


def config_table(runs: list[RunEvaluation], differences: dict[str, list[Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Setting", *(r.label for r in runs)]
    rows = [[key, *("–" if v in (None, "") else str(v) for v in values)] for key, values in differences.items()]
    return header, rows


def _notes(runs: list[RunEvaluation], references_differ: int) -> list[str]:
    notes = [f"{r.label}: {r.metrics['provenance']['caveat']}" for r in runs if r.metrics["provenance"]["caveat"]]
    if references_differ:
        notes.append(f"{references_differ} test record(s) have another reference answer in some run (a different "
                     "teacher answer): BLEU-4 and BERTScore there compare against different references.")
    return notes


def _sections(runs: list[RunEvaluation], overall: list[RunTest], per_structure: list[RunTest],
              differences: dict[str, list[Any]]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    merged = merged_metrics(runs)
    return [
        ("Runs", runs_table(runs)),
        ("Results (Table 1), side by side", main_table(merged)),
        ("Paired tests between runs (Wilcoxon signed-rank, same test records)", tests_table(overall, merged)),
        ("Per structure", structure_table(merged)),
        ("Paired tests per structure", tests_table(per_structure, merged, with_structure=True)),
        ("Config differences", config_table(runs, differences)),
    ]


def render_markdown(runs: list[RunEvaluation], overall: list[RunTest], per_structure: list[RunTest],
                    differences: dict[str, list[Any]], references_differ: int) -> str:
    parts = [f"# Comparison: {', '.join(r.label for r in runs)}", ""]
    parts += [f"> **Note.** {note}" for note in _notes(runs, references_differ)] + [""]
    for title, table in _sections(runs, overall, per_structure, differences):
        parts += [f"## {title}", "", _md_table(*table), ""]
        if title == "Per structure":
            parts += [f"![{metric} per structure]({name})" for metric, name in CHARTS.items()] + [""]
    parts += ["## Provenance", ""]
    for run in runs:
        parts += [f"### {run.label}", "", *(f"- {line}" for line in provenance_lines(run.metrics)), ""]
    return "\n".join(parts)


def render_html(runs: list[RunEvaluation], overall: list[RunTest], per_structure: list[RunTest],
                differences: dict[str, list[Any]], references_differ: int, charts: dict[str, bytes]) -> str:
    e = html.escape
    title = f"Comparison: {', '.join(r.label for r in runs)}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>"]
    parts += [f"<p class='note'><b>Note.</b> {e(note)}</p>" for note in _notes(runs, references_differ)]
    for heading, table in _sections(runs, overall, per_structure, differences):
        parts += [f"<h2>{e(heading)}</h2>", _html_table(*table)]
        if heading == "Per structure":
            parts += [f"<img alt='{e(METRICS[m])} per structure' src='{_data_uri(charts[m])}'>" for m in CHARTS]
    parts.append("<h2>Provenance</h2>")
    for run in runs:
        parts += [f"<h3>{e(run.label)}</h3><ul>", *(f"<li>{e(line.replace('**', ''))}</li>"
                                                  for line in provenance_lines(run.metrics)), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)
