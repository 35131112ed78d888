"""``cme-vlm compare RUN ...``: several runs' evaluations side by side in one local report, with paired tests.

No dashboard and no network: the report reads each run's ``metrics.json`` and resolved config, refuses runs
evaluated on different test records, and writes Markdown, a self-contained HTML page and JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from cme_vlm import atomic
from cme_vlm.comparison.paired import run_tests
from cme_vlm.comparison.report import CHARTS, merged_metrics, render_html, render_markdown
from cme_vlm.comparison.runs import check_same_test_set, config_differences, differing_references, labels, load_run
from cme_vlm.errors import ConfigError
from cme_vlm.evaluation.report import bar_chart
from cme_vlm.schema import ExperimentConfig

REPORT_NAME = "compare"


def compare_runs(cfg: ExperimentConfig, runs: list[Path], out: Path | None = None) -> Path:
    """Write ``compare.md``, ``compare.html``, ``compare.json`` and the charts for ``runs`` into ``out``.

    ``out`` defaults to ``<output_dir>/compare-<time>``. Returns the HTML report's path.
    """
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs: cme-vlm compare RUN RUN [...] [--out DIR].")
    evaluations = [load_run(path, label) for path, label in zip(runs, labels([Path(r) for r in runs]), strict=True)]
    check_same_test_set(evaluations)
    overall, per_structure = run_tests(evaluations), run_tests(evaluations, by_structure=True)
    differences, references_differ = config_differences(evaluations), differing_references(evaluations)
    folder = Path(out) if out else Path(cfg.output_dir) / f"{REPORT_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    merged = merged_metrics(evaluations)
    charts = {metric: bar_chart(merged, metric) for metric in CHARTS}
    for metric, name in CHARTS.items():
        atomic.write_bytes(folder / name, charts[metric])
    atomic.write_text(folder / f"{REPORT_NAME}.md",
                      render_markdown(evaluations, overall, per_structure, differences, references_differ))
    atomic.write_text(folder / f"{REPORT_NAME}.html",
                      render_html(evaluations, overall, per_structure, differences, references_differ, charts))
    summary = {"runs": {e.label: str(e.run_dir) for e in evaluations}, "tests": [t.as_dict() for t in overall],
               "per_structure": [t.as_dict() for t in per_structure],
               "config_differences": differences, "differing_references": references_differ}
    atomic.write_json(folder / f"{REPORT_NAME}.json", summary)
    Console(stderr=True).print(f"comparison written to {folder / f'{REPORT_NAME}.html'}")
    return folder / f"{REPORT_NAME}.html"
