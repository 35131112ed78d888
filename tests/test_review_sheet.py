"""The shared review round trip with a small spec: sampling, the sheet, the whole-sheet check, the rewrite."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from cme_vlm.data.records import load_dataset, save_dataset
from cme_vlm.errors import DataError
from cme_vlm.review_sheet import Decision, SheetSpec, export_sheet, import_sheet, sample_ids

FEATURES = Features({"id": Value("string"), "structure": Value("string"), "side": Value("string"),
                     "prompt": Value("string"), "text": Value("string"), "provenance": Value("string"),
                     "overlay": ImageFeature()})
SPEC = SheetSpec(
    title="Note review", unit="note", what="note dataset",
    data_columns=("id", "structure", "text"), review_columns=("decision", "note", "comment"),
    decisions={"keep": "kept", "fix": "fixed", "drop": "dropped"}, reviewable="draft",
    nothing_to_review="draft notes", producer="cme-vlm notes draft",
    shown=(("Text", "text"),), instruction="keep, fix (with note) or drop.", export_command="notes export",
    import_command="notes import",
    row_check=lambda decision, cells: "decision 'fix' needs a note" if decision == "fix" and not cells["note"] else "",
)


def _fix(row: dict, decided: Decision) -> dict:
    return {**row, "text": decided.cells["note"]} if decided.provenance == "fixed" else row


def _notes(folder: Path, n: int = 6, provenance: str = "draft") -> Path:
    rows = {"id": [f"n{i}" for i in range(n)], "structure": ["liver"] * n, "side": ["right"] * n,
            "prompt": ["q"] * n, "text": [f"note <{i}>" for i in range(n)], "provenance": [provenance] * n,
            "overlay": [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(n)]}
    return save_dataset(Dataset.from_dict(rows, features=FEATURES), folder)


def _write(sheet: Path, header: list[str], rows: list[list[str]]) -> Path:
    with sheet.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return sheet


def test_sample_is_seeded_takes_only_reviewable_rows_and_at_least_one(tmp_path):
    ds = load_dataset(_notes(tmp_path / "a"))
    ds = ds.map(lambda r, i: {"provenance": "kept" if i < 2 else "draft"}, with_indices=True)
    picked = sample_ids(ds, SPEC, 0.5, seed=3)
    assert picked == sample_ids(ds, SPEC, 0.5, seed=3) and len(picked) == 2
    assert not {"n0", "n1"} & set(picked)
    assert len(sample_ids(ds, SPEC, 0.01, seed=3)) == 1
    assert sample_ids(ds.map(lambda r: {"provenance": "kept"}), SPEC, 1.0, seed=3) == []


def test_export_writes_blank_review_columns_and_a_self_contained_escaped_page(cfg, tmp_path):
    cfg.review.fraction = 0.5
    sheet = export_sheet(SPEC, cfg, _notes(tmp_path / "a"), tmp_path / "out")
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == list(SPEC.columns) and len(rows) == 3
    assert all(r["decision"] == r["note"] == r["comment"] == "" and r["text"].startswith("note <") for r in rows)
    page = (tmp_path / "out" / "review.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Note review (3 notes)" in page
    assert "note &lt;" in page and "note <" not in page
    assert (tmp_path / "out" / "config.yaml").is_file()


def test_export_without_reviewable_rows_names_the_dataset_and_the_producer(cfg, tmp_path):
    dataset = _notes(tmp_path / "a", provenance="kept")
    with pytest.raises(DataError, match=r"note dataset '.*dataset' holds no draft notes.*'cme-vlm notes draft'"):
        export_sheet(SPEC, cfg, dataset, tmp_path / "out")
    assert not (tmp_path / "out" / "review.csv").exists()


def test_export_never_replaces_a_sheet_holding_entries(cfg, tmp_path):
    dataset = _notes(tmp_path / "a")
    sheet = export_sheet(SPEC, cfg, dataset, tmp_path / "out")
    assert export_sheet(SPEC, cfg, dataset, tmp_path / "out") == sheet  # a blank sheet is replaced freely
    rows = list(csv.DictReader(sheet.open()))
    rows[0]["comment"] = "seen"
    filled = _write(sheet, list(SPEC.columns), [list(r.values()) for r in rows]).read_bytes()
    with pytest.raises(DataError, match=r"already holds 1 reviewed note\(s\).*cme-vlm notes import --sheet"):
        export_sheet(SPEC, cfg, dataset, tmp_path / "out")
    assert sheet.read_bytes() == filled


def test_import_applies_decisions_case_insensitively_and_leaves_empty_rows(cfg, tmp_path):
    dataset = _notes(tmp_path / "a")
    header = list(SPEC.columns)
    sheet = _write(tmp_path / "s.csv", header, [["n0", "", "", " KEEP ", "", ""], ["n1", "", "", "fix", " better ", ""],
                                               ["n2", "", "", "drop", "ignored", ""], ["n3", "", "", "", "", "later"]])
    import_sheet(SPEC, sheet, dataset, _fix)
    ds = {r["id"]: r for r in load_dataset(dataset)}
    assert [ds[f"n{i}"]["provenance"] for i in range(5)] == ["kept", "fixed", "dropped", "draft", "draft"]
    assert ds["n1"]["text"] == "better" and ds["n2"]["text"] == "note <2>"


def test_every_bad_row_is_listed_in_one_error_and_nothing_is_applied(cfg, tmp_path):
    dataset = _notes(tmp_path / "a")
    rows = [["n0", "", "", "drop", "", ""], ["ghost", "", "", "keep", "", ""], ["n0", "", "", "keep", "", ""],
            ["n1", "", "", "maybe", "", ""], ["n2", "", "", "fix", "", ""]]
    sheet = _write(tmp_path / "s.csv", list(SPEC.columns), rows)
    with pytest.raises(DataError) as err:
        import_sheet(SPEC, sheet, dataset, _fix)
    message = str(err.value)
    assert "nothing was applied" in message and "s.csv" in message
    for expected in ("row 3: id 'ghost' is not in the dataset", "row 4: id 'n0' appears twice; keep one row per note",
                     "row 5: decision 'maybe' is not one of keep, fix, drop", "row 6: decision 'fix' needs a note"):
        assert expected in message
    assert "row 2" not in message
    assert set(load_dataset(dataset)["provenance"]) == {"draft"}


def test_a_sheet_without_required_columns_or_unreadable_names_the_fix(cfg, tmp_path):
    dataset = _notes(tmp_path / "a")
    sheet = _write(tmp_path / "s.csv", ["id", "decision", "comment"], [["n0", "keep", ""]])
    with pytest.raises(DataError, match=r"lacks the column\(s\) note\. Start from the exported sheet"):
        import_sheet(SPEC, sheet, dataset, _fix)
    with pytest.raises(DataError, match=r"'.*missing\.csv' cannot be read.*'cme-vlm notes export'"):
        import_sheet(SPEC, tmp_path / "missing.csv", dataset, _fix)
    (tmp_path / "latin.csv").write_bytes("id,decision,note\nn0,keep,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot be read"):
        import_sheet(SPEC, tmp_path / "latin.csv", dataset, _fix)
    assert set(load_dataset(dataset)["provenance"]) == {"draft"}
