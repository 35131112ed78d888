"""The blinded expert sheet round trip: export, fill (as a CSV or in the web form), import into metrics.json
and the report, with the judge's agreement with the expert."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from statistics import mean

import pytest
from chromium import chromium_page, saved
from scipy import stats

from cme_vlm.errors import DataError
from cme_vlm.evaluation.expert import KEY_FILENAME, export_sheet, import_sheet, sheet_form
from cme_vlm.review_server import FormServer
from cme_vlm.stages import STAGE_BY_NAME


@pytest.fixture
def eval_copy(evaluated, tmp_path):
    cfg, _, _, out = evaluated
    shutil.copytree(out, tmp_path / "06-eval")
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, expert_cases=3)), tmp_path / "06-eval"


def _fill(sheet, scores_for, preferred_for):
    """Fill every row; ``scores_for(model)`` and ``preferred_for(models)`` see the unblinded models."""
    key = json.loads((sheet.parent.parent / KEY_FILENAME).read_text())
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


def _set_judge_composites(out, composites: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Give the evaluated cases known judge composites (case id -> model -> composite)."""
    metrics = json.loads((out / "metrics.json").read_text())
    for case in metrics["cases"]:
        for model, value in composites.get(case["id"], {}).items():
            case["answers"][model]["judge"] = value
    (out / "metrics.json").write_text(json.dumps(metrics))
    return composites


@pytest.mark.slow
def test_blinded_sheet_round_trip(eval_copy):
    cfg, out = eval_copy
    sheet = export_sheet(cfg, out)
    header = sheet.read_text().splitlines()[0]
    assert "base" not in header and "sft" not in header and "answer_A" in header and "score_B" in header
    rows = list(csv.DictReader(sheet.open()))
    assert len(rows) == 3 and all((sheet.parent / r["image"]).is_file() for r in rows)
    assert "reference" not in rows[0]
    key = json.loads((out / KEY_FILENAME).read_text())
    judge = _set_judge_composites(out, {e["id"]: {"base": 1.0 + i / 10, "sft": 4.0 + i / 10}
                                        for i, e in enumerate(key.values())})

    _fill(sheet, lambda m: 5 if m == "sft" else 1, lambda models: ["sft", "base"])
    expert = import_sheet(cfg, sheet, out)
    assert expert["scores"]["sft"]["mean"] == 5.0 and expert["scores"]["base"]["mean"] == 1.0
    assert expert["preferred"] == {"base": 3, "sft": 3}  # several choices per case are allowed
    assert json.loads((out / "metrics.json").read_text())["expert"]["n_cases"] == 3
    md = (out / "report.md").read_text()
    assert "| Expert score | 1.00 ± 0.00 | 5.00 ± 0.00 |" in md
    assert "| Preferred model (count of 3) | 3 | 3 |" in md

    # the judge ranks sft above base on every case, as the expert does: rho of the pooled answers, by scipy
    agreement = expert["agreement"]
    pairs = [(judge[case][m], 5 if m == "sft" else 1) for case in judge for m in ("base", "sft")]
    overall = agreement["criteria"]["score"]["overall"]
    assert (overall["n_cases"], overall["n_answers"]) == (3, 6)
    assert overall["rho"] == pytest.approx(stats.spearmanr(*zip(*pairs, strict=True)).statistic)
    structures = {c["id"]: c["structure"] for c in json.loads((out / "metrics.json").read_text())["cases"]}
    assert set(agreement["criteria"]["score"]["per_structure"]) == {structures[case] for case in judge}
    preferred = agreement["preferred"]["overall"]
    assert (preferred["agree"], preferred["n_cases"]) == (3, 3)  # the expert preferred every model
    assert set(agreement["judge_only_criteria"]) == {"clinical", "conciseness", "identification", "exclusivity",
                                                     "laterality", "position", "facts"}
    assert "## Judge–expert agreement" in md and "not compared: clinical, conciseness, " in md
    assert f"| Expert score vs judge composite: Spearman ρ | all | 3 (6 answers) | {overall['rho']:.2f} [" in md
    assert "Judge–expert agreement" in (out / "report.html").read_text()


