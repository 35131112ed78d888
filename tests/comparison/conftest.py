"""Two runs' evaluation folders written in the evaluation stage's format, from per-answer scores the test chooses.

No model runs: the scores go through the evaluation's own summaries (``scorecard``), provenance and case
records, so ``metrics.json`` has exactly the shape ``cme-vlm evaluate`` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from cme_vlm import atomic
from cme_vlm.anatomy import Anatomy
from cme_vlm.config import load_config, save_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.data.records import record_id
from cme_vlm.evaluation.generation import ModelSpec
from cme_vlm.evaluation.report import METRICS_FILENAME
from cme_vlm.evaluation.scorecard import paired_tests, summarise_model
from cme_vlm.evaluation.stage import _case, provenance

N_CASES = 30
MODELS = ("base", "sft", "dpo")
NO_OVERLAY = REPO_ROOT / "experiments" / "ablations" / "no_overlay.yaml"


def _rows(anatomy: Anatomy) -> list[dict]:
    rows = []
    for i in range(N_CASES):
        key = anatomy.keys[i % len(anatomy.keys)]
        side = anatomy.sides_for(key)[0].value
        rows.append({"id": record_id(f"p{i % 6}", f"p{i % 6}/f{i}.png", key), "structure": key, "side": side,
                     "phase": "mesocolic dissection", "prompt": "What is highlighted?",
                     "answer": f"The highlighted structure is the {anatomy.display(key)}."})
    return rows


def _scores(rows: list[dict], model: str, identified: int, rng: np.random.Generator) -> dict[str, list]:
    hits = [float(i < identified) for i in range(len(rows))] if model != "base" else [0.0] * len(rows)
    answers = [r["answer"] if hit else "This is the mesentery." for r, hit in zip(rows, hits, strict=True)]
    judge = [float(np.clip(1 + 3.5 * h + rng.normal(0, 0.3), 1, 5)) for h in hits]
    return {"answer": answers, "bleu4": [0.6 * h + rng.uniform(0, 0.1) for h in hits],
            "bertscore": [0.5 + 0.4 * h + rng.uniform(0, 0.05) for h in hits], "judge": judge,
            "judge_clinical": judge, "judge_conciseness": [4.0] * len(rows), "identification": hits,
            "laterality_error": [0.0] * len(rows), "identified": [None] * len(rows), "verdicts": [{}] * len(rows)}


def write_evaluation(run: Path, experiment: Path | None, identified: int, seed: int, drop: int = 0) -> Path:
    """``run/06-eval`` with ``metrics.json`` and ``config.yaml``: SFT and DPO identify the first ``identified`` cases;
    ``drop`` leaves out the first test cases."""
    cfg = load_config(experiment)
    rows = _rows(Anatomy(cfg.anatomy))[drop:]
    rng = np.random.default_rng(seed)
    scores = {m: _scores(rows, m, identified - drop, rng) for m in MODELS}
    specs = [ModelSpec("base"), *(ModelSpec(m, run / f"0{i}-{m}" / "model") for i, m in ((3, "sft"), (5, "dpo")))]
    ds = Dataset.from_dict({"split": ["test"] * len(rows) + ["train"] * 60})
    out = run / "06-eval"
    metrics = {
        "provenance": provenance(cfg, ds, run / "02-teacher" / "dataset", specs, "rubric"),
        "models": {m: summarise_model(cfg, rows, scores[m]["answer"], scores[m]) for m in MODELS},
        "tests": paired_tests(scores),
        "cases": [_case(i, row, scores, {}) for i, row in enumerate(rows)],
        "display_names": {key: spec.display_name for key, spec in cfg.anatomy.structures.items()},  # as 06-eval's
    }
    atomic.write_json(out / METRICS_FILENAME, metrics)
    save_config(cfg, out)
    return run


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """The demo and its no-overlay ablation: with the overlay SFT and DPO identify 27 of 30 cases, without it 12."""
    demo = write_evaluation(tmp_path / "demo-20260101-000000", None, identified=27, seed=0)
    ablation = write_evaluation(tmp_path / "demo-no-overlay-20260101-010000", NO_OVERLAY, identified=12, seed=1)
    return demo, ablation
