"""The review sheet's web form: each entry saved to the CSV at once, bad entries refused, loopback only,
and the answer and pair reviews driven end to end until their imports apply what the form wrote."""

from __future__ import annotations

import csv
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from chromium import chromium_page, saved
from PIL import Image

from cme_vlm import review_sheet
from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.data.records import load_dataset, save_dataset
from cme_vlm.errors import ConfigError, DataError
from cme_vlm.preference import review as pair_review
from cme_vlm.review_server import (
    Field,
    FormServer,
    SheetForm,
    Shown,
    check_host,
    create_app,
)
from cme_vlm.teacher import review as answer_review

QUOTED = 'a "quoted", text\nover two lines'


def _form(tmp_path: Path, check=lambda: None) -> SheetForm:
    sheet = tmp_path / "sheet.csv"
    with sheet.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "grade", "tags", "note"], ["r1", QUOTED, "", "", ""],
                                 ["r2", "plain <b>", "", "", ""]])
    return SheetForm(
        title="Note review", instruction="Grade each note.", sheet=sheet, key_column="id", heading=("id",),
        items=(Shown("Text", "text"), Field("grade", "Grade", options=("good", "bad"), required=True),
               Field("tags", "Tags", options=("x", "y"), multiple=True), Field("note", "Note")),
        image=lambda row: b"\x89PNG" if row["id"] == "r1" else None, check=check, done="Import it.",
    )


def _rows(sheet: Path) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in csv.DictReader(sheet.open(newline=""))}


def _save(client, row: str, column: str, value: str):
    return client.post("/save", json={"row": row, "column": column, "value": value})


def test_each_entry_is_written_to_the_csv_at_once_and_leaves_other_cells_as_they_were(tmp_path):
    form = _form(tmp_path)
    client = create_app(form).test_client()
    reply = _save(client, "r1", "grade", "good")
    assert reply.status_code == 200 and reply.json == {"saved": True, "complete": 1, "total": 2}
    assert _save(client, "r1", "tags", "y;x").status_code == 200
    assert _save(client, "r2", "note", " fine, thanks\n").status_code == 200
    rows = _rows(form.sheet)
    assert rows["r1"] == {"id": "r1", "text": QUOTED, "grade": "good", "tags": "x;y", "note": ""}
    assert rows["r2"]["note"] == "fine, thanks" and rows["r2"]["grade"] == ""
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_entries_are_refused_with_the_reason_and_change_nothing(tmp_path):
    form = _form(tmp_path)
    client = create_app(form).test_client()
    before = form.sheet.read_bytes()
    for row, column, value, reason in [("r1", "grade", "great", "choose from good, bad"),
                                       ("r1", "tags", "x;z", "choose from x, y"),
                                       ("r9", "grade", "good", "id 'r9' is not in sheet"),
                                       ("r1", "text", "edited", "'text' is not an input of this form")]:
        reply = _save(client, row, column, value)
        assert reply.status_code == 400 and reason in reply.json["error"]
    assert form.sheet.read_bytes() == before


def test_the_page_shows_saved_entries_escaped_text_and_where_to_resume(tmp_path):
    form = _form(tmp_path)
    client = create_app(form).test_client()
    _save(client, "r1", "grade", "bad")
    page = client.get("/").get_data(as_text=True)
    assert 'value="bad" checked' in page and 'value="good" checked' not in page
    assert 'href="#row-r2"' in page and "<span id=\"complete\">1</span> of 2 complete" in page
    assert "plain &lt;b&gt;" in page and "&#34;quoted&#34;" in page
    assert client.get("/image/r1").mimetype == "image/png"
    assert client.get("/image/r2").status_code == 404 and client.get("/image/r9").status_code == 404


def test_finish_runs_the_imports_check_and_says_what_is_wrong_or_what_comes_next(tmp_path):
    def refuse():
        raise DataError("sheet has 1 problem(s): row 3: grade missing")

    assert create_app(_form(tmp_path, refuse)).test_client().post("/finish").json == {
        "ready": False, "message": "2 of 2 entries are still unreviewed. sheet has 1 problem(s): row 3: grade missing"}
    reply = create_app(_form(tmp_path)).test_client().post("/finish").json
    assert reply["ready"] and str(tmp_path / "sheet.csv") in reply["message"] and "Import it." in reply["message"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "example.org", "::"])
def test_a_host_beyond_loopback_is_refused_unless_allowed(tmp_path, host):
    with pytest.raises(ConfigError, match=rf"host '{host}' would serve .* beyond this machine.*127\.0\.0\.1"):
        FormServer(_form(tmp_path), host=host)
    check_host(host, allow_remote=True)
    for loopback in ("127.0.0.1", "localhost", "::1"):
        check_host(loopback, allow_remote=False)