@pytest.mark.slow
def test_the_key_stays_out_of_the_folder_handed_to_the_expert_and_export_says_what_it_wrote(eval_copy, capsys):
    cfg, out = eval_copy
    sheet = export_sheet(cfg, out)
    handed = sheet.parent
    assert not any("key" in p.name for p in handed.rglob("*"))
    assert not any(m in p.read_text(errors="ignore") for p in handed.rglob("*.csv") for m in ("base", "sft"))
    assert (out / KEY_FILENAME).is_file() and KEY_FILENAME in STAGE_BY_NAME["eval"].keeps
    said = " ".join(capsys.readouterr().err.split())
    assert f"{sheet}" in said and "3 cases" in said and f"{out / KEY_FILENAME}" in said and f"Hand the folder {handed}" in said
    _fill(sheet, lambda m: 4, lambda models: models[:1])
    with pytest.raises(DataError, match="already holds 3 filled"):
        export_sheet(cfg, out)  # a filled sheet is never replaced
    assert import_sheet(cfg, sheet, out)["n_cases"] == 3


@pytest.mark.slow
def test_a_sheet_exported_with_the_key_beside_it_still_imports(eval_copy):
    cfg, out = eval_copy
    sheet = export_sheet(cfg, out)
    (out / KEY_FILENAME).rename(sheet.parent / "key.json")  # where an earlier version wrote it
    rows = list(csv.DictReader(sheet.open()))
    for row in rows:
        row.update(score_A="3", score_B="3")
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert import_sheet(cfg, sheet, out)["n_cases"] == 3
    assert sheet_form(out).sheet == sheet


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


@pytest.mark.slow
def test_web_form_in_a_browser_fill_reload_resume_finish_then_import(eval_copy):
    cfg, out = eval_copy
    sheet = export_sheet(cfg, out)
    key = json.loads((out / KEY_FILENAME).read_text())
    first, *rest = sorted(key)
    score = "section[data-row='{}'] fieldset[data-column='score_{}'] input[value='{}']"
    prefer = "section[data-row='{}'] fieldset[data-column='preferred'] input[value='{}']"
    comment = f"section[data-row='{first}'] fieldset[data-column='comment'] textarea"
    with FormServer(sheet_form(out)) as server, chromium_page() as page:
        page.goto(server.url)
        assert page.inner_text("#complete") == "0"
        assert page.evaluate("document.querySelector('section img').naturalWidth") > 0  # the case's overlay
        saved(page, lambda: page.check(score.format(first, "A", "4")))
        assert next(r for r in csv.DictReader(sheet.open()) if r["case"] == first)["score_A"] == "4"  # saved at once
        saved(page, lambda: page.check(score.format(first, "B", "2")))
        saved(page, lambda: page.check(prefer.format(first, "A")))
        page.fill(comment, "A names the vein")
        saved(page, lambda: page.press(comment, "Tab"))

        page.reload()
        assert page.is_checked(score.format(first, "A", "4")) and page.is_checked(score.format(first, "B", "2"))
        assert page.is_checked(prefer.format(first, "A")) and not page.is_checked(prefer.format(first, "B"))
        assert page.input_value(comment) == "A names the vein"
        assert page.inner_text("#complete") == "1" and page.get_attribute("#resume", "href") == f"#row-{rest[0]}"
        page.click("#finish")
        told = page.inner_text("#finish-message.problems")
        assert f"({rest[0]}): score_A='' must be a whole number" in told
        assert f"{len(rest)} of {len(key)} entries are still unreviewed" in told and "import again" not in told

        page.click("#resume")
        for case in rest:
            saved(page, lambda case=case: page.check(score.format(case, "A", "3")))
            saved(page, lambda case=case: page.check(score.format(case, "B", "5")))
        saved(page, lambda: page.check(prefer.format(rest[0], "A")))
        saved(page, lambda: page.check(prefer.format(rest[0], "B")))
        page.click("#finish")
        assert "cme-vlm expert import --sheet" in page.inner_text("#finish-message.ready")

    expert = import_sheet(cfg, sheet, out)
    given = {first: {"A": 4, "B": 2}} | {case: {"A": 3, "B": 5} for case in rest}
    by_model: dict[str, list[int]] = {}
    for case, labels in key.items():
        for label, model in labels["labels"].items():
            by_model.setdefault(model, []).append(given[case][label])
    assert {m: s["mean"] for m, s in expert["scores"].items()} == pytest.approx({m: mean(v) for m, v in by_model.items()})
    a_first, a_next, b_next = key[first]["labels"]["A"], key[rest[0]]["labels"]["A"], key[rest[0]]["labels"]["B"]
    assert expert["preferred"] == {m: [a_first, a_next, b_next].count(m) for m in ("base", "sft")}
    assert next(r for r in csv.DictReader(sheet.open()) if r["case"] == rest[0])["preferred"] == "A;B"
