"""The runs a comparison reads: each run's evaluation (``metrics.json``) and resolved config, on one test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cme_vlm.config import CONFIG_FILENAME
from cme_vlm.errors import DataError
from cme_vlm.evaluation.report import METRICS_FILENAME, read_metrics
from cme_vlm.stages import STAGE_BY_NAME


@dataclass(frozen=True)
class RunEvaluation:
    """One run's evaluation: its label in the comparison, its folders, figures and settings."""

    label: str
    run_dir: Path
    eval_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any]  # the evaluation stage's resolved config, flattened to dotted keys

    def cases(self) -> dict[str, dict[str, Any]]:
        """Test record id -> its case (structure, reference, every model's per-answer scores)."""
        return {case["id"]: case for case in self.metrics["cases"]}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _eval_dir(path: Path) -> Path:
    """A run folder's evaluation folder, or ``path`` itself when it is one."""
    if (path / METRICS_FILENAME).is_file():
        return path
    return path / STAGE_BY_NAME["eval"].folder


def load_run(path: str | Path, label: str) -> RunEvaluation:
    """The evaluation of the run at ``path`` (a run folder or its evaluation folder)."""
    eval_dir = _eval_dir(Path(path))
    metrics = read_metrics(eval_dir)
    config_file = eval_dir / CONFIG_FILENAME
    if not config_file.is_file():
        raise DataError(f"'{config_file}' does not exist, so the settings of run '{path}' are unknown. "
                        "Re-run `cme-vlm evaluate` for it; the stage saves its config beside metrics.json.")
    config = _flatten(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {})
    return RunEvaluation(label, Path(path), eval_dir, metrics, config)


def labels(paths: list[Path]) -> list[str]:
    """A distinct label per run: its folder's name, with the parent's where two names coincide."""
    names = [(p.parent.name if p.name == STAGE_BY_NAME["eval"].folder else p.name) for p in paths]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def check_same_test_set(runs: list[RunEvaluation]) -> None:
    """Refuse runs evaluated on different test records: a paired test needs the same records in every run."""
    first = set(runs[0].cases())
    for run in runs[1:]:
        ids = set(run.cases())
        if ids == first:
            continue
        only_first, only_this = sorted(first - ids), sorted(ids - first)
        differing = [k for k in config_differences([runs[0], run]) if k.startswith(("data.", "eval.max_cases"))]
        raise DataError(
            f"runs '{runs[0].label}' and '{run.label}' were evaluated on different test records "
            f"({len(first)} and {len(ids)}; {len(only_first)} only in the first, e.g. {only_first[:2]}, "
            f"{len(only_this)} only in the second, e.g. {only_this[:2]}), so no paired test can compare them. "
            "Compare runs evaluated on the same data, split and eval.max_cases"
            + (f"; these settings differ: {', '.join(differing)}." if differing else ".")
        )


def differing_references(runs: list[RunEvaluation]) -> int:
    """How many test records have another reference answer in some run than in the first."""
    first = {i: c["reference"] for i, c in runs[0].cases().items()}
    return sum(any(run.cases()[i]["reference"] != ref for run in runs[1:]) for i, ref in first.items())


def config_differences(runs: list[RunEvaluation]) -> dict[str, list[Any]]:
    """Every config key whose value differs between the runs, with each run's value (None where absent)."""
    keys = sorted({k for run in runs for k in run.config})
    values = {k: [run.config.get(k) for run in runs] for k in keys}
    return {k: v for k, v in values.items() if any(x != v[0] for x in v)}
