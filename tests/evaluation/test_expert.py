"""The blinded expert sheet round trip: export, fill, import into metrics.json and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest

from cme_vlm.errors import DataError
from cme_vlm.evaluation.expert import export_sheet, import_sheet


@pytest.fixture
def eval_copy(evaluated, tmp_path):
    cfg, _, _, out = evaluated
    shutil.copytree(out, tmp_path / "06-eval")
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, expert_cases=3)), tmp_path / "06-eval"


def _fill(sheet, scores_for, preferred_for):
    """Fill every row; ``scores_for(model)`` and ``preferred_for(models)`` see the unblinded models."""
    key = json.loads((sheet.parent / "key.json").read_text())
    rows = list(csv.DictReader(sheet.open()))
    for row in rows:
        labels = key[row["case"]]["labels"]
        for label, model in labels.items():
            row[f"score_{label}"] = str(scores_for(model))
        row["preferred"] = ";".join(x for x, m in labels.items() if m in preferred_for(list(labels.values())))
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.mark.slow
def test_blinded_sheet_round_trip(eval_copy):
    cfg, out = eval_copy
    sheet = export_sheet(cfg, out)
    header = sheet.read_text().splitlines()[0]
    assert "base" not in header and "sft" not in header and "answer_A" in header and "score_B" in header
    rows = list(csv.DictReader(sheet.open()))
    assert len(rows) == 3 and all((sheet.parent / r["image"]).is_file() for r in rows)
    assert "reference" not in rows[0]

    _fill(sheet, lambda m: 5 if m == "sft" else 1, lambda models: ["sft", "base"])
    expert = import_sheet(cfg, sheet, out)
    assert expert["scores"]["sft"]["mean"] == 5.0 and expert["scores"]["base"]["mean"] == 1.0
    assert expert["preferred"] == {"base": 3, "sft": 3}  # several choices per case are allowed
    assert json.loads((out / "metrics.json").read_text())["expert"]["n_cases"] == 3
    md = (out / "report.md").read_text()
    assert "| Expert score | 1.00 ± 0.00 | 5.00 ± 0.00 |" in md
    assert "| Preferred model (count of 3) | 3 | 3 |" in md


@pytest.mark.slow
def test_malformed_sheet_is_one_clear_error_and_changes_nothing(eval_copy):
    cfg, out = eval_copy
    sheet = export_sheet(cfg, out)
    rows = _fill(sheet, lambda m: 4, lambda models: [])
    rows[0]["score_A"], rows[1]["preferred"] = "7", "Z"
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = (out / "metrics.json").read_text()
    with pytest.raises(DataError) as e:
        import_sheet(cfg, sheet, out)
    assert "2 problem(s); nothing was applied" in str(e.value)
    assert "score_A='7'" in str(e.value) and "'Z'" in str(e.value)
    assert (out / "metrics.json").read_text() == before
