"""``cme-vlm run model=<tiny family>`` runs every stage for every declared family, on the smallest data that reaches each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_families import TINY_FAMILIES

from cme_vlm.cli import main
from cme_vlm.layout import read_status

# every stage runs, on a few records: 8 frames of 4 procedures (train, val and test each get one), one SFT and one
# DPO epoch, 2 candidates of 4 tokens, 2 test cases
SMALLEST = [
    "data.synthetic.n_frames=8", "data.synthetic.n_procedures=4", "teacher.max_words=20", "sft.epochs=1",
    "sft.batch_size=8", "preference.k=2", "preference.max_new_tokens=4", "dpo.epochs=1", "dpo.batch_size=8",
    "eval.max_new_tokens=4", "eval.max_cases=2", "wandb.judge_subset=1",
]
STAGES = ("00-frames", "01-data", "02-teacher", "03-sft", "04-preference", "05-dpo", "06-eval")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TINY_FAMILIES if n != "tiny"])  # tiny: tests/test_pipeline.py
def test_the_pipeline_runs_for_the_family(name: str, tmp_path: Path) -> None:
    run = tmp_path / name
    assert main(["run", f"model={name}", *SMALLEST, "--run-dir", str(run)]) == 0
    assert all(read_status(run / stage)["status"] == "done" for stage in STAGES)
    metrics = json.loads((run / "06-eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "sft", "dpo"} and len(metrics["cases"]) == 2
    assert f"the base model '{name}' was built from config" in (run / "06-eval" / "report.md").read_text()
    assert json.loads((run / "05-dpo" / "model" / "config.json").read_text())["model_type"] != "qwen2_5_vl"
