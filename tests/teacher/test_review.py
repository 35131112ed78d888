"""Expert review round trip: export a sheet, fill it, import it; a malformed sheet changes nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from cme_vlm.data.records import load_dataset
from cme_vlm.errors import DataError
from cme_vlm.teacher.review import export_sheet, import_sheet
from cme_vlm.teacher.stage import answer


@pytest.fixture
def answered(cfg, records_dir, tmp_path) -> Path:
    answer(cfg, records_dir, tmp_path / "02-teacher")
    return tmp_path / "02-teacher"


def _rows(sheet: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(sheet.read_text())))


def _write(sheet: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    sheet.write_text(buf.getvalue())


def test_export_samples_a_seeded_fraction_with_self_contained_html(cfg, answered, tmp_path):
    cfg.review.fraction = 0.4
    sheet = export_sheet(cfg, answered / "dataset", tmp_path / "review")
    rows = _rows(sheet)
    assert len(rows) == 4
    again = export_sheet(cfg, answered / "dataset", tmp_path / "review2")
    assert [r["id"] for r in _rows(again)] == [r["id"] for r in rows]
    page = (tmp_path / "review" / "review.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "src=\"http" not in page
    assert all(r["answer"] in page.replace("&#x27;", "'") for r in rows)


def test_import_applies_approve_edit_reject(cfg, answered, tmp_path):
    cfg.review.fraction = 0.4
    rows = _rows(export_sheet(cfg, answered, tmp_path / "review"))
    rows[0]["decision"], rows[1]["decision"], rows[2]["decision"] = "approve", "edit", "reject"
    rows[1]["edited_answer"] = "The highlighted structure is the duodenum, corrected by the expert."
    _write(tmp_path / "filled.csv", rows)
    import_sheet(cfg, tmp_path / "filled.csv", answered / "dataset")
    ds = {r["id"]: r for r in load_dataset(answered)}
    assert ds[rows[0]["id"]]["provenance"] == "expert_approved"
    assert ds[rows[1]["id"]]["provenance"] == "expert_edited"
    assert ds[rows[1]["id"]]["answer"].endswith("corrected by the expert.")
    assert ds[rows[2]["id"]]["provenance"] == "expert_rejected"
    assert ds[rows[3]["id"]]["provenance"] == "teacher"  # left empty: not reviewed
    answer(cfg, tmp_path / "01-data", answered)  # a teacher re-run keeps the expert's verdicts
    assert load_dataset(answered).filter(lambda r: r["id"] == rows[1]["id"])[0]["provenance"] == "expert_edited"


@pytest.mark.parametrize(
    "break_row, message",
    [
        (lambda r: r.update(decision="maybe"), "row 3: decision 'maybe'"),
        (lambda r: r.update(decision="edit", edited_answer=""), "row 3: decision 'edit' needs"),
        (lambda r: r.update(id="not-a-record"), "row 3: id 'not-a-record'"),
    ],
)
def test_a_malformed_row_applies_nothing(cfg, answered, tmp_path, break_row, message):
    cfg.review.fraction = 0.4
    rows = _rows(export_sheet(cfg, answered, tmp_path / "review"))
    rows[0]["decision"] = "reject"
    break_row(rows[1])
    _write(tmp_path / "bad.csv", rows)
    before = load_dataset(answered)["provenance"]
    with pytest.raises(DataError, match=message):
        import_sheet(cfg, tmp_path / "bad.csv", answered)
    assert load_dataset(answered)["provenance"] == before