def test_a_sheet_without_the_forms_columns_is_refused_before_anything_is_served(tmp_path):
    form = _form(tmp_path)
    form.sheet.write_text("id,text\nr1,x\n")
    with pytest.raises(DataError, match="lacks the column\\(s\\) grade, tags, note. Export it again"):
        FormServer(form)


def test_the_server_listens_on_loopback_and_stops(tmp_path):
    with FormServer(_form(tmp_path)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            assert reply.status == 200 and "Note review" in reply.read().decode()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)


def _pairs(folder: Path) -> Path:
    record = {"structure": "duodenum", "side": "right", "phase": "p", "split": "train", "prompt": "q",
              "overlay": Image.new("RGB", (8, 8))}
    rows = [preference_row({**record, "id": f"r{i}"}, f"good {i}", f"bad {i}", accepted_score=4.0,
                           rejected_score=2.0, ref_logp_accepted=-10.0, ref_logp_rejected=-20.0) for i in range(2)]
    return save_dataset(preference_dataset(rows), folder)


def test_pair_review_form_saves_a_swap_that_the_import_applies(cfg, tmp_path):
    cfg.review.fraction = 1.0
    dataset = _pairs(tmp_path / "04-preference")
    sheet = pair_review.export_sheet(cfg, dataset, tmp_path / "review")
    client = create_app(review_sheet.sheet_form(pair_review.SPEC, sheet, dataset)).test_client()
    assert "good 0" in client.get("/").get_data(as_text=True)
    assert client.get("/image/r0").mimetype == "image/png"
    assert _save(client, "r0", "decision", "swap").status_code == 200
    assert _save(client, "r1", "decision", "edit").status_code == 400  # an answer-review word, not a pair one
    assert "preference review-import --sheet" in client.post("/finish").json["message"]
    pair_review.import_sheet(cfg, sheet, dataset)
    pairs = {r["id"]: r for r in load_dataset(dataset)}
    assert (pairs["r0"]["accepted"], pairs["r0"]["provenance"]) == ("bad 0", "expert_swapped")
    assert pairs["r1"]["provenance"] == "judge"


@pytest.mark.slow
def test_answer_review_in_a_browser_fill_reload_resume_finish_then_import(cfg, tmp_path, answered_records):
    cfg.review.fraction = 1.0
    dataset = save_dataset(answered_records(n_test=1), tmp_path / "02-teacher")
    sheet = answer_review.export_sheet(cfg, dataset, tmp_path / "review")
    first, second, *_ = [r["id"] for r in csv.DictReader(sheet.open())]
    decision = "section[data-row='{}'] fieldset[data-column='decision'] input[value='{}']"
    edited = f"section[data-row='{first}'] fieldset[data-column='edited_answer'] textarea"
    with FormServer(review_sheet.sheet_form(answer_review.SPEC, sheet, dataset)) as server, chromium_page() as page:
        page.goto(server.url)
        assert page.inner_text("#complete") == "0" and page.get_attribute("#resume", "href") == f"#row-{first}"
        saved(page, lambda: page.check(decision.format(first, "edit")))
        assert _rows(sheet)[first]["decision"] == "edit"  # on disk as soon as it is clicked
        page.click("#finish")
        assert "needs the corrected text in edited_answer" in page.inner_text("#finish-message.problems")

        page.fill(edited, "The corrected answer.")
        saved(page, lambda: page.press(edited, "Tab"))
        page.reload()
        assert page.is_checked(decision.format(first, "edit")) and page.input_value(edited) == "The corrected answer."
        assert page.inner_text("#complete") == "1" and page.get_attribute("#resume", "href") == f"#row-{second}"

        page.click("#resume")
        saved(page, lambda: page.check(decision.format(second, "reject")))
        page.click("#finish")
        assert "review import --sheet" in page.inner_text("#finish-message.ready")
    answer_review.import_sheet(cfg, sheet, dataset)
    records = {r["id"]: r for r in load_dataset(dataset)}
    assert (records[first]["provenance"], records[first]["answer"]) == ("expert_edited", "The corrected answer.")
    assert records[second]["provenance"] == "expert_rejected"
    assert {r["provenance"] for i, r in records.items() if i not in (first, second)} == {"teacher"}


def test_check_and_finish_says_how_many_entries_are_still_unreviewed(tmp_path):
    form = _form(tmp_path)
    client = create_app(form).test_client()
    assert "2 of 2 entries are still unreviewed" in client.post("/finish").json["message"]
    _save(client, "r1", "grade", "good")
    reply = client.post("/finish").json
    assert reply["ready"] and "1 of 2 entries are still unreviewed" in reply["message"]
    _save(client, "r2", "grade", "bad")
    assert "every entry is reviewed" in client.post("/finish").json["message"]
