"""The expert pair review round trip: export, then approve / swap / reject on import."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.data.records import load_dataset, save_dataset
from cme_vlm.errors import DataError
from cme_vlm.preference.review import export_sheet, import_sheet


def _pairs(folder: Path) -> Path:
    rows = []
    for i in range(3):
        record = {"id": f"r{i}", "structure": "duodenum", "side": "right", "phase": "p", "split": "train",
                  "prompt": "q", "overlay": Image.new("RGB", (8, 8))}
        rows.append(preference_row(record, f"good {i}", f"bad {i}", accepted_score=4.0, rejected_score=2.0,
                                   ref_logp_accepted=-10.0, ref_logp_rejected=-20.0))
    return save_dataset(preference_dataset(rows), folder)


def _fill(sheet: Path, decisions: dict[str, str]) -> None:
    rows = list(csv.DictReader(sheet.open()))
    for r in rows:
        r["decision"] = decisions.get(r["id"], "")
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)


def test_review_round_trip_approve_swap_reject(cfg, tmp_path: Path) -> None:
    cfg.review.fraction = 1.0
    dataset = _pairs(tmp_path / "04-preference")
    sheet = export_sheet(cfg, dataset, tmp_path / "review")
    assert "good 1" in (tmp_path / "review" / "review.html").read_text()
    _fill(sheet, {"r0": "approve", "r1": "swap", "r2": "reject"})
    import_sheet(cfg, sheet, dataset)
    ds = {r["id"]: r for r in load_dataset(dataset)}
    assert ds["r0"]["provenance"] == "expert_approved" and ds["r0"]["accepted"] == "good 0"
    swapped = ds["r1"]
    assert swapped["provenance"] == "expert_swapped" and (swapped["accepted"], swapped["rejected"]) == ("bad 1", "good 1")
    assert (swapped["ref_logp_accepted"], swapped["accepted_score"]) == (-20.0, 2.0)
    assert ds["r2"]["provenance"] == "expert_rejected"


def test_a_bad_sheet_applies_nothing(cfg, tmp_path: Path) -> None:
    cfg.review.fraction = 1.0
    dataset = _pairs(tmp_path / "04-preference")
    sheet = export_sheet(cfg, dataset, tmp_path / "review")
    _fill(sheet, {"r0": "swap", "r1": "prefer"})
    with pytest.raises(DataError, match="'prefer' is not one of approve, swap, reject"):
        import_sheet(cfg, sheet, dataset)
    assert set(load_dataset(dataset)["provenance"]) == {"judge"}
